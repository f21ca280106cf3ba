"""The OpenAI surface a client expects, driven by the official `openai` client against the real server on the tiny
random checkpoint: `n` choices, `seed`, `logprobs` (chat, streamed, legacy completions), and an OpenAI upstream
that receives `response_format` and hands back log-probabilities."""

from __future__ import annotations

import http.server
import json
import threading
from collections import defaultdict
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from medgemma_toolkit.serve.launch import ServerProcess

KEY = "test-key-surface-0123"
MODEL = "tiny-surface"
HOT = {"temperature": 2.0, "top_p": 1.0}  # random weights at high temperature: every seed samples other text


class Finding(BaseModel):
    organ: Literal["lung", "heart", "pleura"]
    present: bool
    size_mm: float = Field(ge=0, le=100)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-surface") / "server.log"
    args = ("--api-key", KEY, "--served-model-name", MODEL, "--max-batch-size", "4")
    with ServerProcess(tiny_model_dir, log, *args) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def joins(tokens: list[str], text: str) -> bool:
    """The tokens spell the text. (A run of byte-fallback tokens decodes as a group, all U+FFFD if any byte of it is
    invalid, which random weights often produce: then only the count of characters can be compared.)"""
    return "".join(tokens) == text or ("\ufffd" in text and len(text) <= len("".join(tokens)))


def chat(client: openai.OpenAI, **kw):
    kw.setdefault("messages", [{"role": "user", "content": "Describe the chest X-ray."}])
    return client.chat.completions.create(model=MODEL, max_tokens=kw.pop("max_tokens", 8), **kw)


# -- n > 1 and seed --------------------------------------------------------------------------------------------------
def test_n_choices_seeded_differ_and_repeat(client):
    r = chat(client, n=3, seed=11, **HOT)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1, texts  # each choice samples with its own seed
    assert [c.message.content for c in chat(client, n=3, seed=11, **HOT).choices] == texts  # and repeats
    assert r.usage.completion_tokens == 3 * 8 or r.usage.completion_tokens <= 3 * 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # choice 0 of n is the request's own seed: the same text as n=1 with that seed, whatever the batch
    assert chat(client, seed=11, **HOT).choices[0].message.content == texts[0]
    # a different seed samples different text
    assert chat(client, seed=12, **HOT).choices[0].message.content != texts[0]


def test_n_choices_greedy_are_equal_and_usage_sums(client):
    r = chat(client, n=3, temperature=0)
    texts = {c.message.content for c in r.choices}
    assert len(texts) == 1
    one = chat(client, temperature=0)
    assert r.choices[0].message.content == one.choices[0].message.content
    assert r.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert r.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counted once, as OpenAI does


def test_n_streamed_chunks_carry_their_choice_index(client):
    whole = chat(client, n=2, seed=5, **HOT)
    texts: dict[int, str] = defaultdict(str)
    finishes = {}
    usage = None
    for chunk in chat(client, n=2, seed=5, stream=True, stream_options={"include_usage": True}, **HOT):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert dict(texts) == {i: c.message.content for i, c in enumerate(whole.choices)}
    assert set(finishes) == {0, 1}
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_n_over_the_batch_size_is_a_400(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "n": 5}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "n": 5}
    r = httpx.post(server.url + "/v1/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text


# -- logprobs --------------------------------------------------------------------------------------------------------
def test_streamed_chat_logprobs_equal_the_whole_answers(client):
    whole = chat(client, logprobs=True, top_logprobs=2, temperature=0, max_tokens=10)
    want = [(t.token, round(t.logprob, 4)) for t in whole.choices[0].logprobs.content]
    got, text, paired = [], "", 0
    for chunk in chat(client, logprobs=True, top_logprobs=2, temperature=0, max_tokens=10, stream=True):
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.logprobs is not None and c.logprobs.content:
                got += [(t.token, round(t.logprob, 4)) for t in c.logprobs.content]
                assert all(len(t.top_logprobs) == 2 for t in c.logprobs.content)
                paired += bool(c.delta.content)
    assert got == want and len(got) == whole.usage.completion_tokens
    assert paired > 1  # entries travel with their text as it streams, not all at the end
    assert text.strip() == whole.choices[0].message.content  # the whole answer is stripped


def test_sampled_logprobs_are_of_the_raw_distribution(client):
    r = chat(client, n=2, seed=3, logprobs=True, top_logprobs=1, max_tokens=6, **HOT)
    for c in r.choices:
        assert joins([t.token for t in c.logprobs.content], c.message.content)
        # the top alternative is the most likely token of the model's own distribution, never below the sampled one
        assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in c.logprobs.content)


def test_completions_legacy_logprobs(client):
    prompt = "Findings:"  # the tiny checkpoint answers it with plain words first (no byte-fallback run)
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, logprobs=2, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert joins(lp.tokens, r.choices[0].text)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(len(lp.tokens))]
    assert all(len(alts) <= 2 and max(alts.values()) >= v - 1e-6 for alts, v in zip(lp.top_logprobs, lp.token_logprobs))
    tokens, values, text, paired = [], [], "", 0
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, logprobs=2, temperature=0, stream=True)
    for chunk in stream:
        c = chunk.choices[0]
        text += c.text
        if c.logprobs is not None:
            tokens += c.logprobs.tokens
            values += c.logprobs.token_logprobs
            paired += bool(c.text and c.logprobs.tokens)
    assert text == r.choices[0].text and tokens == lp.tokens and paired > 1
    assert values == pytest.approx(lp.token_logprobs, abs=1e-5)


def test_completions_n_seeded(client):
    prompt = "Findings:"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, n=3, seed=9, **HOT)
    assert [c.index for c in r.choices] == [0, 1, 2] and len({c.text for c in r.choices}) > 1
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, n=3, seed=9, **HOT)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]


def test_parse_with_n(client):
    r = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "One finding as JSON."}],
        response_format=Finding,
        max_tokens=128,
        n=2,
        seed=1,
        temperature=1.0,
    )
    assert len(r.choices) == 2 and all(isinstance(c.message.parsed, Finding) for c in r.choices)


# -- an OpenAI upstream -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def front(server, tmp_path_factory):
    """`medgemma serve --backend openai` in front of the local server (its upstream)."""
    log = tmp_path_factory.mktemp("serve-front") / "front.log"
    with ServerProcess(
        MODEL, log, "--backend", "openai", "--upstream", server.url, env={"MEDGEMMA_UPSTREAM_API_KEY": KEY}
    ) as f:
        yield f


def test_upstream_receives_response_format_and_returns_logprobs(front, client):
    fc = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    r = fc.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "One finding as JSON."}],
        response_format=Finding,
        max_tokens=256,
        seed=1,
        temperature=1.0,
    )
    # The schema reached the upstream: its answer validates (random weights never write this JSON unconstrained).
    jsonschema.validate(json.loads(r.choices[0].message.content), Finding.model_json_schema())
    assert isinstance(r.choices[0].message.parsed, Finding)
    q = {"messages": [{"role": "user", "content": "Describe the heart."}], "temperature": 0, "max_tokens": 6}
    through = fc.chat.completions.create(model=MODEL, logprobs=True, top_logprobs=2, **q)
    direct = client.chat.completions.create(model=MODEL, logprobs=True, top_logprobs=2, **q)
    got = [(t.token, round(t.logprob, 4)) for t in through.choices[0].logprobs.content]
    assert got == [(t.token, round(t.logprob, 4)) for t in direct.choices[0].logprobs.content] and got
    legacy = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    lc = legacy.completions.create(model=MODEL, prompt="Findings:", max_tokens=4, logprobs=1, temperature=0)
    assert joins(lc.choices[0].logprobs.tokens, lc.choices[0].text)


class _DropLogprobs(http.server.BaseHTTPRequestHandler):
    """An upstream that ignores `logprobs` (as some OpenAI-compatible servers do): forwards to `target` without it."""

    target = ""

    def do_GET(self):
        self._forward(None)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        body.pop("logprobs", None)
        body.pop("top_logprobs", None)
        self._forward(json.dumps(body).encode())

    def _forward(self, data: bytes | None) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
        with httpx.stream(self.command, self.target + self.path, content=data, headers=headers, timeout=120) as r:
            self.send_response(r.status_code)
            self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
            self.end_headers()
            for chunk in r.iter_raw():
                self.wfile.write(chunk)

    def log_message(self, *args):
        pass


def test_upstream_without_logprobs_is_a_400_naming_it(server, tmp_path):
    handler = type("H", (_DropLogprobs,), {"target": server.url})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        env = {"MEDGEMMA_UPSTREAM_API_KEY": KEY}
        with ServerProcess(MODEL, tmp_path / "f.log", "--backend", "openai", "--upstream", url, env=env) as f:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            ok = httpx.post(f.url + "/v1/chat/completions", json=body, timeout=120)
            assert ok.status_code == 200, ok.text
            r = httpx.post(f.url + "/v1/chat/completions", json={**body, "logprobs": True}, timeout=120)
            assert r.status_code == 400 and "logprobs" in r.json()["error"]["message"], r.text
    finally:
        proxy.shutdown()
