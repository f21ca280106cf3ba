"""Split MedGemma's thinking output into (thought, answer).

Thinking-capable MedGemma models emit `<unused94>thought\\n ... <unused95>answer`. A thought must never be shown as
the answer, even when thinking was not requested, so the split always runs; an unterminated thought (generation cut
off) yields an empty answer rather than leaking the reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass

THOUGHT_OPEN = "<unused94>"
THOUGHT_CLOSE = "<unused95>"
THINK_INSTRUCTION = "SYSTEM INSTRUCTION: think silently if needed."


@dataclass(frozen=True)
class Split:
    thought: str | None
    answer: str


def _strip_label(thought: str) -> str:
    # The model labels the block "thought" right after the open marker.
    t = thought.lstrip()
    if t.startswith("thought"):
        t = t[len("thought") :]
    return t.strip()


def split_thought(raw: str) -> Split:
    """Return the thought (None when absent) and the answer.

    >>> split_thought("<unused94>thought\\nLook at the heart.<unused95>Cardiomegaly.")
    Split(thought='Look at the heart.', answer='Cardiomegaly.')
    """
    start = raw.find(THOUGHT_OPEN)
    if start < 0:
        # A stray close marker (thought began before the visible text) still hides what precedes it.
        end = raw.find(THOUGHT_CLOSE)
        if end < 0:
            return Split(None, raw.strip())
        return Split(_strip_label(raw[:end]), raw[end + len(THOUGHT_CLOSE) :].strip())
    before = raw[:start]
    rest = raw[start + len(THOUGHT_OPEN) :]
    end = rest.find(THOUGHT_CLOSE)
    if end < 0:
        return Split(_strip_label(rest), before.strip())
    answer = (before + rest[end + len(THOUGHT_CLOSE) :]).strip()
    return Split(_strip_label(rest[:end]), answer)


class StreamSplitter:
    """Incremental `split_thought` for streamed text: routes each delta to the thought or the answer.

    Holds back a partial marker at the end of a delta until the next one shows whether it completes.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._in_thought = False
        self._seen_label = False

    def feed(self, delta: str) -> list[tuple[str, str]]:
        """Return (channel, text) pieces, channel being "thought" or "answer"."""
        self._buf += delta
        out: list[tuple[str, str]] = []
        while self._buf:
            marker = THOUGHT_CLOSE if self._in_thought else THOUGHT_OPEN
            idx = self._buf.find(marker)
            stray = -1 if self._in_thought else self._buf.find(THOUGHT_CLOSE)
            if stray >= 0 and (idx < 0 or stray < idx):
                # A close marker with no open one: text already streamed can't be recalled; drop the marker.
                self._emit(out, self._buf[:stray])
                self._buf = self._buf[stray + len(THOUGHT_CLOSE) :]
                continue
            if idx >= 0:
                self._emit(out, self._buf[:idx])
                self._buf = self._buf[idx + len(marker) :]
                self._in_thought = not self._in_thought
                continue
            keep = _partial_suffix(self._buf, marker)
            if not self._in_thought:
                keep = max(keep, _partial_suffix(self._buf, THOUGHT_CLOSE))
            if self._in_thought and not self._seen_label:
                keep = max(keep, _partial_suffix(self._buf, "thought\n"))
            ready, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
            self._emit(out, ready)
            break
        return out

    def flush(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self._emit(out, self._buf)
        self._buf = ""
        return out

    def _emit(self, out: list[tuple[str, str]], text: str) -> None:
        if not text:
            return
        if self._in_thought:
            if not self._seen_label:
                stripped = text.lstrip()
                if stripped.startswith("thought"):
                    text = stripped[len("thought") :].lstrip("\n")
                self._seen_label = bool(stripped) or self._seen_label
            if text:
                out.append(("thought", text))
        else:
            out.append(("answer", text))


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
