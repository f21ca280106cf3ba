"""Driving transformers' `generate` for one batch: each step's newest tokens go to the `TokenStepper`, and greedy
batches shed the rows that have finished.

A static batch decodes every row until its last row stops, so answers of different lengths (a letter and a
paragraph) spend much of the work on rows that are already done. A row's greedy tokens do not depend on the other
rows, so the batch can be cut between steps: once a share of the rows has finished, their entries leave the KV
cache (`DynamicCache.batch_select_indices`) and the survivors continue from that cache with their full sequences
and attention mask, feeding only the uncached newest token at the position its mask gives, as the uninterrupted run
would. `generate` makes the prefill and the first token (images are consumed there); `greedy_steps` makes the rest
without `generate`'s per-step float32 logits copy (with `steps=False`, a `generate` call per segment, as before).
The cache's keys and values live in preallocated buffers (backends/hf_cache.py).

With `live_limit` (a `generate` call handed more greedy text rows than a batch holds) the batch is also refilled:
at most `live_limit` rows decode together, and each cut that drops finished rows prefills as many waiting rows and
joins their caches to the survivors' (backends/hf_buckets.py), so decode steps keep a full batch instead of thinning
out to the last long answers. A row's tokens are the same as alone: it sees only its own positions (the join
left-pads it, the mask hides the padding, its positions count from its mask).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from .decoding import TokenStepper
from .hf_buckets import bucket_inputs, join_caches, join_rows, joinable, plan_buckets, trim_left
from .hf_cache import DEFAULT_RESERVE, preallocated_cache

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
    preallocate: bool = True,
    steps: bool = True,
    live_limit: int | None = None,
) -> None:
    """Greedy decoding of `inputs` (one row per `stepper` row) in segments, dropping finished rows between them.

    `gen` is the batch's GenerationConfig (greedy; `max_new_tokens` the largest row limit); it is not changed.
    `fraction`: the share of a segment's rows whose finishing ends it (default `PRUNE_FRACTION`). With `bucket`,
    rows of unlike prompt lengths are prefilled in length buckets and join for the decode (backends/hf_buckets.py);
    `images_per_row` says which `pixel_values` belong to which row (default: none). `preallocate=False` keeps
    transformers' own `DynamicCache` (grown by concatenation) instead of `hf_cache`'s buffers, and `steps=False`
    continues each segment with another `generate` call instead of `greedy_steps`, for comparisons. `live_limit`:
    decode at most that many rows at once, refilling the batch from the later rows as rows finish (`can_refill`
    must hold; rows start in their order in `stepper.rows`)."""
    fraction = PRUNE_FRACTION if fraction is None else fraction
    rows = stepper.rows
    gen = copy.deepcopy(gen)
    gen.return_dict_in_generate = True  # hands back the cache, to continue from
    # Keys and values are written into preallocated buffers, not concatenated at every step (backends/hf_cache.py).
    reserve = min(int(gen.max_new_tokens), DEFAULT_RESERVE) if preallocate else 0
    if live_limit is not None and live_limit < len(rows):
        _decode_refilled(model, inputs, gen, stepper, fraction, images_per_row, reserve, live_limit)
        return
    start = _bucketed_prefill(model, inputs, gen, stepper, images_per_row, reserve) if bucket else None
    if start is None:
        ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        first: dict[str, Any] = inputs  # pixel_values, token_type_ids: read by the prefill only
        cache = preallocated_cache(model, reserve) if reserve else None
        if cache is not None:
            first["cache"] = cache
        live, made = list(range(len(rows))), 0
    else:
        ids, mask, cache, live = start
        first, made = {"cache": cache}, 1
    pad = int(gen.pad_token_id or 0)
    while live:
        end_at = max(1, math.ceil(len(live) * fraction)) if len(live) > 1 else None
        gen.max_new_tokens = max(rows[i].request.params.max_new_tokens for i in live) - made
        if gen.max_new_tokens <= 0:
            break
        if steps and made:  # a continuation: our own steps, not another `generate` call
            ids, mask, n = greedy_steps(
                model, ids, mask, first["cache"], stepper, live, end_at, gen.max_new_tokens, pad
            )
            seq, cache = ids, first["cache"]
            made += n
        else:
            if steps:  # the prefill and its first token only: `greedy_steps` makes the rest
                gen.max_new_tokens = 1
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=gen,
                stopping_criteria=StoppingCriteriaList([Track(stepper, live, end_at)]),
                **first,
            )
            seq, cache = out.sequences, out.cache
            made += seq.shape[1] - ids.shape[1]
            # The cache holds every position but the newest token, which the next call feeds first.
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], seq.shape[1] - mask.shape[1])], dim=1)
        keep = [k for k, i in enumerate(live) if rows[i].finish is None]
        if not keep:
            break
        if not isinstance(cache, DynamicCache):
            raise RuntimeError(f"cannot drop finished rows from a {type(cache).__name__}")
        if len(keep) < len(live):
            seq, mask = _keep_rows(seq, mask, cache, keep)
        ids, live = seq, [live[k] for k in keep]
        first = {"cache": cache}
    stepper.finish([[] for _ in rows])  # closes any row still open as "length" (its tokens were all seen)


def _keep_rows(
    ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache, keep: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Only the `keep` rows (batch positions) of the cache, in place, and of `ids` and `mask`, returned."""
    # A CPU index works for cache layers on any device (several GPUs under device_map="auto").
    index = torch.tensor(keep)
    cache.batch_select_indices(index)
    return ids[index.to(ids.device)], mask[index.to(mask.device)]


def can_refill(model: Any) -> bool:
    """Whether `decode_pruned(..., live_limit=...)` can refill this model's batches: a dynamic cache whose layers
    `hf_buckets.join_caches` joins."""
    return can_prune(model) and joinable(model)


# With rows waiting, cut (and refill) once this share of the batch has finished: each refill is a prefill call of its
# own, and a prefill of few rows runs its matmuls less efficiently than one of many.
REFILL_FRACTION = 0.25

# Leading positions that no live row uses (left padding left behind by the rows that finished) are cut from the
# batch once there are this many: attention then stops reading them.
TRIM_AT = 32


def _decode_refilled(
    model: Any,
    inputs: dict[str, Any],
    gen: Any,
    stepper: TokenStepper,
    fraction: float,
    images_per_row: list[int] | None,
    reserve: int,
    live_limit: int,
) -> None:
    """`decode_pruned` with at most `live_limit` rows decoding at once: whenever a cut drops finished rows, the next
    waiting rows are prefilled (in length buckets) and joined to the survivors, up to `live_limit` again."""
    rows = stepper.rows
    per_row = images_per_row or [0] * len(rows)
    pad = int(gen.pad_token_id or 0)
    waiting = list(range(len(rows)))
    ids = mask = torch.empty(0)
    cache: DynamicCache | None = None
    live: list[int] = []
    while live or waiting:
        if waiting and len(live) < live_limit:
            take, waiting = waiting[: live_limit - len(live)], waiting[live_limit - len(live) :]
            start = _bucketed_prefill(model, inputs, gen, stepper, per_row, reserve, subset=take)
            if start is None:  # a tensor `bucket_inputs` cannot cut by rows: the caller should not have refilled
                raise RuntimeError("cannot refill a batch whose inputs cannot be cut by rows")
            new_ids, new_mask, new_cache, new_live = start
            if not new_live:
                continue
            if cache is None:  # no row running (`live` is empty exactly when there is no cache)
                ids, mask, cache, live = new_ids, new_mask, new_cache, new_live
            else:
                both = [list(range(len(live))), list(range(len(new_live)))]
                ids, mask = join_rows([ids, new_ids], [mask, new_mask], both, pad)
                cache = join_caches([cache, new_cache], both)
                live = live + new_live
            continue
        assert cache is not None
        # With rows waiting, a cut refills the batch; without, it only sheds the finished rows, as `decode_pruned`.
        share = REFILL_FRACTION if waiting else fraction
        end_at = max(1, math.ceil(len(live) * share)) if len(live) > 1 else None
        limit = max(rows[i].request.params.max_new_tokens for i in live)  # each row stops at its own limit
        ids, mask, _ = greedy_steps(model, ids, mask, cache, stepper, live, end_at, limit, pad)
        keep = [k for k, i in enumerate(live) if rows[i].finish is None]
        if not keep:
            live, cache = [], None
            continue
        if len(keep) < len(live):
            ids, mask = trim_left(*_keep_rows(ids, mask, cache, keep), cache, TRIM_AT)
            live = [live[k] for k in keep]
    stepper.finish([[] for _ in rows])


ARGMAX_BLOCK = 1024  # vocabulary entries per block in `first_argmax`


def first_argmax(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(-1)` for a (rows, vocabulary) tensor, the first index among equal maxima as argmax gives,
    faster on CPUs: torch's argmax of bf16 runs one element at a time (8 ms a step for 32 rows of the demo's 262k
    words, a quarter of its output layer), its max-reduction vectorised (under 1 ms). So: each block's max, the
    first block holding the row's max, then argmax inside that block only."""
    rows, vocab = logits.shape
    if vocab % ARGMAX_BLOCK or vocab < 4 * ARGMAX_BLOCK or logits.device.type != "cpu":
        return logits.argmax(dim=-1)
    blocks = logits.reshape(rows, vocab // ARGMAX_BLOCK, ARGMAX_BLOCK)
    block_max = blocks.amax(dim=-1)
    first = (block_max == block_max.amax(dim=-1, keepdim=True)).to(torch.uint8).argmax(dim=-1)
    inside = blocks[torch.arange(rows, device=logits.device), first].argmax(dim=-1)
    return first * ARGMAX_BLOCK + inside


def greedy_steps(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    cache: DynamicCache,
    stepper: TokenStepper,
    live: list[int],
    end_at: int | None,
    limit: int,
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Greedy steps continuing `ids` (its newest token not yet in `cache`; `mask` as long as `ids`) until every row
    in `live` is done, `end_at` of them are, or `limit` steps were made; returns (ids, mask, steps made).

    The same forward passes as `generate`'s continuation: the newest token, the whole 2-D mask and the cache, each
    row's position counted from its mask (as `generate` counts it: padding is not a position). What it leaves out is `generate`'s per-step work around them: the float32 copy of the
    (rows x 262k) logits and the argmax over that copy (the argmax of the bf16 logits is the same token, a bf16 to
    float32 cast being exact), the logits processors and stopping criteria a greedy batch does not need, and the
    set-up of a new `generate` call each time rows are dropped. A finished row is fed padding, as `generate` does."""
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    made = 0
    while made < limit:
        out = model(
            input_ids=ids[:, -1:],
            attention_mask=mask,
            position_ids=mask.sum(dim=-1, keepdim=True) - 1,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        token = first_argmax(out.logits[:, -1])
        token = token.masked_fill(done, pad)
        ids = torch.cat([ids, token[:, None]], dim=-1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        made += 1
        now = stepper.advance(token.tolist(), live)
        if all(now) or (end_at is not None and sum(now) >= end_at):
            break
        done = torch.tensor(now, dtype=torch.bool, device=ids.device)
    return ids, mask, made


def _bucketed_prefill(
    model: Any,
    inputs: dict[str, Any],
    gen: Any,
    stepper: TokenStepper,
    images_per_row: list[int] | None,
    reserve: int = 0,
    subset: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, DynamicCache, list[int]] | None:
    """Prefill (and the first token) bucket by bucket, then (ids, mask, joined cache, live rows) of the rows still
    open, in bucket order; None when one bucket would do (or this model's cache cannot be joined): the caller
    prefills the batch whole. `reserve` > 0: each bucket's cache is `hf_cache.preallocated_cache`, and so is the
    joined one (its layers' buffers are rebuilt with that many free positions). `subset`: only these rows (indices
    into `inputs` and `stepper.rows`), prefilled even when they make one bucket (the caller checked `joinable`)."""
    all_lengths = inputs["attention_mask"].sum(dim=1).tolist()
    chosen = list(range(len(all_lengths))) if subset is None else subset
    plan = [[chosen[k] for k in b] for b in plan_buckets([all_lengths[i] for i in chosen])]
    if subset is None and (len(plan) < 2 or not joinable(model)):
        return None
    per_row = images_per_row or [0] * len(all_lengths)
    parts = [bucket_inputs(inputs, b, per_row) for b in plan]
    if any(p is None for p in parts):
        return None
    one = copy.deepcopy(gen)
    one.max_new_tokens = 1
    seqs, masks, caches, keep = [], [], [], []
    for bucket, part in zip(plan, parts):
        assert part is not None
        ids, mask = part.pop("input_ids"), part.pop("attention_mask")
        cache = preallocated_cache(model, reserve) if reserve else None
        if cache is not None:
            part["cache"] = cache
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
