"""Hostile model output through the tool-call parser (issue 24): values that have no JSON form never become
arguments and never raise; the answer is the documented "not a call" (200, the text as content,
`medgemma.tool_parse_error`), through the server streamed or not (the stream ends with [DONE]), and in `ehr`."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from medgemma_toolkit.prompts import tools as fc
from medgemma_toolkit.serve.launch import InProcessServer
from medgemma_toolkit.testing.synthetic_fhir import PATIENT_A, two_patient_bundle
from medgemma_toolkit.testing.upstream import ScriptedUpstream

LAB = {
    "type": "function",
    "function": {
        "name": "get_lab",
        "parameters": {"type": "object", "properties": {"test": {"type": "string"}}},
    },
}
HOSTILE = [
    "[get_lab(test={1,2})]",  # a set
    '[get_lab(test=b"x")]',  # bytes
    "[get_lab(test=1j)]",  # a complex number
    "[get_lab(test=...)]",  # Ellipsis
    '{"name": {"x": 1}}',  # an unhashable name
    "[get_lab(test=1e999)]",  # inf: not JSON
    '{"name": "get_lab", "arguments": {"test": NaN}}',  # json.loads reads NaN
    '{"name": "get_lab", "arguments": "{\\"test\\": -Infinity}"}',
    "[get_lab(test={1: 2})]",  # a non-string key
    "[get_lab(test=(1, 2))]",  # a tuple
    "get_lab(test=[" + "[" * 3000 + "]" * 3000 + "])",  # deeper than Python's parser recursion
]


@pytest.mark.parametrize("text", HOSTILE)
def test_values_without_a_json_form_are_not_a_call(text):
    p = fc.parse(text, [LAB])
    assert p.calls == [] and p.content == text.strip()
    assert p.error and "not a valid call" in p.error


def test_json_values_still_are_calls_and_arguments_are_strict_json():
    p = fc.parse('[get_lab(test="HbA1c")]', [LAB])
    assert [c["function"]["arguments"] for c in p.calls] == ['{"test": "HbA1c"}']
    p = fc.parse('[get_lab(test={"a": [1, 2.5, None, True]})]', [LAB])
    args = json.loads(p.calls[0]["function"]["arguments"], parse_constant=lambda c: pytest.fail(c))
    assert args == {"test": {"a": [1, 2.5, None, True]}}
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in args["test"]["a"] if v is not None)


@pytest.fixture(scope="module")
def front():
    """`serve --upstream` in front of an upstream without tool support, so our parser reads what it writes."""
    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.serve import ServeConfig, create_app

    with ScriptedUpstream(HOSTILE, model="plain", piece=7, tools=False) as up:
        mg = MedGemma.load("plain", backend="openai", upstream=up.url.removesuffix("/v1"))
        with InProcessServer(create_app(mg, ServeConfig(served_model_name="front"))) as srv:
            yield srv


def _ask(front, stream: bool) -> httpx.Response:
    body = {"model": "front", "messages": [{"role": "user", "content": "HbA1c?"}], "tools": [LAB], "stream": stream}
    return httpx.post(front.url + "/v1/chat/completions", json=body, timeout=60)


def test_hostile_upstream_answers_are_200_with_the_text_as_content(front):
    # The upstream replies with HOSTILE[n] to its n-th request; its first is the native-tools probe (refused).
    seen = []
    for _ in range(len(HOSTILE)):
        r = _ask(front, stream=False)
        assert r.status_code == 200, r.text[:300]
        out = r.json()
        msg = out["choices"][0]["message"]
        assert out["choices"][0]["finish_reason"] != "tool_calls" and "tool_calls" not in msg
        if not msg["content"].startswith("get_lab(test=[["):  # that one may come back cut, no longer a call shape
            assert out["medgemma"]["tool_parse_error"]
        seen.append(msg["content"])
    assert all(any(t.strip().startswith(c) for t in HOSTILE) for c in seen) and len(set(seen)) >= len(HOSTILE) - 1


def test_hostile_upstream_answers_stream_to_done(front):
    for _ in range(4):
        r = _ask(front, stream=True)
        assert r.status_code == 200
        lines = [ln for ln in r.text.splitlines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        events = [json.loads(ln[6:]) for ln in lines[:-1]]
        assert not any("error" in e for e in events), events
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        assert any(t.strip().startswith(text.strip()) for t in HOSTILE) and text.strip()
        assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_ehr_takes_a_hostile_call_as_the_answer(cli, tmp_path):
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(two_patient_bundle()))
    with ScriptedUpstream("[list_conditions(since={1, 2})]") as up:
        r = cli(
            "ehr",
            "--fhir",
            str(bundle),
            "--patient",
            PATIENT_A,
            "--upstream",
            up.url,
            "-m",
            "scripted",
            "--json",
            "Which conditions?",
        )
    assert r.returncode == 0, r.stderr
    assert "internal error" not in r.stderr and "TypeError" not in r.stderr
    assert json.loads(r.stdout)["answer"] == "[list_conditions(since={1, 2})]"
