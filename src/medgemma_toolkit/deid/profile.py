"""PS3.15 Table E.1-1 as data: every row, the Basic Profile column and the option columns, resolved per element.

`table_e1_1.csv` and `iod_types.json` are generated from machine-readable copies of the standard by
`scripts/gen_deid_table.py` (sources and edition in the CSV's header); `iod_type1.json` (the Type 1 attributes of
each IOD's mandatory modules, for the completeness check of inputs) by `scripts/gen_deid_type1.py`. Compound actions are resolved as the
standard defines them, by the attribute's type in the object's IOD: X/Z -> X for type 3, Z for type 2;
X/D -> X for type 3, D otherwise; Z/D -> D for type 1, Z otherwise; X/Z/D -> X, Z or D for types 3, 2, 1;
X/Z/U* -> X, Z, or U (the sequence kept, the UIDs in it replaced) for types 3, 2, 1. Where the type is unknown
(an IOD we have no table for, or inside a sequence) the member that keeps any file valid is taken: Z for X/Z,
D for X/D, Z/D and X/Z/D, U for X/Z/U*; none of them keeps the original value.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources

# Options the toolkit offers, as the standard names them, with their CID 7050 code (DCM) and meaning.
OPTION_CODES: dict[str, tuple[str, str]] = {
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
}
BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")
_TYPE_RANK = {"1": 3, "1C": 3, "2": 2, "2C": 2, "3": 1}


@dataclass(frozen=True)
class Options:
    """The profile's options (PS3.15 E.3); all off is the Basic Profile alone."""

    retain_safe_private: bool = False
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_patient_characteristics: bool = False
    retain_full_dates: bool = False
    retain_modified_dates: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False

    def __post_init__(self) -> None:
        if self.retain_full_dates and self.retain_modified_dates:
            raise ValueError("choose one of the full-dates and modified-dates options")

    def selected(self) -> list[str]:
        return list(_selected(self))

    @classmethod
    def from_codes(cls, codes: set[str]) -> Options:
        """The options a file declares in its DeidentificationMethodCodeSequence (CID 7050 code values)."""
        by_code = {code: name for name, (code, _) in OPTION_CODES.items()}
        chosen = {by_code[c] for c in codes if c in by_code}
        if {"retain_full_dates", "retain_modified_dates"} <= chosen:
            chosen.discard("retain_full_dates")
        return cls(**{n: True for n in chosen})


@dataclass(frozen=True)
class Row:
    tag: str  # '00100010', '50xxxxxx', '60xx3000', 'private'
    keyword: str
    vr: str
    basic: str
    options: dict[str, str]

    def action(self, opts: Options, type_: str | None) -> str:
        """One of X, Z, D, U, K, C for this element under `opts`, its type in the IOD (None: unknown)."""
        chosen = [self.options.get(name, "") for name in _selected(opts)] if self.options else ()
        if "K" in chosen:
            return "K"
        if "C" in chosen:
            return "C"
        return resolve_compound(self.basic, type_)


@lru_cache(maxsize=64)
def _selected(opts: Options) -> tuple[str, ...]:
    return tuple(f.name for f in fields(opts) if getattr(opts, f.name))


def resolve_compound(code: str, type_: str | None) -> str:
    rank = _TYPE_RANK.get(type_ or "", 0)  # 0: unknown
    if code == "X/Z":
        return "X" if rank == 1 else "Z"
    if code == "X/D":
        return "X" if rank == 1 else "D"
    if code == "Z/D":
        return "Z" if rank == 2 or rank == 1 else "D"
    if code == "X/Z/D":
        return {1: "X", 2: "Z"}.get(rank, "D")
    if code == "X/Z/U*":
        return {1: "X", 2: "Z"}.get(rank, "U")
    return code


@dataclass(frozen=True)
class Table:
    rows: dict[int, Row]  # single-tag rows
    curve: Row
    overlay_data: Row
    overlay_comments: Row
    private: Row
    source: str
    sop_iod: dict[str, str]
    iod_types: dict[str, dict[int, str]]
    pixel_iods: frozenset[str]
    type1: dict[str, frozenset[int]]

    def type1_of(self, sop_class: str | None) -> frozenset[int]:
        """Tags every object of the IOD of `sop_class` holds at its top level (empty when the IOD is unknown)."""
        return self.type1.get(self.sop_iod.get(str(sop_class or ""), ""), frozenset())

    def needs_pixels(self, sop_class: str | None) -> bool:
        """Whether the IOD of `sop_class` has a mandatory Image Pixel module."""
        return self.sop_iod.get(str(sop_class or "")) in self.pixel_iods

    def type_of(self, sop_class: str | None, tag: int) -> str | None:
        """The attribute's type at the top level of the IOD of `sop_class`: '3' when the IOD lacks it,
        None when we have no table for the IOD."""
        iod = self.sop_iod.get(str(sop_class or ""))
        if iod is None or iod not in self.iod_types:
            return None
        return self.iod_types[iod].get(tag, "3")


@lru_cache(maxsize=1)
def table() -> Table:
    """Load the packaged table once."""
    pkg = resources.files(__package__)
    lines = pkg.joinpath("table_e1_1.csv").read_text(encoding="utf-8").splitlines()
    source = "\n".join(line[2:] for line in lines if line.startswith("# "))
    reader = csv.DictReader(line for line in lines if not line.startswith("#"))
    option_names = [n for n in (reader.fieldnames or []) if n in OPTION_CODES or n.startswith("clean_")]
    rows: dict[int, Row] = {}
    special: dict[str, Row] = {}
    for r in reader:
        row = Row(r["tag"], r["keyword"], r["vr"], r["basic"], {n: r[n] for n in option_names if r[n]})
        if r["tag"].isalnum() and "x" not in r["tag"] and r["tag"] != "private":
            rows[int(r["tag"], 16)] = row
        else:
            special[r["tag"]] = row
    types = json.loads(pkg.joinpath("iod_types.json").read_text(encoding="utf-8"))
    iod_types = {iod: {int(t, 16): ty for t, ty in d.items()} for iod, d in types["iod_types"].items()}
    type1 = json.loads(pkg.joinpath("iod_type1.json").read_text(encoding="utf-8"))["type1"]
    return Table(
        rows,
        special["50xxxxxx"],
        special["60xx3000"],
        special["60xx4000"],
        special["private"],
        source,
        types["sop_class_iod"],
        iod_types,
        frozenset(types["pixel_iods"]),
        {iod: frozenset(int(t, 16) for t in tags) for iod, tags in type1.items()},
    )


def edition() -> str:
    """The table's source and edition, for reports."""
    lines = table().source.splitlines()
    return " ".join(line for line in lines if line.startswith(("Table E.1-1:", "(file last changed"))) or "unknown"


def is_curve_group(group: int) -> bool:
    return 0x5000 <= group <= 0x50FF and group % 2 == 0


def is_overlay_group(group: int) -> bool:
    return 0x6000 <= group <= 0x60FF and group % 2 == 0
