"""`serve` with `response_format`: the official client's `parse` gets schema-valid objects from the tiny random
checkpoint, and every parameter the server cannot honour is a 400 naming it."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from medgemma_toolkit.serve.launch import ServerProcess

KEY = "test-key-structured-0123"
MODEL = "tiny-medgemma"


class LabTest(BaseModel):
    name: Literal["hemoglobin", "glucose", "sodium", "creatinine"]
    value: float = Field(ge=0, le=1000, multiple_of=0.5)
    flag: Literal["low", "normal", "high"]


class LabReport(BaseModel):
    patient_sex: Literal["female", "male", "unknown"]
    tests: list[LabTest] = Field(min_length=1, max_length=3)
    abnormal_count: int = Field(ge=0, le=20)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-structured") / "server.log"
    srv = ServerProcess(tiny_model_dir, log, "--api-key", KEY, "--served-model-name", MODEL, "--max-batch-size", "4")
    with srv:
        yield srv


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def post(server, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=120)


def test_parse_twenty_answers_validate(client):
    def one(i: int) -> LabReport | None:
        r = client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": f"Extract lab report {i} as JSON."}],
            response_format=LabReport,
            max_tokens=512,
            temperature=0.0 if i % 2 else 1.0,
            seed=i,
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), LabReport.model_json_schema())
        return r.choices[0].message.parsed

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        parsed = list(pool.map(one, range(20)))
    assert all(isinstance(p, LabReport) for p in parsed)


def test_json_object_mode(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"},
        max_tokens=256,
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_unsupported_schema_feature_is_a_400_naming_it(server):
    schema = {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}
    r = post(
        server,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        },
    )
    assert r.status_code == 400, r.text
    assert '"if"' in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "param",
    [
        {"top_logprobs": 3},  # without logprobs: true
        {"logit_bias": {"5": 10}},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 1.0},
        {"modalities": ["text", "audio"]},
    ],
)
def test_unsupported_parameters_are_400_naming_them(server, param):
    (name,) = param
    r = post(server, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **param})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == name and name in err["message"]


def test_chat_logprobs(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens > 0
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    assert "".join(t.token for t in content) == r.choices[0].message.content


def test_neutral_values_of_unsupported_parameters_pass(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = post(server, {**body, "logprobs": False, "presence_penalty": 0, "user": "someone"})
    assert r.status_code == 200, r.text


def test_thinking_with_schema_thought_apart_answer_valid(server):
    """The thought comes back free in reasoning_content; the content is valid under the schema."""
    # additionalProperties false: a random model otherwise may invent keys until max_tokens
    schema = json.loads((Path(__file__).parent / "data" / "structured" / "nested.json").read_text())
    r = post(
        server,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "lab", "schema": schema}},
            "max_tokens": 400,
            "medgemma": {"think": True, "max_thought_tokens": 6},
        },
    )
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message["reasoning_content"]
    jsonschema.validate(json.loads(message["content"]), schema)
    r = post(
        server, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "medgemma": {"max_thought_tokens": 0}}
    )
    assert r.status_code == 400 and "max_thought_tokens" in r.text


def _pdf_data_uri(pages: int) -> str:
    import base64
    import io

    from PIL import Image

    images = [Image.new("RGB", (200, 300), (40 * k, 0, 0)) for k in range(pages)]
    buf = io.BytesIO()
    images[0].save(buf, format="PDF", save_all=True, append_images=images[1:])
    return "data:application/pdf;base64," + base64.b64encode(buf.getvalue()).decode()


def test_pdf_data_uri_pages_are_images(server):
    content = [
        {"type": "image_url", "image_url": {"url": _pdf_data_uri(2)}},
        {"type": "text", "text": "Summarise."},
    ]
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    r = post(server, body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > 2 * 16  # two pages, 16 soft tokens each on the tiny model
    broken = "data:application/pdf;base64,JVBERi0xLjQKbm90IGEgcGRm"  # "%PDF-1.4\nnot a pdf"
    content[0] = {"type": "image_url", "image_url": {"url": broken}}
    r = post(server, body)
    assert r.status_code == 400 and "cannot read the PDF" in r.json()["error"]["message"], r.text


def test_completions_create_whole_and_streamed(client):
    r = client.completions.create(model=MODEL, prompt="Question: what is sepsis?\nAnswer:", max_tokens=6)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0
    chunks = list(
        client.completions.create(model=MODEL, prompt="Question: what is sepsis?\nAnswer:", max_tokens=6, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text  # greedy: the same text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


@pytest.mark.parametrize("param", [{"suffix": "x"}, {"best_of": 2}, {"echo": True}])
def test_completions_unsupported_parameters_are_400(server, param):
    (name,) = param
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, **param}
    r = httpx.post(server.url + "/v1/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 400, r.text
    assert name in r.json()["error"]["message"]
