"""Per-row bookkeeping while a batch decodes: stop strings, per-request token limits, cancellation, deltas.

Kept apart from any engine so every backend applies stop strings and streaming the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..prompts.gemma_format import strip_control
from .base import DeltaCallback, FinishReason, GenerationRequest


@dataclass
class RowState:
    index: int  # position of the request in the caller's list
    request: GenerationRequest
    text: str = ""  # visible text so far (stop strings cut off)
    emitted: int = 0  # characters of `text` already reported as deltas
    tokens: int = 0
    finish: FinishReason | None = None
    logprobs: list[dict[str, Any]] | None = None  # per generated token, when the request asked (OpenAI's shape)


@dataclass
class RowTracker:
    """Feed it each row's full decoded text after every step; it decides when rows are done."""

    rows: list[RowState]
    on_delta: DeltaCallback | None = None

    def update(
        self, row: RowState, raw_text: str, n_tokens: int, hit_eos: bool, stable_chars: int | None = None
    ) -> None:
        """`stable_chars`: how much of `raw_text` later tokens can no longer change (None = all of it); a trailing
        run of byte-fallback tokens can turn already-decoded characters into U+FFFD, so it is never streamed early."""
        if row.finish is not None:
            return
        row.tokens = n_tokens
        text = strip_control(raw_text)
        stops = row.request.params.stop
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            text, row.finish = text[:cut], "stop"
        elif hit_eos:
            row.finish = "stop"
        elif n_tokens >= row.request.params.max_new_tokens:
            row.finish = "length"
        elif row.request.cancelled is not None and row.request.cancelled():
            row.finish = "cancelled"
        row.text = text
        limit = len(text) if stable_chars is None else len(strip_control(raw_text[:stable_chars]))
        self._emit(row, final=row.finish is not None, limit=limit)

    def close(self, row: RowState, reason: FinishReason) -> None:
        """Finish a row the engine stopped on its own; everything held back is sent."""
        if row.finish is None:
            row.finish = reason
            self._emit(row, final=True)

    def _emit(self, row: RowState, final: bool, limit: int | None = None) -> None:
        if self.on_delta is None:
            row.emitted = len(row.text)
            return
        upto = len(row.text) if final or limit is None else min(len(row.text), limit)
        if not final:
            # Hold back a possible beginning of a stop string, and trailing replacement chars: a UTF-8 character
            # split across tokens decodes as U+FFFD until it completes, and text once streamed cannot be recalled.
            # (Engines whose earlier text can change, like byte-fallback runs, pass `stable_chars` as well.)
            hold = max((_partial_suffix(row.text, s) for s in row.request.params.stop), default=0)
            upto -= hold
            while upto > row.emitted and row.text[upto - 1] == "\ufffd":
                upto -= 1
        if upto > row.emitted:
            self.on_delta(row.index, row.text[row.emitted : upto])
            row.emitted = upto


def _partial_suffix(text: str, marker: str) -> int:
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


@dataclass
class IncrementalDetokenizer:
    """The text of a growing token list, decoding only the newest tokens at each step.

    A full re-decode per step costs O(length) per row, so a batch of 32 x 512 tokens spends more host time per
    step than a GPU spends decoding. Instead a short window, starting at an already-committed token, is decoded
    with the new ones, so merges and spacing come out as in a full decode (the approach of TGI and vLLM, with one
    decode per step). Text is committed only when it grows and does not end in U+FFFD (an unfinished UTF-8
    character), so committed text never changes later. A run of byte-fallback tokens ("<0xE2>") decodes as a group,
    all of it U+FFFD if any byte is invalid, so nothing is committed while the newest token is one."""

    decode: Callable[[list[int]], str]
    byte_ids: frozenset[int] = frozenset()
    window: int = 8  # tokens decoded per step at most (plus those held back) before the window moves on
    ids: list[int] = field(default_factory=list)
    text: str = ""  # committed text: what a full decode of ids[:read] gives
    read: int = 0  # tokens whose text is committed
    start: int = 0  # window start: a committed token that is not part of a byte-fallback run
    _done: int = 0  # characters of decode(ids[start:read])

    def push(self, token: int) -> str:
        """Append one token; return the newly committed text ("" while it is held back)."""
        self.ids.append(token)
        if token in self.byte_ids:
            return ""
        new_text = self.decode(self.ids[self.start :])
        if len(new_text) <= self._done or new_text.endswith("\ufffd"):
            return ""
        delta = new_text[self._done :]
        self.text += delta
        self.read = len(self.ids)
        self._done = len(new_text)
        if self.read - self.start > self.window:  # restart the window at the last committed (non-byte) token
            self.start = self.read - 1
            self._done = len(self.decode(self.ids[self.start : self.read]))
        return delta


class TokenStepper:
    """The host-side work of one decoding batch, called once per generated token with each row's newest token.

    Per step it costs a few small decodes per row (`IncrementalDetokenizer`) and, when nothing streams and no stop
    string is set, no decoding at all: text is then decoded once, when a row finishes."""

    def __init__(
        self,
        rows: list[RowState],
        on_delta: DeltaCallback | None,
        decode: Callable[[list[int]], str],
        stop_ids: set[int],
        byte_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.rows = rows
        self.tracker = RowTracker(rows, on_delta)
        self.decode = decode
        self.stop_ids = stop_ids
        self.need_text = on_delta is not None or any(r.request.params.stop for r in rows)
        self.dets = [IncrementalDetokenizer(decode, byte_ids) for _ in rows]

    def advance(self, tokens: list[int], live: list[int] | None = None) -> list[bool]:
        """Feed each row its newest token (`tokens[k]` is row `live[k]`'s; default: every row, in order); return
        which of those rows are done."""
        live = list(range(len(self.rows))) if live is None else live
        for i, token in zip(live, tokens):
            if self.rows[i].finish is None:
                self.step(i, token)
        return [self.rows[i].finish is not None for i in live]

    def step(self, i: int, token: int) -> None:
        """One new token for row i: stop tokens, per-row limits, stop strings, cancellation, deltas."""
        row, det = self.rows[i], self.dets[i]
        if token in self.stop_ids:
            self.tracker.update(row, self.decode(det.ids), len(det.ids), True)
            return
        if self.need_text:
            det.push(token)
        else:
            det.ids.append(token)
        n = len(det.ids)
        cancelled = row.request.cancelled is not None and row.request.cancelled()
        final = n >= row.request.params.max_new_tokens or (cancelled and not self.need_text)
        self.tracker.update(row, self.decode(det.ids) if final else det.text, n, False)

    def finish(self, sequences: list[list[int]]) -> None:
        """After generation: feed tokens the per-step hook did not see, then close rows still open ("length")."""
        for i, (row, seq) in enumerate(zip(self.rows, sequences)):
            for token in seq[len(self.dets[i].ids) :]:
                if row.finish is None:
                    self.step(i, token)
            if row.finish is None:
                self.tracker.update(row, self.decode(self.dets[i].ids), len(self.dets[i].ids), False)
            if row.finish is None:
                self.tracker.close(row, "length")
