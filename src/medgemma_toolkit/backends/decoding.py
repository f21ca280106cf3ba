"""Per-row bookkeeping while a batch decodes: stop strings, per-request token limits, cancellation, deltas.

Kept apart from any engine so every backend applies stop strings and streaming the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import DeltaCallback, FinishReason, GenerationRequest
from .gemma_format import strip_control


@dataclass
class RowState:
    index: int  # position of the request in the caller's list
    request: GenerationRequest
    text: str = ""  # visible text so far (stop strings cut off)
    emitted: int = 0  # characters of `text` already reported as deltas
    tokens: int = 0
    finish: FinishReason | None = None


@dataclass
class RowTracker:
    """Feed it each row's full decoded text after every step; it decides when rows are done."""

    rows: list[RowState]
    on_delta: DeltaCallback | None = None

    def update(self, row: RowState, raw_text: str, n_tokens: int, hit_eos: bool, stable_chars: int | None = None) -> None:
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
