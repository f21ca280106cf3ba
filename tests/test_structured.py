"""Structured outputs: answers constrained to a JSON schema validate, on random weights, through every local engine."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import exported

from medgemma_toolkit import MedGemma
from medgemma_toolkit.backends.base import GenerationRequest
from medgemma_toolkit.backends.constrain import check_schema
from medgemma_toolkit.core.options import LoadOptions
from medgemma_toolkit.errors import BadInput

SCHEMA = json.loads((Path(__file__).parent / "data" / "structured" / "nested.json").read_text())


def _requests(model: MedGemma, n: int) -> list[GenerationRequest]:
    """Half greedy, half sampled (one seed, so they batch together), each with its own question."""
    return [
        model.request(
            f"Summarise lab report number {i} as JSON.",
            max_new_tokens=512,
            temperature=0.0 if i % 2 else 1.0,
            seed=None if i % 2 else 7,
            json_schema=SCHEMA,
        )
        for i in range(n)
    ]


def _check_all(texts: list[str]) -> None:
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_twenty_answers_validate_transformers(tiny_model_dir):
    model = MedGemma.load(str(tiny_model_dir), LoadOptions(max_batch_size=20))
    done = model.backend.generate(_requests(model, 20))
    assert all(c.finish_reason == "stop" for c in done), [c.finish_reason for c in done]
    _check_all([c.text for c in done])
    assert len({c.text for c in done}) > 1  # the constraint shapes the answer; it does not fix it


def test_free_rows_beside_constrained_rows_stay_free(tiny_model):
    free = tiny_model.request("Hello", max_new_tokens=8)
    bound = tiny_model.request("Hello", max_new_tokens=512, json_schema={"type": "object"})
    alone = tiny_model.backend.generate([free])[0].text
    both = tiny_model.backend.generate([free, bound])
    assert both[0].text == alone
    assert isinstance(json.loads(both[1].text), dict)


def test_unsupported_schema_feature_is_named():
    with pytest.raises(BadInput, match="if"):
        check_schema({"type": "object", "if": {"required": ["a"]}, "then": {}})


def test_thinking_with_schema_is_refused(tiny_model):
    with pytest.raises(BadInput, match="thinking"):
        tiny_model.request("Hello", think=True, json_schema=SCHEMA)


@pytest.mark.slow
def test_twenty_answers_validate_llamacpp(tmp_path_factory, tiny_model_dir):
    gguf = exported(tmp_path_factory, tiny_model_dir, "tiny") / "tiny-f32.gguf"
    model = MedGemma.load(str(gguf), threads=2, parallel=4)
    done = model.backend.generate(_requests(model, 20))
    assert all(c.finish_reason == "stop" for c in done), [c.finish_reason for c in done]
    _check_all([c.text for c in done])
