"""Driving transformers' `generate` for one batch: each step's newest tokens go to the `TokenStepper`, and greedy
batches shed the rows that have finished.

A static batch decodes every row until its last row stops, so answers of different lengths (a letter and a
paragraph) spend much of the work on rows that are already done. A row's greedy tokens do not depend on the other
rows, so the batch can be cut between steps: the stopping criteria end the `generate` call, the finished rows'
entries leave the KV cache (`DynamicCache.batch_select_indices`), and a new `generate` call continues the survivors
from that cache with their full sequences and attention mask. `generate` then feeds only the uncached newest token
and rebuilds positions from the mask, as the uninterrupted run would. Images are consumed by the prefill (the first
call); continuations are text only.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from .decoding import TokenStepper
from .hf_buckets import bucket_inputs, join_caches, join_rows, joinable, plan_buckets

# End a segment once this share of its rows has finished. A cut costs one `generate` call's set-up and a copy of the
# surviving rows' cache (measured by benchmarks/prune_decode.py); it is repaid by the first few smaller steps.
PRUNE_FRACTION = 0.25


class Track(StoppingCriteria):
    """Feeds `stepper` the newest token of each row in `live` (indices into `stepper.rows`, in batch order) and tells
    `generate` which rows are done; once `end_at` of them are, every row is reported done, which ends the call."""

    def __init__(self, stepper: TokenStepper, live: list[int], end_at: int | None) -> None:
        self.stepper, self.live, self.end_at = stepper, live, end_at
        self.done: list[bool] = []
        self.flags: torch.Tensor | None = None  # handed back to generate; rebuilt only when a row finishes

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        # One small host copy per step (the newest token of each row), not the whole sequence.
        now = self.stepper.advance(input_ids[:, -1].tolist(), self.live)
        if self.end_at is not None and sum(now) >= self.end_at:
            now = [True] * len(now)
        if self.flags is None or now != self.done:
            self.done = now
            self.flags = torch.tensor(now, dtype=torch.bool, device=input_ids.device)
        return self.flags


def can_prune(model: Any) -> bool:
    """Whether `generate` will use a `DynamicCache` (whose rows can be selected): no fixed-size cache configured.
    ("hybrid" is what older Gemma 3 configs name; transformers now maps it to the dynamic cache.)"""
    return getattr(model.generation_config, "cache_implementation", None) in (None, "dynamic", "hybrid")


def decode_pruned(
    model: Any,
    inputs: dict[str, Any],
    gen: Any,
    stepper: TokenStepper,
    fraction: float | None = None,
    images_per_row: list[int] | None = None,
    bucket: bool = True,
) -> None:
    """Greedy decoding of `inputs` (one row per `stepper` row) in segments, dropping finished rows between them.

    `gen` is the batch's GenerationConfig (greedy; `max_new_tokens` the largest row limit); it is not changed.
    `fraction`: the share of a segment's rows whose finishing ends it (default `PRUNE_FRACTION`). With `bucket`,
    rows of unlike prompt lengths are prefilled in length buckets and join for the decode (backends/hf_buckets.py);
    `images_per_row` says which `pixel_values` belong to which row (default: none)."""
    fraction = PRUNE_FRACTION if fraction is None else fraction
    rows = stepper.rows
    gen = copy.deepcopy(gen)
    gen.return_dict_in_generate = True  # hands back the cache, to continue from
    start = _bucketed_prefill(model, inputs, gen, stepper, images_per_row) if bucket else None
    if start is None:
        ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        first: dict[str, Any] = inputs  # pixel_values, token_type_ids: read by the prefill only
        live, made = list(range(len(rows))), 0
    else:
        ids, mask, cache, live = start
        first, made = {"cache": cache}, 1
    while live:
        end_at = max(1, math.ceil(len(live) * fraction)) if len(live) > 1 else None
        gen.max_new_tokens = max(rows[i].request.params.max_new_tokens for i in live) - made
        if gen.max_new_tokens <= 0:
            break
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=gen,
            stopping_criteria=StoppingCriteriaList([Track(stepper, live, end_at)]),
            **first,
        )
        seq, cache = out.sequences, out.cache
        made += seq.shape[1] - ids.shape[1]
        keep = [k for k, i in enumerate(live) if rows[i].finish is None]
        if not keep:
            break
        if not isinstance(cache, DynamicCache):
            raise RuntimeError(f"cannot drop finished rows from a {type(cache).__name__}")
        # The cache holds every position but the newest token, which the next call feeds first.
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], seq.shape[1] - mask.shape[1])], dim=1)
        if len(keep) < len(live):
            # A CPU index works for cache layers on any device (several GPUs under device_map="auto").
            index = torch.tensor(keep)
            cache.batch_select_indices(index)
            seq, mask = seq[index.to(seq.device)], mask[index.to(mask.device)]
        ids, live = seq, [live[k] for k in keep]
        first = {"cache": cache}
    stepper.finish([[] for _ in rows])  # closes any row still open as "length" (its tokens were all seen)


def _bucketed_prefill(
    model: Any, inputs: dict[str, Any], gen: Any, stepper: TokenStepper, images_per_row: list[int] | None
) -> tuple[torch.Tensor, torch.Tensor, DynamicCache, list[int]] | None:
    """Prefill (and the first token) bucket by bucket, then (ids, mask, joined cache, live rows) of the rows still
    open, in bucket order; None when one bucket would do (or this model's cache cannot be joined): the caller
    prefills the batch whole."""
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    plan = plan_buckets(lengths)
    if len(plan) < 2 or not joinable(model):
        return None
    per_row = images_per_row or [0] * len(lengths)
    parts = [bucket_inputs(inputs, b, per_row) for b in plan]
    if any(p is None for p in parts):
        return None
    one = copy.deepcopy(gen)
    one.max_new_tokens = 1
    seqs, masks, caches, keep = [], [], [], []
    for bucket, part in zip(plan, parts):
        assert part is not None
        ids, mask = part.pop("input_ids"), part.pop("attention_mask")
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=one,
            stopping_criteria=StoppingCriteriaList([Track(stepper, bucket, None)]),
            **part,
        )
        if not isinstance(out.cache, DynamicCache):
            raise RuntimeError(f"cannot join a {type(out.cache).__name__}")
        seqs.append(out.sequences)
        masks.append(torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1))
        caches.append(out.cache)
        keep.append([k for k, i in enumerate(bucket) if stepper.rows[i].finish is None])
    live = [bucket[k] for bucket, ks in zip(plan, keep) for k in ks]
    if not live:
        return torch.empty(0), torch.empty(0), caches[0], []
    ids, mask = join_rows(seqs, masks, keep, int(gen.pad_token_id or 0))
    return ids, mask, join_caches(caches, keep), live
