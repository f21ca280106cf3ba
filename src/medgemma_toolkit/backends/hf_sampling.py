"""One transformers logits processor that owns a decoding step: log-probabilities, the JSON-schema mask, and the
choice of token (greedy, or sampled with each row's own random generator).

Why one processor and greedy `generate`: transformers samples a whole batch from the global RNG, so a seeded row's
text depended on its batch-mates and rows with different seeds could not share a batch (`n` choices of one request
need different seeds). Here each row samples from its own `torch.Generator` and the processor returns scores that
are -inf everywhere but the chosen token, so `generate` runs greedy (argmax) and picks exactly that token. The
log-probabilities are taken first, from the raw fp32 logits (before temperature, top-p or the schema mask), and only
the chosen token's value and the top-k alternatives are kept (`backends.logprobs`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .decoding import RowState
from .logprobs import entry


def row_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A row's random generator: seeded (reproducible whatever its batch-mates) or from OS entropy."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return g


def warp(scores: torch.Tensor, temperature: float, top_p: float, top_k: int | None) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) over a batch of fp32 scores, as transformers' warpers do."""
    scores = scores / max(temperature, 1e-5)
    if top_k is not None and 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_scores.softmax(dim=-1) > top_p  # keep tokens until the mass before them reaches top_p
        drop[..., 0] = False
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


class StepProcessor:
    """The last logits processor of a batch (see module doc). `constrain`: the schema mask (or None); `sample`: False
    for greedy rows; `decode`: one token id to text, for log-probability entries."""

    def __init__(
        self,
        rows: list[RowState],
        decode: Callable[[int], str],
        constrain: Any = None,
        sample: bool = False,
        device: torch.device | None = None,
        stop_ids: frozenset[int] = frozenset(),
        raw: Callable[[int], bytes | None] | None = None,
    ) -> None:
        self.rows = rows
        self.decode = decode
        self.constrain = constrain
        self.sample = sample
        self.stop_ids = stop_ids  # an end of turn is not a generated token: it gets no entry
        self.raw = raw  # a token's own bytes where its text is U+FFFD (byte-fallback pieces)
        self.tops = [r.request.logprobs for r in rows]
        self.wants_logprobs = any(t is not None for t in self.tops)
        dev = device or torch.device("cpu")
        self.generators = [row_generator(r.request.params.seed, dev) for r in rows] if sample else []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(scores.float(), dim=-1) if self.wants_logprobs else None
        if self.constrain is not None:
            scores = self.constrain(input_ids, scores)
        if self.sample:
            p = self.rows[0].request.params  # a batch shares its sampling settings (TransformersBackend.generate)
            probs = warp(scores.float(), p.temperature, p.top_p, p.top_k).softmax(dim=-1)
            chosen = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
            scores = torch.full_like(scores, float("-inf"))
            scores[torch.arange(len(chosen), device=scores.device), chosen] = 0.0
        else:
            chosen = scores.argmax(dim=-1)  # what greedy `generate` picks from these scores
        if lp is not None:
            self._record(lp, chosen.tolist())
        return scores

    def _record(self, lp: torch.Tensor, chosen: list[int]) -> None:
        """Append each open row's entry for the token chosen this step; stream it to the request's sink."""
        for i, (row, top) in enumerate(zip(self.rows, self.tops)):
            if top is None or row.finish is not None or chosen[i] in self.stop_ids:
                continue
            vals, ids = lp[i].topk(top) if top else (lp[i][:0], lp[i][:0].long())
            e = entry(self.decode, chosen[i], float(lp[i, chosen[i]]), ids.tolist(), vals.tolist(), self.raw)
            if row.logprobs is None:
                row.logprobs = []
            row.logprobs.append(e)
            if row.request.on_logprobs is not None:
                row.request.on_logprobs([e])
