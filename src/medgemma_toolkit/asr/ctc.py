"""Word timestamps from CTC frames: which frames emitted each word, in seconds.

A CTC model emits one token (or the blank) per output frame; a token's emission is a run of equal frame ids. The
text is what the tokenizer decodes from the collapsed ids (`LasrTokenizer._decode`: group repeats, drop the blank,
which is the pad token); here the same runs are kept with their frame spans. A word starts at a piece that begins
with "▁" (SentencePiece's word boundary, which MedASR's tokenizer uses). transformers' pipeline computes word
offsets only for tokenizers with `output_char_offsets` (Wav2Vec2's), not for `lasr_ctc`: hence this module.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass

WORD_START = "▁"


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds from the start of the recording
    end: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Emission:
    """One collapsed token: its id and the frames [first, last] of its run."""

    token: int
    first: int
    last: int


def emissions(frames: Sequence[int], blank: int) -> list[Emission]:
    """Collapse per-frame ids the CTC way (repeats merge, the blank separates and is dropped)."""
    out: list[Emission] = []
    prev = None
    for t, tok in enumerate(frames):
        if tok == prev and out and out[-1].token == tok and out[-1].last == t - 1:
            out[-1] = Emission(tok, out[-1].first, t)
        elif tok != blank:
            out.append(Emission(tok, t, t))
        prev = tok
    return out


def words_from_frames(
    frames: Sequence[int],
    *,
    blank: int,
    piece: Callable[[int], str],
    decode: Callable[[list[int]], str],
    seconds_per_frame: float,
    separators: Collection[int] = (),
) -> list[Word]:
    """Group the emissions into words at "▁" pieces; each word's text is the tokenizer's decoding of its ids.
    `separators` (special tokens such as `</s>`, which the transcript's `text` drops) end a word and are dropped."""
    groups: list[list[Emission]] = []
    open_word = False
    for em in emissions(frames, blank):
        if em.token in separators:
            open_word = False
        elif not open_word or piece(em.token).startswith(WORD_START):
            groups.append([em])
            open_word = True
        else:
            groups[-1].append(em)
    words = []
    for g in groups:
        text = decode([e.token for e in g]).strip()
        if text:
            words.append(
                Word(text, round(g[0].first * seconds_per_frame, 3), round((g[-1].last + 1) * seconds_per_frame, 3))
            )
    return words


def segments_from_words(words: Sequence[Word], max_gap: float = 1.0) -> list[dict[str, object]]:
    """Runs of words with pauses shorter than `max_gap` seconds (OpenAI's `verbose_json` segment shape)."""
    segs: list[list[Word]] = []
    for w in words:
        if segs and w.start - segs[-1][-1].end < max_gap:
            segs[-1].append(w)
        else:
            segs.append([w])
    return [
        {"id": i, "start": s[0].start, "end": s[-1].end, "text": " ".join(w.text for w in s)}
        for i, s in enumerate(segs)
    ]
