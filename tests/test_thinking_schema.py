"""Thinking with a JSON schema: the thought decodes free, the answer under the schema (transformers backend)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.prompts.thinking import THOUGHT_CLOSE, THOUGHT_OPEN, split_thought

SCHEMA = json.loads((Path(__file__).parent / "data" / "structured" / "nested.json").read_text())


def test_thought_is_free_and_answer_validates(tiny_model):
    """A random model never closes a thought by itself: the thought budget closes it, then the schema holds."""
    reqs = [
        tiny_model.request(
            f"Lab report {i} as JSON.",
            think=True,
            json_schema=SCHEMA,
            max_thought_tokens=6 + i,
            max_new_tokens=400,
            temperature=0.0 if i % 2 else 1.0,
            seed=None if i % 2 else 3,
        )
        for i in range(2)
    ]
    for c in tiny_model.backend.generate(reqs):
        assert c.text.startswith(THOUGHT_OPEN) and THOUGHT_CLOSE in c.text, c.text[:80]
        assert c.text.index(THOUGHT_CLOSE) > len(THOUGHT_OPEN)  # the thought is not empty: it was free text
        s = split_thought(c.text)
        jsonschema.validate(json.loads(s.answer), SCHEMA)
        assert c.finish_reason == "stop"


def test_without_a_budget_the_thought_runs_to_the_token_limit(tiny_model):
    """Masking works both ways: inside the thought no end of turn, so a random thought ends only at the limit."""
    (c,) = tiny_model.backend.generate([tiny_model.request("Hi", think=True, json_schema=SCHEMA, max_new_tokens=24)])
    assert c.finish_reason == "length" and c.text.startswith(THOUGHT_OPEN) and THOUGHT_CLOSE not in c.text
    assert split_thought(c.text).answer == ""


def test_refused_where_the_backend_cannot(tiny_model, monkeypatch):
    caps = dataclasses.replace(tiny_model.backend.capabilities, thinking_schema=False)
    monkeypatch.setattr(tiny_model.backend, "capabilities", caps)
    with pytest.raises(BadInput, match="cannot combine thinking with a JSON schema"):
        tiny_model.request("Hello", think=True, json_schema=SCHEMA)
    with pytest.raises(BadInput, match="needs --think"):
        tiny_model.request("Hello", max_thought_tokens=4)


@pytest.mark.slow
def test_llamacpp_thought_free_answer_valid(tmp_path_factory, tiny_model_dir):
    """The same hook on llama.cpp (the tiny checkpoint's GGUF): thought budget, then the schema holds."""
    from conftest import exported

    from medgemma_toolkit import MedGemma

    gguf = exported(tmp_path_factory, tiny_model_dir, "tiny") / "tiny-f32.gguf"
    model = MedGemma.load(str(gguf), threads=2, parallel=2)
    assert model.backend.capabilities.thinking_schema
    reqs = [
        model.request(f"Report {i}", think=True, json_schema=SCHEMA, max_thought_tokens=5, max_new_tokens=400)
        for i in range(2)
    ]
    for c in model.backend.generate(reqs):
        assert c.text.startswith(THOUGHT_OPEN) and THOUGHT_CLOSE in c.text, c.text[:80]
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(split_thought(c.text).answer), SCHEMA)
