"""Seeds and log-probabilities at the backend: a seeded row samples the same text whatever its batch-mates (so the
`n` choices of one request batch together), and llama.cpp's log-probabilities equal a direct forward pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import exported

from medgemma_toolkit import MedGemma
from medgemma_toolkit.backends.base import GenerationRequest
from medgemma_toolkit.backends.logprobs import legacy, log_softmax_np


def sampled(mg: MedGemma, seed: int | None, question: str = "Describe the lungs.") -> GenerationRequest:
    return mg.request(question, max_new_tokens=8, temperature=2.0, seed=seed)


def with_seed(req: GenerationRequest, seed: int) -> GenerationRequest:
    return dataclasses.replace(req, params=dataclasses.replace(req.params, seed=seed))


def test_seeded_rows_do_not_depend_on_batch_mates(tiny_model):
    backend = tiny_model.backend
    alone = backend.generate([sampled(tiny_model, 5)])[0].text
    mates = backend.generate([sampled(tiny_model, 5), sampled(tiny_model, 6), sampled(tiny_model, None, "Hi")])
    assert mates[0].text == alone  # same seed, other rows beside it: the same text
    assert len({backend.generate([sampled(tiny_model, s)])[0].text for s in range(5)}) > 1  # seeds matter


def test_streamed_logprobs_reach_the_sink_in_order(tiny_model):
    got: list[dict] = []
    req = tiny_model.request("What is sepsis?", max_new_tokens=6)
    req.logprobs, req.on_logprobs = 2, got.extend
    c = tiny_model.backend.generate([req], on_delta=lambda _i, _d: None)[0]
    assert c.logprobs == got[: len(c.logprobs)] and len(c.logprobs) == c.completion_tokens > 0
    shape = legacy(c.logprobs)
    assert len(shape["tokens"]) == c.completion_tokens and len(shape["top_logprobs"][0]) == 2
    assert shape["text_offset"][0] == 0


def test_log_softmax_np_matches_torch():
    import torch

    x = np.random.default_rng(0).normal(size=1000).astype(np.float32) * 10
    want = torch.log_softmax(torch.from_numpy(x), dim=-1).numpy()
    assert np.abs(log_softmax_np(x) - want).max() < 1e-5


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory, tiny_model_dir) -> MedGemma:
    pytest.importorskip("llama_cpp")
    d = exported(tmp_path_factory, tiny_model_dir, "tiny")
    return MedGemma.load(str(d / "tiny-f32.gguf"), threads=2, parallel=4)


@pytest.mark.slow
def test_llamacpp_logprobs_match_a_direct_forward_pass(gguf_model):
    from medgemma_toolkit.backends.llamacpp_batch import Prepared

    backend = gguf_model.backend
    req = gguf_model.request("What is sepsis?", max_new_tokens=8)
    req.logprobs = 3
    c = backend.generate([req])[0]
    assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens > 0
    # Greedy decoding by hand, the whole prefix decoded afresh for each token: each step's fp32 log-softmax.
    with backend._lock:
        ids = list(backend._prepare(req.prompt).tokens)
    for k, entry in enumerate(c.logprobs):
        with backend._lock:
            logits = backend.engine.logits_after(Prepared(list(ids), len(ids)))
        lp = log_softmax_np(logits)
        token = int(lp.argmax())
        assert abs(entry["logprob"] - float(lp[token])) < 1e-3, (k, entry["logprob"], float(lp[token]))
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(sorted(lp)[::-1][:3], abs=1e-3)
        ids.append(token)
    # Each entry's `bytes` are its token's own: joined, they spell the answer (pieces of a UTF-8 character included).
    assert bytes(b for e in c.logprobs for b in e["bytes"]).decode("utf-8", errors="replace") == c.text


@pytest.mark.slow
def test_llamacpp_seed_is_honoured(gguf_model):
    backend = gguf_model.backend
    a = backend.generate([sampled(gguf_model, 7)])[0].text
    b = backend.generate([sampled(gguf_model, 7), sampled(gguf_model, 8)])
    assert b[0].text == a  # the same seed, batched with another row: the same text
    assert len({backend.generate([sampled(gguf_model, s)])[0].text for s in range(5)}) > 1


@pytest.mark.slow
def test_llamacpp_server_streams_logprobs_and_n_choices(gguf_model, tmp_path):
    """Through the continuous batcher: streamed chunks carry their entries and choice index; seeded choices repeat."""
    import openai

    from medgemma_toolkit.serve.launch import ServerProcess

    path = gguf_model.backend.info.path
    with ServerProcess(path, tmp_path / "server.log", "--served-model-name", "g", "--threads", "2") as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        ask = {"model": "g", "messages": [{"role": "user", "content": "Describe the heart."}], "max_tokens": 6}
        whole = client.chat.completions.create(**ask, logprobs=True, top_logprobs=2, temperature=0)
        want = [(t.token, round(t.logprob, 4)) for t in whole.choices[0].logprobs.content]
        got = []
        for chunk in client.chat.completions.create(**ask, logprobs=True, top_logprobs=2, temperature=0, stream=True):
            for c in chunk.choices:
                got += [(t.token, round(t.logprob, 4)) for t in (c.logprobs.content if c.logprobs else None) or []]
        assert got == want and len(got) == whole.usage.completion_tokens
        hot = {"temperature": 2.0, "seed": 4, "n": 3}
        first = [c.message.content for c in client.chat.completions.create(**ask, **hot).choices]
        assert len(set(first)) > 1
        assert [c.message.content for c in client.chat.completions.create(**ask, **hot).choices] == first
