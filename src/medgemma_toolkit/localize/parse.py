"""Boxes from what models really write: the notebook's ```json list after "Final Answer:", or that list without
fences, with trailing text, inside a thought block's aftermath, with Python-style quotes, or corners swapped.

Whatever cannot be read as a box is returned in `unparsed` (truncated), never raised: a partial answer still
gives the boxes it has.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..prompts.thinking import split_thought

MAX_FRAGMENT = 200  # characters of an unparsed fragment kept for the report
MAX_UNPARSED = 20  # fragments kept per answer; the rest are counted
FINAL = re.compile(r"final\s+answer\s*:", re.IGNORECASE)
FENCE = re.compile(r"```[ \t]*(?:json)?", re.IGNORECASE)
BOX_KEYS = ("box_2d", "bbox", "box")
LABEL_KEYS = ("label", "name", "object")


@dataclass(frozen=True)
class Box:
    label: str
    box_2d: tuple[float, float, float, float]  # y0, x0, y1, x1 in the model's 0-1000 frame, corners sorted


@dataclass
class Parsed:
    boxes: list[Box] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_FRAGMENT else text[: MAX_FRAGMENT - 3] + "..."


def _region(answer: str) -> str:
    """The final answer's text: after the last "Final Answer:" when there is one (reasoning before it may quote
    other boxes), else the whole answer."""
    marks = list(FINAL.finditer(answer))
    return answer[marks[-1].end() :] if marks else answer


def _segments(region: str) -> list[str]:
    """Fenced blocks (an unclosed fence runs to the end); without fences, the region itself."""
    marks = list(FENCE.finditer(region))
    if not marks:
        return [region]
    out = []
    for i in range(0, len(marks), 2):
        start = marks[i].end()
        end = marks[i + 1].start() if i + 1 < len(marks) else len(region)
        out.append(region[start:end])
    return out


def _closings(text: str) -> tuple[dict[int, int], int | None]:
    """Opening bracket index -> index after its closing bracket, in one pass (quotes inside brackets respected),
    and where the first bracket that never closes opens (an answer cut off mid-list), if any."""
    stack: list[int] = []
    out: dict[int, int] = {}
    quote, escaped = "", False
    for i, c in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = ""
        elif c in "\"'" and stack:  # outside brackets a quote is prose ("the patient's left")
            quote = c
        elif c in "[{":
            stack.append(i)
        elif c in "]}" and stack:
            out[stack.pop()] = i + 1
    return out, (stack[0] if stack else None)


def _values(segment: str, unparsed: list[str]) -> list[Any]:
    """Every JSON (or Python-literal) list/object in `segment`, in order; unreadable bracketed text to `unparsed`.

    Only brackets that close can hold a value, so only those are tried, each at most once (linear in the text
    however adversarial); inside a bracket that never closes, the complete values before the cut still count.
    """
    decoder = json.JSONDecoder()
    closings, unclosed = _closings(segment)
    values: list[Any] = []
    end = 0
    for i in sorted(closings):
        if i < end:
            continue  # inside a value already read (or already reported)
        end = closings[i]
        try:
            value, end = decoder.raw_decode(segment, i)  # JSON's own end wins over the scan's
        except (json.JSONDecodeError, RecursionError):
            try:  # single quotes, trailing commas, True/None: what models write when they slip into Python
                value = ast.literal_eval(segment[i:end])
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                unparsed.append(_clip(segment[i:end]))
                continue
        values.append(value)
    if unclosed is not None:
        unparsed.append(_clip(segment[unclosed:]))
    return values


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def _box(coords: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(coords, (list, tuple)) or len(coords) != 4:
        return None
    nums: list[float] = []
    for v in coords:
        n = _number(v)
        if n is None:
            return None
        nums.append(int(n) if n == int(n) else n)  # 250 stays 250 in the JSON, not 250.0
    y0, x0, y1, x1 = nums
    return (min(y0, y1), min(x0, x1), max(y0, y1), max(x0, x1))  # swapped corners, put right


def _items(value: Any, default_label: str, parsed: Parsed) -> None:
    if isinstance(value, dict):
        value = [value]
    elif isinstance(value, (list, tuple)) and _box(value) is not None:
        value = [value]  # one bare [y0, x0, y1, x1]
    if not isinstance(value, (list, tuple)):
        parsed.unparsed.append(_clip(json.dumps(value, default=str)))
        return
    for item in value:
        coords: Any = item
        label: Any = default_label
        if isinstance(item, dict):
            coords = next((item[k] for k in BOX_KEYS if k in item), None)
            label = next((item[k] for k in LABEL_KEYS if item.get(k) not in (None, "")), default_label)
        box = _box(coords)
        if box is None:
            parsed.unparsed.append(_clip(json.dumps(item, default=str)))
        else:
            parsed.boxes.append(Box(str(label), box))


def parse_boxes(text: str, default_label: str = "") -> Parsed:
    """Boxes in a model's answer; `default_label` names boxes the model left unlabelled.

    >>> parse_boxes('Final Answer: ```json[{"box_2d": [750, 100, 250, 600], "label": "right lung"}]```').boxes
    [Box(label='right lung', box_2d=(250, 100, 750, 600))]
    """
    split = split_thought(text)
    parsed = Parsed()
    if not split.answer:
        if split.thought is not None:
            parsed.unparsed.append("(the answer ended inside its thought block)")
        return parsed
    region = _region(split.answer)
    for segment in _segments(region):
        for value in _values(segment, parsed.unparsed):
            _items(value, default_label, parsed)
    if not parsed.boxes and not parsed.unparsed and region.strip():
        parsed.unparsed.append(_clip(region))  # text with no box in it at all
    if len(parsed.unparsed) > MAX_UNPARSED:
        extra = len(parsed.unparsed) - MAX_UNPARSED + 1
        parsed.unparsed[MAX_UNPARSED - 1 :] = [f"(and {extra} more unreadable fragments)"]
    return parsed
