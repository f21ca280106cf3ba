"""A preallocated KV cache for greedy transformers batches: each step writes its keys and values into a buffer
instead of growing the cache by `torch.cat`.

transformers' `DynamicCache` concatenates the whole cache with the new position at every layer and step: a copy of
everything cached so far, about 763 us per layer-step on the demo's 32-row eval batches, against 6 us to write the
new position into a buffer that already has room. Its `StaticCache` avoids the copy but attends over its whole fixed
length every step (the positions not yet written masked), changing the attention's shapes and so its float
rounding, and its rows cannot be dropped as they finish (`hf_decode.decode_pruned` does that between steps).

These layers subclass transformers' dynamic ones and keep their contract: `keys`/`values` are views of exactly the
positions the dynamic layer would hold, `update` returns tensors of exactly the shapes it would return, so masks,
attention and every logit are the same as the dynamic cache's (tests/test_hf_cache.py compares the tokens). Only
where the positions live changes: a buffer with `reserve` free positions after them, refilled by `update` and
regrown (one copy) only when the reserve runs out. Whatever replaces `keys` wholesale (row selection when rows
finish, the bucket join, `crop`) goes through the property setter, which copies into a new buffer with room again.

Sliding-window layers keep at most `window - 1` positions, the last ones, like `DynamicSlidingWindowLayer`; their
buffer holds those plus the reserve, and when the reserve is used up the live positions move to its front (one
copy of `window - 1` positions per `reserve` steps), so memory stays bounded by the window whatever the length.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

# Free positions kept after the cached ones: this many decode steps write in place before a buffer is regrown (full
# layers) or compacted (sliding layers). `preallocated_cache` uses min(max_new_tokens, this).
DEFAULT_RESERVE = 256


class _Buffer:
    """Keys and values of one layer in buffers of shape (batch, heads, capacity, head size); positions
    `start:end` are the live ones."""

    __slots__ = ("keys", "values", "start", "end")

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        n = keys.shape[-2]
        capacity = max(capacity, n)
        self.keys = keys.new_empty((*keys.shape[:-2], capacity, keys.shape[-1]))
        self.values = values.new_empty((*values.shape[:-2], capacity, values.shape[-1]))
        self.keys[:, :, :n] = keys
        self.values[:, :, :n] = values
        self.start, self.end = 0, n

    @property
    def room(self) -> int:
        return self.keys.shape[-2] - self.end

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        k = keys.shape[-2]
        self.keys[:, :, self.end : self.end + k] = keys
        self.values[:, :, self.end : self.end + k] = values
        self.end += k

    def compact(self) -> None:
        """Move the live positions to the front of the buffer (a copy of the live ones only)."""
        n = self.end - self.start
        if self.start:
            self.keys[:, :, :n] = self.keys[:, :, self.start : self.end].clone()
            self.values[:, :, :n] = self.values[:, :, self.start : self.end].clone()
        self.start, self.end = 0, n

    def live(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[:, :, self.start : self.end], self.values[:, :, self.start : self.end]


class _BufferedKeys:
    """`keys`/`values` as views of the layer's buffer; assigning them (row selection, join, crop, reset) copies into
    a new buffer with `reserve` free positions, or clears it (None or an empty tensor, as transformers' layers do)."""

    reserve: int
    _buf: _Buffer | None
    _pending: torch.Tensor | None  # keys assigned before their values: the buffer is built once both are known

    def _capacity(self, n: int) -> int:
        """Buffer positions for `n` live ones."""
        return n + self.reserve

    def _init_buffer(self, reserve: int) -> None:
        self.reserve = max(1, int(reserve))
        self._buf = None
        self._pending = None

    @property
    def keys(self) -> Any:
        return self._view(0)

    @keys.setter
    def keys(self, value: Any) -> None:
        self._assign(0, value)

    @property
    def values(self) -> Any:
        return self._view(1)

    @values.setter
    def values(self, value: Any) -> None:
        self._assign(1, value)

    def _view(self, which: int) -> Any:
        buf = self.__dict__.get("_buf")
        if buf is None:
            return self.__dict__.get("_empty")
        return buf.live()[which]

    def _assign(self, which: int, value: Any) -> None:
        if "_buf" not in self.__dict__:  # transformers' __init__ assigns before ours has run
            self.__dict__["_buf"], self.__dict__["_pending"] = None, None
        if value is None or value.dim() != 4 or value.numel() == 0:
            self._buf, self._pending = None, None
            self.__dict__["_empty"] = value
            return
        if which == 0:  # keys come first (every assignment in transformers and hf_buckets sets both, keys first)
            self._pending = value
            return
        keys, self._pending = self._pending, None
        if keys is None:
            raise RuntimeError("cache values assigned without their keys")
        self._buf = _Buffer(keys, value, self._capacity(keys.shape[-2]))


class PreallocatedLayer(_BufferedKeys, DynamicLayer):
    """A full-attention layer: the same positions as `DynamicLayer`, written into a buffer."""

    def __init__(self, reserve: int = DEFAULT_RESERVE) -> None:
        self._init_buffer(reserve)
        super().__init__()

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        buf = self._buf
        if buf is None:
            self._buf = buf = _Buffer(key_states, value_states, self._capacity(key_states.shape[-2]))
        elif buf.room < key_states.shape[-2]:
            old_k, old_v = buf.live()
            full_k, full_v = torch.cat([old_k, key_states], dim=-2), torch.cat([old_v, value_states], dim=-2)
            self._buf = buf = _Buffer(full_k, full_v, self._capacity(full_k.shape[-2]))
        else:
            buf.append(key_states, value_states)
        return buf.live()


class PreallocatedSlidingWindowLayer(_BufferedKeys, DynamicSlidingWindowLayer):
    """A sliding-window layer: returns and keeps the same positions as `DynamicSlidingWindowLayer` (this step's
    keys after at most `window - 1` earlier ones), in a buffer of `window - 1 + reserve` positions."""

    def __init__(self, sliding_window: int, reserve: int = DEFAULT_RESERVE) -> None:
        self._init_buffer(reserve)
        super().__init__(sliding_window=sliding_window)

    def _capacity(self, n: int) -> int:
        return max(n, self.sliding_window - 1) + self.reserve

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.record_past:  # assisted decoding's bookkeeping: transformers' own layer does it
            raise RuntimeError("PreallocatedSlidingWindowLayer does not record past states")
        self.cumulative_length += key_states.shape[-2]
        keep = self.sliding_window - 1
        k = key_states.shape[-2]
        buf = self._buf
        if buf is not None and buf.room < k:
            buf.compact()
        if buf is None or buf.room < k:
            # The first call (a prompt), or more new positions than the buffer has room for: the full states are
            # built once, and the last `keep` of them start a new buffer.
            if buf is None:
                full_k, full_v = key_states, value_states
            else:
                old_k, old_v = buf.live()
                full_k, full_v = torch.cat([old_k, key_states], dim=-2), torch.cat([old_v, value_states], dim=-2)
            self._buf = _Buffer(full_k[:, :, -keep:], full_v[:, :, -keep:], self._capacity(keep))
            return full_k, full_v
        buf.append(key_states, value_states)
        full = buf.live()
        buf.start = max(buf.start, buf.end - keep)
        return full


def preallocated_cache(model: Any, reserve: int = DEFAULT_RESERVE) -> DynamicCache | None:
    """A `DynamicCache` for `model` whose layers write into preallocated buffers (`reserve` free positions each),
    or None when the model's cache has layers other than plain and sliding-window ones (then `generate` builds its
    own)."""
    try:
        cache = DynamicCache(config=model.config)
    except (TypeError, ValueError, AttributeError):
        return None
    layers: list[Any] = []
    for layer in cache.layers:
        if type(layer) is DynamicLayer:
            layers.append(PreallocatedLayer(reserve))
        elif type(layer) is DynamicSlidingWindowLayer:
            layers.append(PreallocatedSlidingWindowLayer(layer.sliding_window, reserve))
        else:
            return None
    if not layers:
        return None
    cache.layers = layers
    return cache


def kv_bytes(config: Any, rows: int, tokens: int, itemsize: int) -> int:
    """Bytes of the keys and values `rows` rows of `tokens` positions hold in a dynamic cache of this (text) model
    config: every full-attention layer all positions, a sliding-window layer at most `window - 1` (the last ones;
    the current step's keys join them while it runs)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(cfg.num_hidden_layers)
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * layers
    window = getattr(cfg, "sliding_window", None) or tokens
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    positions = sum(min(tokens, window - 1) if kind == "sliding_attention" else tokens for kind in types[:layers])
    return 2 * rows * heads * head_dim * itemsize * positions
