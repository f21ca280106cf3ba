"""Metric conventions for VQA: how an answer is tokenised, which questions count as closed, and how a closed answer
is judged. Chosen per run (`eval --metric-convention`) and recorded in the summary, so a number states the rules it
was computed by.

`toolkit` (the default) is ours: SQuAD-style normalisation (lower case, punctuation and articles dropped, so "X-Ray"
is one token "xray"), bag-of-tokens F1, closed = the release's answer_type CLOSED, a closed answer right when it is
the gold answer (or starts with the gold yes/no).

`multimedeval` follows MultiMedEval (github.com/corentin-ryr/MultiMedEval, `multimedeval/utils.py` `clean_str` and
`multimedeval/task_families.py` `VQA.evaluate` at d9ac283), the harness most published medical VQA numbers come from:
VQA-v2-style cleaning (punctuation becomes a space unless it touches one, so "X-Ray" is "x ray"; number words one to
ten and "none" become digits; articles dropped), answers compared as token *sets*, F1 = 2PR / (P + R + 1e-8); closed
= the gold answer is "yes" or "no" (whatever answer_type says); a closed answer is right when it recalls at least 40%
of the gold's tokens, "not" counting as a token of "no"; an open answer is "correct" when its recall is at least 0.75
(MultiMedEval's open-question accuracy). Written here from that description; tests/test_eval_conventions.py checks it
against MultiMedEval's own functions' outputs on the SLAKE / VQA-RAD sample golds. Not reproduced: its table mapping
apostrophe-less contractions ("dont") to their apostrophe forms, which no medical VQA gold we ship contains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BadInput, lookup
from .metrics import exact_match, token_f1

if TYPE_CHECKING:
    from .kinds import TaskKind


@dataclass(frozen=True)
class VQAScore:
    correct: bool
    score: float  # token F1 under the convention
    closed: bool  # counted as a closed question under the convention


@dataclass(frozen=True)
class VQAConvention:
    name: str
    version: str
    description: str
    source: str

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def score(self, prediction: str | None, gold: str, answer_type: str | None) -> VQAScore:
        if self.name == "multimedeval":
            return _multimedeval_score(prediction, gold)
        return VQAScore(exact_match(prediction, gold), token_f1(prediction, gold), answer_type == "closed")

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "description": self.description, "source": self.source}


# -- MultiMedEval's rules ---------------------------------------------------------------------------------------------
_MME_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_MME_NUMBERS = {
    w: str(i) for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))
} | {"none": "0", "ten": "10"}
_MME_ARTICLES = frozenset({"a", "an", "the"})
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period not followed by a digit goes (MultiMedEval's pattern means this; it also passes re.UNICODE, = 32, where
# `re.sub` takes its count, so at most 32 periods are removed).
_PERIOD = re.compile(r"\.(?!\d)")


def multimedeval_clean(text: str) -> str:
    """MultiMedEval's answer cleaning: "X-Ray" -> "x ray", "Two lesions." -> "2 lesions", "the liver" -> "liver"."""
    low = text.lower()
    joined = _DIGIT_COMMA_DIGIT.search(low) is not None
    out = low
    for p in _MME_PUNCT:
        # Judged on the lower-cased input: punctuation touching a space (or any, in "1,000"-like text) is dropped.
        out = out.replace(p, "" if joined or f"{p} " in low or f" {p}" in low else " ")
    out = _PERIOD.sub("", out, count=32)
    words = [_MME_NUMBERS.get(w, w) for w in out.split()]
    return " ".join(w for w in words if w not in _MME_ARTICLES).replace(",", "")


def multimedeval_tokens(text: str) -> set[str]:
    return set(multimedeval_clean(text).split())


def _multimedeval_score(prediction: str | None, gold: str) -> VQAScore:
    pred = multimedeval_tokens(prediction or "")
    ref = multimedeval_tokens(gold.lower().strip())
    common = len(pred & ref)
    precision = common / len(pred) if pred else 0.0
    recall = common / len(ref) if ref else 0.0
    f1 = 2 * precision * recall / (precision + recall + 1e-8)
    closed = multimedeval_clean(gold.lower().strip()) in ("yes", "no")
    if closed:
        want = ref | {"not"} if ref == {"no"} else ref
        correct = len(pred & want) / len(want) >= 0.4
    else:
        correct = recall >= 0.75
    return VQAScore(correct, f1, closed)


CONVENTIONS: dict[str, VQAConvention] = {
    c.name: c
    for c in (
        VQAConvention(
            "toolkit",
            "1",
            "SQuAD-style normalisation, bag-of-tokens F1, closed = answer_type CLOSED, closed right = exact match",
            "medgemma-toolkit",
        ),
        VQAConvention(
            "multimedeval",
            "1",
            "VQA-v2 cleaning (X-Ray -> x ray, two -> 2), token-set F1, closed = gold yes/no, "
            "closed right = recall >= 0.4 ('not' counts for 'no'), open right = recall >= 0.75",
            "corentin-ryr/MultiMedEval@d9ac283 multimedeval/utils.py clean_str, multimedeval/task_families.py VQA",
        ),
    )
}
DEFAULT_CONVENTION = "toolkit"


def get_convention(name: str, kind: TaskKind) -> VQAConvention:
    """The named convention; one other than the default is refused for task kinds it defines nothing for."""
    conv = lookup(CONVENTIONS, name, "metric convention")
    if conv.name != DEFAULT_CONVENTION and not kind.conventions:
        raise BadInput(f"--metric-convention {name} defines VQA metrics only; this task is {kind.name}")
    return conv
