"""Greedy batches drop finished rows (backends/hf_decode.py): the tokens stay those of plain HF `generate`.

The oracle is transformers' own `generate` run on each row alone (its stop strings through HF's
`StopStringCriteria`), compared token for token in fp32. Rows differ in prompt length (one beyond the tiny model's
64-token sliding window), token limit and stop string, so they leave the batch at different steps.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from medgemma_toolkit import MedGemma
from medgemma_toolkit.backends.base import GenerationRequest
from medgemma_toolkit.backends.decoding import RowState, TokenStepper
from medgemma_toolkit.backends.hf_buckets import plan_buckets
from medgemma_toolkit.backends.hf_decode import decode_pruned
from medgemma_toolkit.testing.bf16_agreement import compare, greedy_with_logits

QUESTIONS = [
    "Is there an effusion?",
    "Describe the heart size in this radiograph, the mediastinum, both lungs, the pleural spaces, the bones and "
    "the soft tissues, and say which of these findings needs follow-up and how soon it should be done.",
    "Edema?",
    "What is sepsis and how is it treated in the first hour?",
    "x",
]
LIMITS = [5, 24, 11, 18, 30]


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
    be = mg.backend
    text = be.render(req.prompt)
    images = req.prompt.all_images()
    if images:
        inputs = be.processor(text=[text], images=[images], return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(be.model.dtype)
    else:
        inputs = be.tokenizer([text], return_tensors="pt", add_special_tokens=False)
    stop = {"stop_strings": list(req.params.stop), "tokenizer": be.tokenizer} if req.params.stop else {}
    with torch.inference_mode():
        out = be.model.generate(
            **inputs,
            max_new_tokens=req.params.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=be.stop_ids,
            pad_token_id=be.tokenizer.pad_token_id,
            **stop,
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()


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
    """Record the batch size of every `generate` call the backend makes (the real call still runs)."""
    sizes: list[int] = []
    real = mg.backend.model.generate

    def spy(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(mg.backend.model, "generate", spy)
    return sizes


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
    assert sizes == [4, 3, 2, 1], sizes


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
    assert sizes == [len(reqs)]
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
