"""Word and character error rates of transcripts against references (jiwer), with bootstrap intervals.

Normalisation (both sides, before scoring) is Google's fine-tuning notebook's `normalize_text`
(Google-Health/medasr@f19ff2c, notebooks/fine_tune_with_hugging_face.ipynb): lower case, `</s>` removed, every
character other than a-z, 0-9 and white space removed (so "patient's" -> "patients", "x-ray" -> "xray"), runs of
white space collapsed, ends stripped. Numbers and abbreviations are compared as written. WER and CER are corpus-level: all errors (substitutions + deletions +
insertions) over all reference words (characters), as jiwer computes over a list; their 95% intervals are
percentile bootstraps over recordings (`stats.bootstrap_ratio`, 1000 resamples, seed 0).

Data: a folder of recordings, each with its reference beside it as `<stem>.txt`, or a CSV/TSV/JSONL file with
`audio` (a path, relative to the file) and `text` (the reference) on each row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..rowfile import read_rows
from ..stats import bootstrap_ratio

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus")
NORMALISATION = "Google's MedASR fine-tuning notebook: lower case, </s> removed, only [a-z0-9 ] kept, spaces collapsed"


def normalise(text: str) -> str:
    """The notebook's normalisation (see the module docstring)."""
    t = text.lower().replace("</s>", "")
    t = re.sub(r"[^a-z0-9\s]", "", t)
    return re.sub(r"\s+", " ", t).strip()


@dataclass(frozen=True)
class Pair:
    audio: Path
    reference: str


def read_pairs(data: str | Path) -> list[Pair]:
    """(recording, reference) pairs from a folder (`x.wav` + `x.txt`) or a CSV/TSV/JSONL (`audio`, `text`)."""
    p = Path(data)
    if p.is_dir():
        pairs = []
        for a in sorted(f for f in p.iterdir() if f.suffix.lower() in AUDIO_SUFFIXES):
            ref = a.with_suffix(".txt")
            if not ref.is_file():
                raise BadInput(f"{a.name}: no reference {ref.name} beside it")
            pairs.append(Pair(a, ref.read_text(encoding="utf-8")))
    elif p.is_file():
        pairs = []
        for line in read_rows(p):
            if line.error or not isinstance(line.row, dict):
                raise BadInput(f"{line.where}: {line.error or 'not an object'}")
            audio, text = line.row.get("audio"), line.row.get("text")
            if not isinstance(audio, str) or not audio or not isinstance(text, str):
                raise BadInput(f"{line.where}: needs an `audio` path and a `text` reference")
            pairs.append(Pair(p.parent / audio, text))
    else:
        raise BadInput(f"{data}: no such folder or file")
    if not pairs:
        raise BadInput(f"{data}: no recordings ({', '.join(AUDIO_SUFFIXES)}) found")
    return pairs


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, Any]:
    """Corpus WER and CER after `normalise`, with 95% bootstrap intervals over recordings and the error counts."""
    import jiwer

    if len(references) != len(hypotheses) or not references:
        raise BadInput("scoring needs one hypothesis per reference")
    refs = [normalise(r) for r in references]
    hyps = [normalise(h) for h in hypotheses]
    word_err, words, char_err, chars = [], [], [], []
    totals = {"substitutions": 0, "deletions": 0, "insertions": 0}
    for r, h in zip(refs, hyps, strict=True):
        n_words = len(r.split())
        if n_words == 0:
            raise BadInput("a reference is empty after normalisation")
        w = jiwer.process_words(r, h)
        c = jiwer.process_characters(r, h)
        word_err.append(w.substitutions + w.deletions + w.insertions)
        words.append(n_words)
        char_err.append(c.substitutions + c.deletions + c.insertions)
        chars.append(len(r))
        for k in totals:
            totals[k] += getattr(w, k)
    return {
        "wer": sum(word_err) / sum(words),
        "wer_ci95": list(bootstrap_ratio(word_err, words)),
        "cer": sum(char_err) / sum(chars),
        "cer_ci95": list(bootstrap_ratio(char_err, chars)),
        "recordings": len(refs),
        "reference_words": sum(words),
        **totals,
        "normalisation": NORMALISATION,
    }
