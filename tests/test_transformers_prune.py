"""Greedy batches drop finished rows (backends/hf_decode.py): the tokens stay those of plain HF `generate`.

The oracle is transformers' own `generate` run on each row alone (its stop strings through HF's
`StopStringCriteria`), compared token for token in fp32. Rows differ in prompt length (one beyond the tiny model's
64-token sliding window), token limit and stop string, so they leave the batch at different steps.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import DECODE_LIMITS as LIMITS
from conftest import DECODE_QUESTIONS as QUESTIONS
from conftest import generate_alone
from PIL import Image

from medgemma_toolkit import MedGemma
from medgemma_toolkit.backends.base import GenerationRequest
from medgemma_toolkit.backends.decoding import RowState, TokenStepper
from medgemma_toolkit.backends.hf_buckets import plan_buckets
from medgemma_toolkit.backends.hf_decode import decode_pruned
from medgemma_toolkit.testing.bf16_agreement import compare, greedy_with_logits


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """A tiny text-only checkpoint whose greedy answers vary enough to hold a stop string midway."""
    from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma

    return build_tiny_medgemma(tmp_path_factory.mktemp("prune") / "tiny-text", text_only=True, seed=1)


@pytest.fixture(scope="module")
def text_fp32(text_dir):
    return MedGemma.load(str(text_dir), dtype="float32")


@pytest.fixture(scope="module")
def mm_fp32(tiny_model_dir):
    return MedGemma.load(str(tiny_model_dir), dtype="float32")


def hf_alone(mg: MedGemma, req: GenerationRequest) -> list[int]:
    """New tokens from plain `model.generate` on this row alone (stop token kept, as generate returns it)."""
    return generate_alone(mg, req)


def stop_string_for(mg: MedGemma, question: str, limit: int) -> str | None:
    """Two characters that the greedy answer to `question` meets for the first time midway (the last character of
    one token and the first of the next; found from the HF oracle's own answer), or None."""
    tok = mg.backend.tokenizer
    ids = hf_alone(mg, mg.request(question, max_new_tokens=limit))
    for k in range(max(1, len(ids) // 4), len(ids) - 2):
        old, new = tok.decode(ids[:k]), tok.decode(ids[: k + 1])
        if len(new) > len(old) and new.startswith(old):
            stop = new[len(old) - 1 : len(old) + 1]
            if stop.replace(" ", "").isalnum() and stop not in old:
                return stop
    return None


def spy_batch_sizes(mg: MedGemma, monkeypatch) -> list[int]:
    """Record the batch size of every forward pass the backend makes (the real pass still runs): prefills and
    decode steps, whether `generate` or `hf_decode.greedy_steps` makes them."""
    sizes: list[int] = []
    real = mg.backend.model.forward

    @functools.wraps(real)  # generate checks its arguments against the forward's signature
    def spy(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(mg.backend.model, "forward", spy)
    return sizes


def runs(sizes: list[int]) -> list[int]:
    """Batch sizes with consecutive repeats collapsed: the sizes a batch goes through as rows leave."""
    return [s for k, s in enumerate(sizes) if k == 0 or sizes[k - 1] != s]


def pruned_ids(
    mg: MedGemma, reqs: list[GenerationRequest], bucket: bool = False
) -> tuple[list[list[int]], list[RowState]]:
    """Each row's new tokens through `decode_pruned` (by default prefilled whole, as the pruning tests count it)."""
    be = mg.backend
    rows = [RowState(i, r) for i, r in enumerate(reqs)]
    stepper = TokenStepper(rows, None, be._decode, set(be.stop_ids), be.byte_token_ids)
    inputs = be._encode([r.prompt for r in reqs])
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(be.model.dtype)
    with torch.inference_mode():
        per_row = [len(r.prompt.all_images()) for r in reqs]
        decode_pruned(
            be.model, dict(inputs), be._generation_config(rows), stepper, images_per_row=per_row, bucket=bucket
        )
    return [d.ids for d in stepper.dets], rows


def expect(mg: MedGemma, req: GenerationRequest) -> list[int]:
    """The oracle's tokens as the backend counts them: a final stop token is not part of the answer."""
    ids = hf_alone(mg, req)
    return ids[:-1] if ids and ids[-1] in mg.backend.stop_ids else ids


def text_requests(mg: MedGemma) -> tuple[list[GenerationRequest], int]:
    """The QUESTIONS with their LIMITS, one of them with a stop string its answer meets midway (returned)."""
    reqs = [mg.request(q, max_new_tokens=n) for q, n in zip(QUESTIONS, LIMITS)]
    for k in (1, 3, 4, 0, 2):
        stop = stop_string_for(mg, QUESTIONS[k], LIMITS[k])
        if stop is not None:
            reqs[k] = mg.request(QUESTIONS[k], max_new_tokens=LIMITS[k], stop=[stop])
            return reqs, k
    raise AssertionError("no answer meets a usable stop string")


def test_a_single_greedy_row_takes_the_steps_path_with_generate_s_answer(text_fp32, monkeypatch):
    """One row alone (ask, chat) decodes with `greedy_steps` after the prefill; its text, token count and finish
    reason are those of the static path, where HF `generate` makes every token (a stop string included)."""
    from medgemma_toolkit.backends import hf_decode

    be = text_fp32.backend
    calls: list[int] = []
    real = hf_decode.greedy_steps

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_decode, "greedy_steps", counted)
    reqs, _ = text_requests(text_fp32)
    for req in reqs:
        calls.clear()
        (steps,) = be._generate_batch([RowState(0, req)], None)
        made = len(calls)
        (static,) = be._generate_batch([RowState(0, req)], None, prune=False)
        assert made >= 1 or steps.completion_tokens <= 1  # one token: the prefill made it, no steps needed
        assert (steps.text, steps.completion_tokens, steps.finish_reason) == (
            static.text,
            static.completion_tokens,
            static.finish_reason,
        )


def test_text_rows_leave_early_and_match_hf_generate_alone(text_fp32, monkeypatch):
    reqs, stopped = text_requests(text_fp32)
    sizes = spy_batch_sizes(text_fp32, monkeypatch)
    ids, rows = pruned_ids(text_fp32, reqs)
    sizes = sizes[:]  # the oracle's own calls below are not the backend's
    assert ids == [expect(text_fp32, r) for r in reqs]
    assert sizes[0] == len(reqs) and sizes == sorted(sizes, reverse=True) and len(set(sizes)) > 2, sizes
    assert rows[stopped].finish == "stop" and len(ids[stopped]) < LIMITS[stopped]  # before its token limit


def test_image_rows_leave_early_and_match_hf_generate_alone(mm_fp32, monkeypatch):
    imgs = [Image.new("RGB", (40 + 9 * i, 30), (i * 50, 20, 200 - i * 40)) for i in range(4)]
    reqs = [mm_fp32.request(q, [im], max_new_tokens=n) for q, im, n in zip(QUESTIONS, imgs, [3, 16, 9, 12])]
    sizes = spy_batch_sizes(mm_fp32, monkeypatch)
    ids, _ = pruned_ids(mm_fp32, reqs)
    sizes = sizes[:]
    assert ids == [expect(mm_fp32, r) for r in reqs]
    assert runs(sizes) == [4, 3, 2, 1], sizes


def test_stop_token_rows_leave_early_and_match_hf_generate_alone(scripted_model_dir, monkeypatch):
    """The scripted checkpoint ends every answer with <end_of_turn>: rows stop on it, on a stop string, or at
    their limit, at different steps."""
    mg = MedGemma.load(str(scripted_model_dir), dtype="float32")
    reqs = [
        mg.request("Anything?", max_new_tokens=3),
        mg.request("Anything at all?", max_new_tokens=100),
        mg.request("Anything?", max_new_tokens=100, stop=["large"]),
        mg.request("Something else, please?", max_new_tokens=6),
    ]
    sizes = spy_batch_sizes(mg, monkeypatch)
    ids, rows = pruned_ids(mg, reqs)
    sizes = sizes[:]
    assert ids == [expect(mg, r) for r in reqs]
    assert [r.finish for r in rows] == ["length", "stop", "stop", "length"]
    assert len(set(map(len, ids))) == 4 and sizes[0] == 4 and len(sizes) > 2, sizes


def test_backend_results_stream_and_cancel_as_the_static_batch(text_fp32):
    """Through `Backend.generate`: text, finish reason, token counts and streamed deltas are those of the static
    batch (every row decoded to the end), with a stop string, differing limits and a row cancelled midway."""
    be = text_fp32.backend
    reqs, stopped = text_requests(text_fp32)
    cancel = 4 if stopped != 4 else 1

    def run(prune: bool):
        polls = {"n": 0}

        def cancelled() -> bool:
            polls["n"] += 1
            return polls["n"] > 6

        reqs[cancel].cancelled = cancelled
        deltas: dict[int, str] = {}

        def on_delta(i: int, s: str) -> None:
            deltas[i] = deltas.get(i, "") + s

        done = be._generate_batch([RowState(i, r) for i, r in enumerate(reqs)], on_delta, prune=prune)
        return [(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in done], deltas

    pruned, pruned_deltas = run(True)
    static, static_deltas = run(False)
    assert pruned == static and pruned_deltas == static_deltas
    assert pruned[stopped][1] == "stop" and pruned[cancel][1] == "cancelled"
    assert pruned[cancel][3] < LIMITS[cancel]
    assert all(pruned_deltas.get(i, "") == c[0] for i, c in enumerate(pruned))
    # the public entry point takes the pruned path and answers the same (the cancelled row now runs to its end)
    reqs[cancel].cancelled = None
    public = [(c.text, c.finish_reason, c.completion_tokens) for c in be.generate(reqs)]
    assert [c for k, c in enumerate(public) if k != cancel] == [
        (c[0], c[1], c[3]) for k, c in enumerate(pruned) if k != cancel
    ]
    assert public[cancel][1:] == ("length", LIMITS[cancel])


def test_sampled_batches_keep_one_static_generate(text_fp32, monkeypatch):
    """Seeded sampling draws its random numbers per step for the whole batch: a smaller batch would change them."""
    sizes = spy_batch_sizes(text_fp32, monkeypatch)
    reqs = [text_fp32.request(q, max_new_tokens=n, temperature=1.0, seed=3) for q, n in zip(QUESTIONS, LIMITS)]
    first = [c.text for c in text_fp32.backend.generate(reqs)]
    assert set(sizes) == {len(reqs)}
    assert [c.text for c in text_fp32.backend.generate(reqs)] == first


def test_bf16_differs_from_the_static_batch_only_at_near_ties(text_dir):
    """In bf16 a smaller batch may round differently; a different token is allowed only where the static batch's
    own logits nearly tie (the tolerance of `testing.bf16_agreement`)."""
    mg = MedGemma.load(str(text_dir), dtype="bfloat16")
    reqs, _ = text_requests(mg)
    ids, _ = pruned_ids(mg, reqs)
    inputs = dict(mg.backend._encode([r.prompt for r in reqs]))
    static, logits = greedy_with_logits(mg.backend.model, inputs, max(LIMITS))
    diverged = compare(static, ids, logits)
    assert all(d.within_tolerance for d in diverged), diverged
    assert len(diverged) <= 1


# -- length-bucketed prefill (backends/hf_buckets.py) ----------------------------------------------------------------


def test_plan_buckets_groups_like_lengths_and_covers_every_row():
    lengths = [200, 40, 210, 45, 205, 50, 120]
    plan = plan_buckets(lengths, overhead=20)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    assert [sorted(lengths[i] for i in b) for b in plan] == [[40, 45, 50], [120], [200, 205, 210]]
    assert plan_buckets(lengths, overhead=10_000) == [[1, 3, 5, 6, 0, 4, 2]]  # a call costs more than padding
    assert plan_buckets([7, 7, 7], overhead=0) == [[0, 1, 2]]  # equal lengths: nothing to gain
    assert plan_buckets([]) == []


def test_bucketed_text_rows_match_hf_generate_alone(text_fp32, monkeypatch):
    """Rows of 20-90 tokens (one beyond the 64-token sliding window) prefill in buckets, then decode joined; every
    row's tokens are those of HF `generate` on the row alone."""
    reqs, _ = text_requests(text_fp32)
    lengths = [text_fp32.backend.count_prompt_tokens(r.prompt) for r in reqs]
    assert max(lengths) > 64 > min(lengths)
    sizes = spy_batch_sizes(text_fp32, monkeypatch)
    ids, _ = pruned_ids(text_fp32, reqs, bucket=True)
    sizes = sizes[:]
    n_buckets = len(plan_buckets([n + 0 for n in lengths]))
    assert n_buckets > 1
    assert sum(sizes[:n_buckets]) == len(reqs) and sizes[n_buckets] <= len(reqs), sizes  # buckets, then joined
    assert ids == [expect(text_fp32, r) for r in reqs]


def test_bucketed_image_rows_match_hf_generate_alone(mm_fp32, monkeypatch):
    """Image rows keep their own images in their bucket (`pixel_values` follow the rows)."""
    imgs = [Image.new("RGB", (40 + 9 * i, 30), (i * 50, 20, 200 - i * 40)) for i in range(4)]
    qs = [QUESTIONS[1], QUESTIONS[2], QUESTIONS[1] + " " + QUESTIONS[3], QUESTIONS[4]]
    reqs = [mm_fp32.request(q, [im], max_new_tokens=n) for q, im, n in zip(qs, imgs, [3, 16, 9, 12])]
    sizes = spy_batch_sizes(mm_fp32, monkeypatch)
    ids, _ = pruned_ids(mm_fp32, reqs, bucket=True)
    sizes = sizes[:]
    assert len(sizes) > 1 and sizes[0] < len(reqs), sizes  # prefilled in more than one bucket
    assert ids == [expect(mm_fp32, r) for r in reqs]


def test_backend_bucketed_results_keep_order_and_equal_unbucketed(text_fp32):
    """Through `Backend.generate`'s batch: text, finish reasons and token counts, in the callers' order, are those
    of the batch prefilled whole."""
    be = text_fp32.backend
    reqs, _ = text_requests(text_fp32)
    reqs = reqs + reqs[::-1]  # longer and shorter rows interleaved

    def run(bucket: bool):
        done = be._generate_batch([RowState(i, r) for i, r in enumerate(reqs)], None, bucket=bucket)
        return [(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in done]

    whole, bucketed = run(False), run(True)
    assert bucketed == whole
    assert [c[2] for c in bucketed] == [be.count_prompt_tokens(r.prompt) for r in reqs]


def test_backend_refills_batches_with_the_results_of_one_batch_after_another(text_fp32, monkeypatch):
    """`Backend.generate` handed more greedy text requests than a batch holds: at most `max_batch_size` rows in any
    forward pass, waiting rows joining running ones, and text, finish reasons and token counts (in the callers'
    order) those of one batch after another; `run_batches` hands such a backend several batches of text per call."""
    import dataclasses
    import functools

    from medgemma_toolkit.eval import generation

    be = text_fp32.backend
    assert be.capabilities.refills
    monkeypatch.setattr(be, "capabilities", dataclasses.replace(be.capabilities, max_batch_size=3))
    reqs, _ = text_requests(text_fp32)
    reqs = reqs + reqs[::-1] + reqs[1::2] + reqs  # 17
    widths: list[int] = []
    real = be.model.forward

    @functools.wraps(real)
    def spy(*args, **kwargs):
        widths.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    def run(refill: bool) -> list[tuple]:
        monkeypatch.setattr(be, "refill_batches", refill)
        widths.clear()
        monkeypatch.setattr(be.model, "forward", spy)
        try:
            done = be.generate(reqs)
        finally:
            monkeypatch.delattr(be.model, "forward")
        return [(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in done]

    apart = run(False)
    apart_passes = len(widths)
    refilled = run(True)
    assert refilled == apart
    assert max(widths) == 3 and len(widths) < apart_passes

    calls: list[int] = []
    real_generate = be.generate

    def counted(requests, on_delta=None):
        calls.append(len(requests))
        return real_generate(requests, on_delta)

    monkeypatch.setattr(be, "generate", counted)
    jobs = list(range(len(reqs)))
    got: list = []
    generation.run_batches(be, jobs, lambda j: reqs[j], got.extend, 3, lambda j: 0, progress=False)
    assert calls == [12, len(reqs) - 12] and len(got) == len(reqs)  # 4 batches of 3 per call


def test_run_batches_hands_a_refilling_backend_text_only_beyond_one_batch(mm_fp32, monkeypatch):
    """Image rows stay in batches of the run's size (a CPU's image batch is small for memory); the text rows after
    them go to the backend several batches at once."""
    import dataclasses

    from medgemma_toolkit.eval import generation

    be = mm_fp32.backend
    monkeypatch.setattr(be, "capabilities", dataclasses.replace(be.capabilities, max_batch_size=3))
    img = Image.new("RGB", (40, 30), (90, 20, 160))
    jobs = [("img", 0), ("img", 1), *(("txt", i) for i in range(10))]
    built: list = []

    def build(job):
        built.append(job)
        kind, i = job
        return mm_fp32.request(QUESTIONS[i % len(QUESTIONS)], [img] if kind == "img" else [], max_new_tokens=3)

    calls: list[list[str]] = []
    real_generate = be.generate

    def counted(requests, on_delta=None):
        calls.append(["img" if r.prompt.all_images() else "txt" for r in requests])
        return real_generate(requests, on_delta)

    monkeypatch.setattr(be, "generate", counted)
    got: list = []
    generation.run_batches(be, jobs, build, got.extend, 3, lambda j: (j[0] == "img", -j[1]), progress=False)
    assert calls == [["img", "img", "txt"], ["txt"] * 9] and len(got) == len(jobs)
    assert sorted(built) == sorted(jobs)  # each request built once

    # Text first, then an image job: it ends the refilled chunk and starts the next, built once all the same.
    built.clear()
    calls.clear()
    generation.run_batches(be, jobs, build, got.extend, 3, lambda j: (j[0] == "txt", -j[1]), progress=False)
    assert calls == [["txt"] * 10, ["img", "img"]] and sorted(built) == sorted(jobs)
