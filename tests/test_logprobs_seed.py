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
    assert "".join(shape["tokens"]) == c.text and len(shape["top_logprobs"][0]) == 2


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
    assert "".join(e["token"] for e in c.logprobs) == c.text


@pytest.mark.slow
def test_llamacpp_seed_is_honoured(gguf_model):
    backend = gguf_model.backend
    a = backend.generate([sampled(gguf_model, 7)])[0].text
    b = backend.generate([sampled(gguf_model, 7), sampled(gguf_model, 8)])
    assert b[0].text == a  # the same seed, batched with another row: the same text
    assert len({backend.generate([sampled(gguf_model, s)])[0].text for s in range(5)}) > 1
