"""Retain Safe Private: the private elements a site has judged safe, named by private creator and element.

PS3.15 Table E.3.10-1 lists examples of such elements, but no machine-readable copy of it was at hand, so the
toolkit ships no list of its own: the option keeps only what the user's list names, a CSV of
`creator,group,element` rows (group in hex, element = the low byte in hex, e.g. `GEMS_PARM_01,0043,27`).
Everything else private is removed as in the Basic Profile.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


class SafePrivate:
    def __init__(self, entries: set[tuple[str, int, int]]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, path: str | Path) -> SafePrivate:
        entries: set[tuple[str, int, int]] = set()
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError:
            raise BadInput(f"{path}: cannot read the safe private list") from None
        for n, row in enumerate(csv.reader(line for line in text.splitlines() if line and not line.startswith("#"))):
            try:
                creator, group, element = (c.strip() for c in row)
                g, e = int(group, 16), int(element, 16)
            except ValueError:
                raise BadInput(f"{path}: row {n + 1} is not 'creator,group,element' (hex)") from None
            if g % 2 == 0 or not 0 <= e <= 0xFF:
                raise BadInput(f"{path}: row {n + 1}: a private group is odd and an element is one byte")
            entries.add((creator, g, e))
        return cls(entries)

    def keep_set(self, ds: Dataset) -> set[int]:
        """Tags of `ds` (this level) to keep: listed elements and the creator elements that reserve them."""
        keep: set[int] = set()
        if not self.entries:
            return keep
        creators = {}
        for elem in ds:
            t = int(elem.tag)
            g, e = t >> 16, t & 0xFFFF
            if g % 2 == 1 and 0x10 <= e <= 0xFF:
                creators[(g, e)] = str(elem.value).strip()
        for elem in ds:
            t = int(elem.tag)
            g, e = t >> 16, t & 0xFFFF
            if g % 2 == 1 and e >= 0x1000:
                creator = creators.get((g, e >> 8))
                if creator is not None and (creator, g, e & 0xFF) in self.entries and elem.VR != "SQ":
                    keep.add(t)
                    keep.add((g << 16) | (e >> 8))
        return keep
