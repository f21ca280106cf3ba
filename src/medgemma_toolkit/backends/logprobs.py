"""Per-token log-probabilities in OpenAI's shape, computed one decoding step at a time.

Why per step: keeping every step's raw logits until the end (transformers' `output_logits`) holds steps x vocabulary
floats per row (262k words: ~1 MB a token, ~2 GB for a 2,000-token answer). Each engine instead hands this module one
step's log-softmax and keeps only the chosen token's value and the top-k alternatives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Entry = dict[str, Any]  # {"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}, ...]}
LogprobSink = Callable[[list[Entry]], None]


def _one(text: str, logprob: float, raw: bytes | None) -> Entry:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8") if raw is None else raw)}


def entry(
    decode: Callable[[int], str],
    token: int,
    logprob: float,
    top_ids: Sequence[int],
    top_values: Sequence[float],
    raw: Callable[[int], bytes | None] | None = None,
) -> Entry:
    """One generated token's entry: its text, log-probability and the `top_ids` alternatives (most likely first).
    `raw`: a token's own bytes where its text cannot hold them (a piece of a UTF-8 character decodes as U+FFFD;
    OpenAI's `bytes` field lets a client join such pieces again)."""

    def one(t: int, v: float) -> Entry:
        return _one(decode(t), v, None if raw is None else raw(t))

    out = one(token, logprob)
    out["top_logprobs"] = [one(int(t), float(v)) for t, v in zip(top_ids, top_values)]
    return out


def log_softmax_np(logits: Any) -> Any:
    """fp32 log-softmax of one step's logits (numpy), for engines that hand out a raw logits buffer (llama.cpp)."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float32)
    m = float(x.max())
    return x - (m + float(np.log(np.exp(x - m).sum())))


def top_np(lp: Any, k: int) -> tuple[list[int], list[float]]:
    """The `k` most likely token ids of a log-probability vector (numpy) and their values, most likely first."""
    import numpy as np

    if k <= 0:
        return [], []
    ids = np.argpartition(-lp, k - 1)[:k]
    ids = ids[np.argsort(-lp[ids], kind="stable")]
    return [int(i) for i in ids], [float(lp[i]) for i in ids]


def legacy(entries: list[Entry], offset: int = 0) -> dict[str, Any]:
    """The legacy `/v1/completions` shape: `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`;
    `offset` is the character position of the first token in the whole answer."""
    tokens, values, tops, offsets = [], [], [], []
    pos = offset
    for e in entries:
        tokens.append(e["token"])
        values.append(e["logprob"])
        tops.append({t["token"]: t["logprob"] for t in e.get("top_logprobs", [])})
        offsets.append(pos)
        pos += len(e["token"])
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
