"""The preallocated KV cache (backends/hf_cache.py) returns and keeps exactly what transformers' dynamic layers do,
and greedy batches decoded with it give the same tokens as with transformers' own `DynamicCache`.

The oracle is transformers' `DynamicLayer` / `DynamicSlidingWindowLayer` fed the same updates, compared bit for bit;
then whole greedy batches (prefilled whole or in buckets, rows finishing at different steps, a prompt beyond the tiny
model's 64-token sliding window) through `decode_pruned` with and without the buffers, and the cache `generate`
actually used is checked to be ours (a silently skipped fast path fails).
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import DECODE_LIMITS as LIMITS
from conftest import DECODE_QUESTIONS as QUESTIONS
from conftest import generate_alone
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from medgemma_toolkit import MedGemma
from medgemma_toolkit.backends.decoding import RowState, TokenStepper
from medgemma_toolkit.backends.hf_cache import (
    PreallocatedLayer,
    PreallocatedSlidingWindowLayer,
    preallocated_cache,
)
from medgemma_toolkit.backends.hf_decode import decode_pruned


def kv(batch: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 2, n, 4, generator=gen), torch.randn(batch, 2, n, 4, generator=gen)


@pytest.mark.parametrize("window", [None, 5, 40])
@pytest.mark.parametrize("prompt", [3, 9])
def test_layers_match_transformers_dynamic_layers(window, prompt):
    """Prefill, steps past the reserve (regrowth, compaction), a two-position step, rows dropped and keys replaced
    wholesale (as the bucket join does): every returned tensor and the kept positions equal the dynamic layer's."""
    gen = torch.Generator().manual_seed(0)
    if window is None:
        ours, ref = PreallocatedLayer(reserve=2), DynamicLayer()
    else:
        ours, ref = PreallocatedSlidingWindowLayer(window, reserve=2), DynamicSlidingWindowLayer(window)
    batch = 4
    for step, n in enumerate([prompt, 1, 1, 1, 2, 1, 1, 1, 1, 3, 1, 1, 1, 1, 1, 1]):
        k, v = kv(batch, n, gen)
        got, want = ours.update(k, v), ref.update(k, v)
        for g, w in zip(got, want):
            assert torch.equal(g, w), (step, g.shape, w.shape)
        assert torch.equal(ours.keys, ref.keys) and torch.equal(ours.values, ref.values)
        assert ours.get_seq_length() == ref.get_seq_length()
        assert ours.get_mask_sizes(1) == ref.get_mask_sizes(1)
        if step == 6:  # a row finishes
            index = torch.tensor([0, 2, 3])
            ours.batch_select_indices(index)
            ref.batch_select_indices(index)
            batch = 3
        if step == 10:  # the join's wholesale replacement, left-padded by one position
            pad = torch.zeros(batch, 2, 1, 4)
            for layer in (ours, ref):
                layer.keys, layer.values = torch.cat([pad, layer.keys], -2), torch.cat([pad, layer.values], -2)
    if window is not None:
        assert ours._buf is not None and ours._buf.keys.shape[-2] <= window - 1 + 2 + 3  # bounded by the window


@pytest.fixture(scope="module")
def text_fp32(tmp_path_factory):
    from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma

    path = build_tiny_medgemma(tmp_path_factory.mktemp("cache") / "tiny-text", text_only=True, seed=1)
    return MedGemma.load(str(path), dtype="float32")


def decode(
    mg: MedGemma,
    reqs: list,
    bucket: bool,
    fast: bool,
    caches: list,
    live_limit: int | None = None,
    rows_seen: list[int] | None = None,
) -> list[list[int]]:
    """Each row's tokens through `decode_pruned` (`fast`: the preallocated cache and `greedy_steps`; else
    transformers' `DynamicCache` and one `generate` call per segment); `caches` collects the cache object of every
    forward pass, `rows_seen` its number of rows."""
    be = mg.backend
    rows = [RowState(i, r) for i, r in enumerate(reqs)]
    stepper = TokenStepper(rows, None, be._decode, set(be.stop_ids), be.byte_token_ids)
    inputs = be._encode([r.prompt for r in reqs])
    real = be.model.forward

    @functools.wraps(real)  # generate checks its arguments against the forward's signature
    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        caches.append(out.cache)
        if rows_seen is not None:
            rows_seen.append(int(kwargs["input_ids"].shape[0]))
        return out

    be.model.forward = spy
    try:
        with torch.inference_mode():
            gen = be._generation_config(rows)
            decode_pruned(
                be.model, dict(inputs), gen, stepper, bucket=bucket, preallocate=fast, steps=fast, live_limit=live_limit
            )
    finally:
        del be.model.forward
    return [d.ids for d in stepper.dets]


def hf_alone(mg: MedGemma, req) -> list[int]:
    """The row's greedy tokens from plain `model.generate` on it alone (a final stop token dropped)."""
    return generate_alone(mg, req, drop_stop=True)


@pytest.mark.parametrize("bucket", [False, True])
def test_fast_decode_gives_every_row_the_tokens_of_hf_generate_alone(text_fp32, bucket):
    """The preallocated cache and `greedy_steps`: rows of 20 to 239 tokens (beyond twice the tiny model's 64-token
    sliding window), prefilled whole or in buckets, finishing at different steps, each get the tokens of
    transformers' `generate` on that row alone; prefilled whole, the same as transformers' `DynamicCache` with one
    `generate` call per segment."""
    reqs = [text_fp32.request(q, max_new_tokens=n) for q, n in zip(QUESTIONS, LIMITS)]
    reqs += [text_fp32.request(QUESTIONS[1] + " " + QUESTIONS[1], max_new_tokens=9)]
    ours_caches: list = []
    ours = decode(text_fp32, reqs, bucket, True, ours_caches)
    assert ours == [hf_alone(text_fp32, r) for r in reqs]
    assert ours == decode(text_fp32, reqs, bucket, False, [])
    assert len({len(x) for x in ours}) > 2  # rows left at different steps
    assert len(ours_caches) >= max(LIMITS) and all(
        isinstance(layer, (PreallocatedLayer, PreallocatedSlidingWindowLayer))
        for c in ours_caches
        for layer in c.layers
    )


@pytest.mark.parametrize("trim_at", [1, 32])
def test_refilled_batches_give_every_row_the_tokens_of_hf_generate_alone(text_fp32, trim_at, monkeypatch):
    """A batch refilled as rows finish (`live_limit`): 15 rows of 3 to 239 tokens, at most 4 decoding at once,
    waiting rows joined to running ones of other lengths (and the padding trimmed as rows leave: at every chance
    with `trim_at` 1), each get the tokens of transformers' `generate` on that row alone; no forward pass sees more
    than 4 rows, and rows did join running ones (fewer forward passes than 4-row batches one after another)."""
    from medgemma_toolkit.backends import hf_decode

    monkeypatch.setattr(hf_decode, "TRIM_AT", trim_at)
    long = QUESTIONS[1] + " " + QUESTIONS[1]
    texts = [*QUESTIONS, long, *QUESTIONS[::-1], long, QUESTIONS[3], QUESTIONS[0], QUESTIONS[2]]
    limits = [*LIMITS, 9, *LIMITS, 26, 7, 30, 2]
    reqs = [text_fp32.request(q, max_new_tokens=n) for q, n in zip(texts, limits)]
    widths: list[int] = []
    ours = decode(text_fp32, reqs, True, True, [], live_limit=4, rows_seen=widths)
    assert ours == [hf_alone(text_fp32, r) for r in reqs]
    assert max(widths) == 4
    # One batch of 4 after another: each batch's steps last as long as its longest row.
    one_after_another = sum(max(len(ours[i]) for i in range(k, min(k + 4, len(reqs)))) for k in range(0, len(reqs), 4))
    assert len(widths) < one_after_another and sum(widths) / len(widths) > 2.5


def test_preallocated_cache_declines_unknown_models():
    assert preallocated_cache(object()) is None


def test_first_argmax_is_argmax_with_its_tie_rule():
    """Blocked argmax (hf_decode.first_argmax) against torch's argmax: random rows, equal maxima in two blocks and
    inside one block (the first wins), a row all equal, bf16 and float32."""
    from medgemma_toolkit.backends.hf_decode import first_argmax

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8 * 1024, generator=gen)
    x[1, 5000] = x[1, 7000] = 50.0  # two blocks hold the max
    x[2, 3000] = x[2, 3001] = 50.0  # one block holds it twice
    x[3] = 1.0  # every entry equal: index 0
    x[4, -1] = 60.0  # the very last entry
    for t in (x, x.to(torch.bfloat16)):
        assert torch.equal(first_argmax(t), t.argmax(dim=-1))
    assert first_argmax(x).tolist()[1:5] == [5000, 3000, 0, 8 * 1024 - 1]
    small = torch.randn(3, 100, generator=gen)  # a vocabulary too small to block: torch's argmax itself
    assert torch.equal(first_argmax(small), small.argmax(dim=-1))


@pytest.mark.parametrize("tokens", [20, 150])
def test_kv_bytes_is_what_the_dynamic_cache_holds(text_fp32, tokens):
    """The automatic CPU batch's memory check (`hf_cache.kv_bytes`) against the bytes of the keys and values
    transformers' own `DynamicCache` holds after a forward pass of 3 rows (below and beyond the tiny model's
    64-token sliding window)."""
    from transformers import DynamicCache

    from medgemma_toolkit.backends.hf_cache import kv_bytes

    model = text_fp32.backend.model
    cache = DynamicCache(config=model.config)
    ids = torch.randint(5, 200, (3, tokens))
    with torch.inference_mode():
        model(input_ids=ids, cache=cache, use_cache=True)
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv_bytes(model.config, 3, tokens, 4) == held


def test_automatic_cpu_batch_follows_the_free_memory(text_fp32, monkeypatch):
    """`max_batch_size` 0: 64 rows on a CPU where their KV cache takes at most a quarter of the free memory, else 32;
    `eval`'s automatic text batch is that choice."""
    from medgemma_toolkit.backends import transformers_backend as tb
    from medgemma_toolkit.backends.hf_cache import kv_bytes
    from medgemma_toolkit.eval.generation import auto_batch_size
    from medgemma_toolkit.models import footprint

    be = text_fp32.backend
    need = kv_bytes(be.model.config, tb.CPU_BATCH, tb.AUTO_ROW_TOKENS, 4)
    for free, rows in ((need * 4, tb.CPU_BATCH), (need * 4 - 1, tb.GPU_BATCH), (None, tb.GPU_BATCH)):
        monkeypatch.setattr(footprint, "available_bytes", lambda free=free: free)
        assert be._auto_batch() == rows, free
    mg = MedGemma.load(be.info.path, dtype="float32", max_batch_size=0)
    assert mg.backend.capabilities.max_batch_size == tb.GPU_BATCH  # free memory reads None here (patched)
    assert auto_batch_size(mg.backend) == tb.GPU_BATCH and auto_batch_size(mg.backend, images=True) == 8
