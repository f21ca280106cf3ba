"""The Basic Application Level Confidentiality Profile as data: `basic_profile.csv` -> {tag: action}.

The CSV is the standard's table with one action per attribute. Compound actions depend, in the standard, on
whether the attribute is type 1, 2 or 3 in the object's IOD; without IOD tables we resolve them to the choice
that both removes the value and keeps files valid: anything allowing Z empties, anything allowing D (but not Z)
puts a dummy, "X/Z/U*" sequences are kept and their items processed (so UIDs in them are remapped), and C
(clean) is treated as D, since we cannot judge what free text is safe.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

Action = Literal["remove", "empty", "dummy", "uid", "keep", "recurse"]

_RESOLVE: dict[str, Action] = {
    "X": "remove",
    "Z": "empty",
    "D": "dummy",
    "C": "dummy",
    "U": "uid",
    "K": "keep",
    "X/Z": "empty",
    "X/D": "dummy",
    "Z/D": "dummy",
    "X/Z/D": "dummy",
    "X/Z/U*": "recurse",
}


@dataclass(frozen=True)
class Profile:
    """Resolved actions by tag, plus the table's version (recorded in reports)."""

    actions: dict[int, Action]
    standard_actions: dict[int, str]
    version: int


def resolve(code: str) -> Action:
    try:
        return _RESOLVE[code.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown de-identification action {code!r}") from None


@lru_cache(maxsize=1)
def basic_profile() -> Profile:
    """Load and resolve the packaged table once."""
    from pydicom.datadict import tag_for_keyword

    text = resources.files(__package__).joinpath("basic_profile.csv").read_text(encoding="utf-8")
    version = 0
    rows: list[str] = []
    for line in text.splitlines():
        if line.startswith("# version,"):
            version = int(line.split(",", 1)[1])
        elif line and not line.startswith("#"):
            rows.append(line)
    actions: dict[int, Action] = {}
    standard: dict[int, str] = {}
    for row in csv.DictReader(rows):
        tag = tag_for_keyword(row["keyword"])
        if tag is None:
            raise ValueError(f"basic_profile.csv: unknown keyword {row['keyword']!r}")
        standard[tag] = row["action"]
        actions[tag] = resolve(row["action"])
    return Profile(actions, standard, version)


def is_curve_or_overlay_text(tag: int) -> bool:
    """Repeating groups the profile removes: curve data (50xx,xxxx), overlay data (60xx,3000) and comments (60xx,4000)."""
    group, element = tag >> 16, tag & 0xFFFF
    if 0x5000 <= group <= 0x50FF and group % 2 == 0:
        return True
    return 0x6000 <= group <= 0x60FF and group % 2 == 0 and element in (0x3000, 0x4000)
