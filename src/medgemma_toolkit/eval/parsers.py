"""Answer parsers: model text (thought already removed) -> the answer to score, or None when unparseable.

MedGemma's protocols ask the model to end with a fixed phrase ("Final Answer: X", "The most likely diagnosis is:
X") and score what follows the last occurrence. An answer naming several options there ("B or C") is unparseable,
and unparseable answers count as wrong: guessing a letter from free text would flatter weak models.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# The answer-parsing protocol. Bump whenever a parser change could move a score; summaries record it and `--resume`
# refuses to mix runs parsed under different versions.
#   1: "Final Answer: X" with X a letter ("B", "(B)", "B.", "B) text") or an option's exact text.
#   2: also the forms models write in practice (issue #34): LaTeX boxes ("$\boxed{B}$", "\boxed{C}", also after
#      "The final answer is"), "Option B", "The answer is B", and an option's text followed by its letter
#      ("Heart failure (C)"). Refusals are unchanged: several letters, a letter that is not an option.
PARSER_VERSION = "2"

FINAL = re.compile(r"final\s+answer\s*(?:is)?\s*[:：\-]?", re.I)
DIAGNOSIS = re.compile(r"(?:the\s+)?most\s+likely\s+diagnosis\s+is\s*[:：\-]?", re.I)
_DECOR = re.compile(r"[*_`#>\"']+")
_LETTER = re.compile(r"^\s*[\(\[]?([A-Za-z])(?:[\)\]]|\.(?!\w)|:|,|\s|$)")
_SEVERAL = re.compile(r"^\s*[\(\[]?[A-Za-z][\)\]]?\s*(?:,|/|\bor\b|\band\b|&)\s*[\(\[]?[A-Za-z][\)\]]?(?:\W|$)", re.I)


def _after_last(marker: re.Pattern[str], text: str) -> str | None:
    hits = list(marker.finditer(text))
    if not hits:
        return None
    tail = text[hits[-1].end() :]
    tail = _DECOR.sub("", tail).strip()
    # The answer is what follows on the same line, or on the next non-empty line.
    for line in tail.splitlines():
        if line.strip():
            return line.strip()
    return ""


_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text\s*\{\s*)?([^{}]*?)\s*\}?\s*\}")
_MATH = re.compile(r"\$+|\\[()\[\]]")
_LEAD = re.compile(r"^\s*(?:(?:the\s+)?(?:correct\s+|best\s+)?answer\s+is\s*[:：\-]?\s*|(?:option|choice)\s+)", re.I)
_TRAILING = re.compile(r"^(?P<text>.*?\S)\s*[\(\[](?P<letter>[A-Za-z])[\)\]]\s*\.?\s*$")
_BRACKETED = re.compile(r"[\(\[][A-Za-z][\)\]]")


def _unwrap(segment: str) -> str:
    """The answer inside the wrappers models put around it: "$\\boxed{B}$" -> "B", "Option B" -> "B",
    "The answer is B" -> "B" (protocol 2)."""
    seg = _BOXED.sub(lambda m: m.group(1), segment)
    seg = _MATH.sub("", seg).strip()
    while True:
        stripped = _LEAD.sub("", seg, count=1)
        if stripped == seg:
            return seg
        seg = stripped


def _trailing_letter(segment: str, options: dict[str, str]) -> str | None:
    """ "Heart failure (C)": one bracketed option letter at the end, and the text before it names no other option."""
    m = _TRAILING.match(segment)
    if m is None or len(_BRACKETED.findall(segment)) != 1:
        return None
    letter = m.group("letter").upper()
    if letter not in options:
        return None
    text = m.group("text").lower().rstrip(" .:-")
    named = [k for k, v in options.items() if v.strip().lower().rstrip(" .") == text]
    return letter if not named or named == [letter] else None


def _letter(segment: str, options: dict[str, str]) -> str | None:
    segment = _unwrap(segment)
    if _SEVERAL.match(segment):
        return None
    m = _LETTER.match(segment)
    if m:
        letter = m.group(1)
        # A lowercase single letter counts only when it stands alone ("b", "(b)", "b.") - not the article "a ...".
        if letter.islower() and not re.match(r"^\s*[\(\[]?[a-z](?:[\)\]]|\.)?\s*$", segment):
            letter = ""
        if letter.upper() in options:
            return letter.upper()
    # "Final Answer: Pneumonia" - the option's own text.
    seg = segment.lower().rstrip(" .")
    matches = [k for k, v in options.items() if v.strip().lower().rstrip(" .") == seg]
    if len(matches) == 1:
        return matches[0]
    return _trailing_letter(segment, options)


def final_answer_letter(text: str, options: dict[str, str]) -> str | None:
    """The option letter after the last "Final Answer:".

    >>> final_answer_letter("Reasoning...\\nFinal Answer: (B)", {"A": "x", "B": "y"})
    'B'
    """
    seg = _after_last(FINAL, text)
    return None if seg is None else _letter(seg, options)


def diagnosis_letter(text: str, options: dict[str, str]) -> str | None:
    """The letter after "The most likely diagnosis is:" (image MCQ protocol), else after "Final Answer:"."""
    seg = _after_last(DIAGNOSIS, text)
    if seg is not None:
        return _letter(seg, options)
    return final_answer_letter(text, options)


_YES = {"yes", "y", "true", "present"}
_NO = {"no", "n", "false", "absent"}


def yes_no(text: str, options: dict[str, str] | None = None) -> str | None:
    """'yes' / 'no' after the last "Final Answer:", or a reply that is just yes or no."""
    seg = _after_last(FINAL, text)
    if seg is None:
        seg = _DECOR.sub("", text).strip()
    words = re.findall(r"[a-z]+", seg.lower())
    if not words:
        return None
    first = words[0]
    if first in _YES:
        return "yes"
    if first in _NO:
        return "no"
    return None


def free_text(text: str, options: dict[str, str] | None = None) -> str | None:
    """VQA: the text after "Final Answer:" if present, else the whole answer; None when empty."""
    seg = _after_last(FINAL, text)
    ans = (seg if seg is not None else text).strip()
    return ans or None


def report_text(text: str, options: dict[str, str] | None = None) -> str | None:
    return text.strip() or None


def google_rl_letter(text: str, options: dict[str, str] | None = None) -> str | None:
    """Google's RL notebook's extraction: the first of its ordered "Final Answer" patterns that matches."""
    from ..prompts.mcq import google_rl_answer

    return google_rl_answer(text)


PARSERS: dict[str, Callable[[str, dict[str, str]], str | None]] = {
    "final_answer": final_answer_letter,
    "google_rl": google_rl_letter,
    "diagnosis": diagnosis_letter,
    "yes_no": yes_no,
    "free_text": free_text,
    "report": report_text,
}
