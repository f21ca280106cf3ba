"""Length-bucketed prefill for greedy transformers batches: no row's prompt is padded to the longest of the batch.

A batch of 32 prompts of 120-260 tokens, padded to 260, spends a third of its prefill on padding. Here the rows are
prefilled in buckets of similar length (each padded only to its own longest), and their KV caches are then joined,
left-padded to one length, into one batch that decodes together: decoding keeps the whole batch (a decode step costs
about the same at 8 rows as at 32, so splitting the decode would lose more than the padding costs), and padding in
the cache costs only attention over a few masked positions. Bucket boundaries minimise padded tokens plus a fixed
cost per extra `generate` call (`plan_buckets`).

The join is exact: a left-padded row's real positions see the same keys, values and positions (rebuilt from the
attention mask by `generate`) as in one batch padded to the longest prompt; sliding-window layers keep their last
`window - 1` positions, right-aligned alike in every bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

# One more bucket costs one more `generate` call (its set-up, a first decode step of its own) and the cache join;
# on Gemma 3 270M on 2 cores that is worth about this many prompt tokens of prefill (for larger models, where a
# token costs more, it is worth fewer: this errs towards fewer buckets).
BUCKET_OVERHEAD_TOKENS = 64


def plan_buckets(lengths: Sequence[int], overhead: int = BUCKET_OVERHEAD_TOKENS) -> list[list[int]]:
    """Row indices grouped into buckets of similar length, shortest first, minimising the prefill's padded tokens
    (rows x longest, summed over buckets) plus `overhead` per bucket (an exact dynamic programme over the sorted
    lengths: a bucket is always a run of consecutive lengths)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest plan for the j shortest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + overhead + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out: list[list[int]] = []
    j = n
    while j > 0:
        out.append(order[cut[j] : j])
        j = cut[j]
    return out[::-1]


def joinable(model: Any) -> bool:
    """Whether this model's `DynamicCache` holds only plain and sliding-window layers, which `join_caches` pads."""
    try:
        cache = DynamicCache(config=model.config)
    except (TypeError, ValueError, AttributeError):
        return False
    return bool(cache.layers) and all(type(x) in (DynamicLayer, DynamicSlidingWindowLayer) for x in cache.layers)


def bucket_inputs(inputs: dict[str, Any], rows: list[int], images_per_row: Sequence[int]) -> dict[str, Any] | None:
    """The batch's tensors for `rows` only, cut to the longest of them (rows are left-padded); `pixel_values` keep
    those rows' images. None if a tensor's layout is not one this knows."""
    mask = inputs["attention_mask"]
    width = mask.shape[1]
    keep = int(mask[rows].sum(dim=1).max())
    index = torch.tensor(rows, device=mask.device)
    out: dict[str, Any] = {}
    for name, value in inputs.items():
        if name == "pixel_values":
            starts = [sum(images_per_row[:r]) for r in range(len(images_per_row))]
            picks = [k for r in rows for k in range(starts[r], starts[r] + images_per_row[r])]
            out[name] = value[torch.tensor(picks, dtype=torch.long, device=value.device)] if picks else value[:0]
        elif torch.is_tensor(value) and value.dim() == 2 and tuple(value.shape) == (mask.shape[0], width):
            out[name] = value[index.to(value.device), width - keep :]
        else:
            return None
    if "pixel_values" in out and not any(images_per_row[r] for r in rows):
        del out["pixel_values"]  # a text-only bucket of a mixed batch: the model takes no empty image tensor
    return out


def _left_pad(t: torch.Tensor, size: int, value: float | int = 0) -> torch.Tensor:
    """`t` left-padded with `value` along dim -2 (cache tensors) or -1 (ids, masks) to `size`."""
    dim = -2 if t.dim() == 4 else -1
    missing = size - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_full(shape, value), t], dim=dim)


def join_caches(caches: list[DynamicCache], keep: list[list[int]]) -> DynamicCache:
    """One cache of the `keep` rows of each bucket's cache, in that order, every layer left-padded with zeros to
    the longest (the attention mask hides the padding). Sliding-window layers hold at most `window - 1`
    positions, the last ones, so they are padded to that and report the joined length as their position count."""
    total = max(c.get_seq_length() for c in caches)
    out = caches[0]
    layers: list[Any] = list(out.layers)  # `joinable` checked they are DynamicLayer / DynamicSlidingWindowLayer
    for li, layer in enumerate(layers):
        size = min(total, layer.sliding_window - 1) if isinstance(layer, DynamicSlidingWindowLayer) else total
        keys, values = [], []
        for cache, rows in zip(caches, keep):
            if not rows:
                continue
            src: Any = cache.layers[li]
            pick = torch.tensor(rows, device=src.keys.device)
            keys.append(_left_pad(src.keys[pick], size))
            values.append(_left_pad(src.values[pick], size))
        layer.keys, layer.values = torch.cat(keys), torch.cat(values)
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = total
    return out


def join_rows(seqs: list[torch.Tensor], masks: list[torch.Tensor], keep: list[list[int]], pad_id: int) -> Any:
    """(ids, attention mask) of the `keep` rows of each bucket, left-padded to the longest, in bucket order."""
    width = max(s.shape[1] for s in seqs)
    ids = [_left_pad(s[rows], width, pad_id) for s, rows in zip(seqs, keep) if rows]
    mask = [_left_pad(m[rows], width, 0) for m, rows in zip(masks, keep) if rows]
    return torch.cat(ids), torch.cat(mask)


def trim_left(ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache, at: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the leading positions no row attends to (every row's mask 0 there: the left padding of rows that have
    since left the batch) from `ids`, `mask` and every cache layer, once there are at least `at` of them; returns
    the (ids, mask) to continue with. The same batch as one joined with less padding (`join_caches`): full layers
    lose those positions, sliding-window layers only the ones beyond the new length (they hold the last
    `window - 1`), and report the new length as their position count."""
    used = mask.any(dim=0).nonzero()
    lead = int(used[0]) if used.numel() else 0
    if lead < at:
        return ids, mask
    # The cache holds every position but the newest token's (which the next step feeds), so it is one shorter.
    total = mask.shape[1] - 1 - lead
    layers: list[Any] = list(cache.layers)  # `joinable` checked they are DynamicLayer / DynamicSlidingWindowLayer
    for layer in layers:
        keys, values = layer.keys, layer.values
        if keys is None or keys.dim() != 4:
            continue
        cut = keys.shape[-2] - min(keys.shape[-2], total)
        if cut:
            layer.keys, layer.values = keys[:, :, cut:], values[:, :, cut:]
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = total
    return ids[:, lead:], mask[:, lead:]
