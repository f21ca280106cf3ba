"""`deid --verify`: list, by tag name, every attribute in a tree that the profile says must not be there.

Works on files from any tool, and is strict by default: a file is held to the Basic Profile whatever options it
declares, because a declaration is only a claim (a file declaring seven options while keeping InstitutionName,
StudyDate and a private element would otherwise pass). With `trust_declared_options` the options a file declares
(CID 7050 codes in DeidentificationMethodCodeSequence) relax the check, and what they cannot excuse is still
listed: a private element without its creator, or modified dates declared but LongitudinalTemporalInformation-
Modified not saying so.

In a file that declares itself de-identified (PatientIdentityRemoved YES): an attribute the table removes or
empties must be absent or empty; one the table replaces with a dummy (D) must be empty or hold a recognisable
dummy (ours, or an obvious placeholder such as ANONYMIZED, XXXX, 19000101), else it is listed as "present, value
not recognised as a dummy"; new UIDs cannot be told from originals. No private element, curve or overlay group,
and no element left as VR UN that cannot be decoded. In a file that does not declare itself de-identified every
table attribute with a value is listed. Values are never read out: findings name attributes only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MedGemmaError, UnsupportedFormat
from .dicomdir import RECORD_KEYS
from .engine import _DUMMY, META_KEEP
from .profile import Options, is_curve_group, is_overlay_group, table
from .read import read_checked
from .un import decode_un

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

NOT_DUMMY = "present, value not recognised as a dummy"
_PLACEHOLDERS = {"ANONYMOUS", "ANONYMIZED", "ANONYMISED", "REMOVED", "DUMMY", "UNKNOWN", "NONE", "N/A", "NA"}
_FILLER = re.compile(r"[0X*^ ._\-]*", re.IGNORECASE)  # "XXXX", "****", "00000000", "^", "0.0"
_PSEUDONYM = re.compile(r"P[0-9A-F]{15}")  # UIDMap.pseudonym: a DICOMDIR PATIENT record's stand-in ID


def _empty(elem: Any) -> bool:
    v = elem.value
    if v is None:
        return True
    if elem.VR == "SQ":
        return all(_empty_item(item) for item in v)
    return len(v) == 0 if hasattr(v, "__len__") else False


def _empty_item(item: Any) -> bool:
    return all(_empty(e) for e in item)


def _is_dummy(elem: Any) -> bool:
    """Empty, or a value no one would take for a real one (checked without reading it out)."""
    if _empty(elem) or elem.VR in ("UI", "SQ"):  # new UIDs look like any UID; a sequence's items are walked
        return elem.VR != "SQ" or _empty(elem)
    vr = elem.VR.split(" or ")[0]
    values = elem.value if isinstance(elem.value, (list, tuple)) or hasattr(elem.value, "_list") else [elem.value]
    for v in values:
        if isinstance(v, (bytes, bytearray)):
            if any(v.rstrip(b"\x00 ")):
                return False
            continue
        if isinstance(v, (int, float)):
            if v != 0:
                return False
            continue
        text = str(v).strip().rstrip("\x00")
        if text == str(_DUMMY.get(vr, "")) or text.upper() in _PLACEHOLDERS or _FILLER.fullmatch(text):
            continue
        if vr == "LO" and _PSEUDONYM.fullmatch(text):
            continue
        if vr == "DA" and text.startswith("1900"):  # our dummy date, or one shifted from it
            continue
        return False
    return True


def _name(elem: Any, path: str) -> str:
    own = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
    return f"{path}{own}"


def findings(ds: Dataset, trust_declared_options: bool = False) -> list[str]:
    """Attribute paths (names only) that should not be in `ds` under the profile (and, when trusted, the options
    the file declares)."""
    claimed = str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() == "YES"
    codes = {str(getattr(c, "CodeValue", "")) for c in ds.get("DeidentificationMethodCodeSequence", []) or []}
    opts = Options.from_codes(codes) if (claimed and trust_declared_options) else Options()
    out: list[str] = []
    if not claimed:
        out.append("PatientIdentityRemoved (absent or not YES)")
    if opts.retain_modified_dates and str(ds.get("LongitudinalTemporalInformationModified", "")) != "MODIFIED":
        out.append("LongitudinalTemporalInformationModified (modified dates declared, not recorded)")
    _check(ds, opts, claimed, "", out, top=True, sop_class=str(ds.get("SOPClassUID", "") or ""))
    meta = getattr(ds, "file_meta", None)
    for elem in meta or []:
        if int(elem.tag) not in META_KEEP and not _empty(elem):
            out.append(_name(elem, "FileMeta."))
    return out


def _creators(ds: Dataset) -> set[int]:
    """(group << 8 | block) of every private creator present."""
    return {
        (int(t) >> 16) << 8 | (int(t) & 0xFF) for t in ds.keys() if t.is_private and 0x10 <= (int(t) & 0xFFFF) <= 0xFF
    }


def _check(
    ds: Dataset,
    opts: Options,
    claimed: bool,
    path: str,
    out: list[str],
    top: bool,
    sop_class: str,
    type1: frozenset[int] = frozenset(),
) -> None:
    tab = table()
    creators = _creators(ds)
    for tag in list(ds.keys()):
        t = int(tag)
        if tag.is_private:
            block = (t >> 16) << 8 | ((t & 0xFFFF) >> 8)
            orphan = (t & 0xFFFF) > 0xFF and block not in creators
            if orphan or (not opts.retain_safe_private and not tag.is_private_creator):
                out.append(_name(ds[tag], path) + (" (private element without its creator)" if orphan else ""))
            continue
        if is_curve_group(t >> 16) or is_overlay_group(t >> 16):
            out.append(_name(ds[tag], path))
            continue
        if ds.get_item(tag).VR == "UN" and decode_un(ds, t) is None:
            out.append(_name(ds[tag], path) + " (VR UN, not decodable)")
            continue
        elem = ds[tag]
        if elem.VR == "UN" and decode_un(ds, t) is None:  # implicit VR, a tag no dictionary knows
            out.append(_name(elem, path) + " (VR UN, not decodable)")
            continue
        elem = ds[tag]
        row = tab.rows.get(t)
        if row is None:
            if elem.VR == "SQ":
                _items(elem, opts, claimed, path, out, sop_class)
            elif elem.VR == "PN" and not _empty(elem):
                out.append(_name(elem, path))
            continue
        action = row.action(opts, tab.type_of(sop_class, t) if top else None)
        if t in type1 and action in ("X", "Z"):  # a Type 1 key of a directory record: a dummy keeps it valid
            action = "D"
        if action in ("X", "Z") or (action in ("D", "U", "C") and not claimed):
            if not _empty(elem):
                out.append(_name(elem, path))
                continue
        elif action == "D" and elem.VR != "SQ" and not _is_dummy(elem):  # a D sequence: its items are checked
            out.append(f"{_name(elem, path)} ({NOT_DUMMY})")
            continue
        if elem.VR == "SQ":
            _items(elem, opts, claimed, path, out, sop_class)


def _items(elem: Any, opts: Options, claimed: bool, path: str, out: list[str], sop_class: str) -> None:
    records = int(elem.tag) == 0x00041220  # DirectoryRecordSequence
    for i, item in enumerate(elem.value or []):
        keys = RECORD_KEYS.get(str(item.get("DirectoryRecordType", "")), {}) if records else {}
        type1 = frozenset(t for t, ty in keys.items() if ty == "1")
        _check(item, opts, claimed, f"{path}{elem.keyword or elem.tag}[{i}].", out, False, sop_class, type1)


def verify_tree(
    root: str | Path, trust_declared_options: bool = False
) -> Iterator[tuple[str, list[str] | None, str | None]]:
    """(file relative to root, findings or None, error or None) for every DICOM file under `root`."""
    from .files import _inputs, quiet_pydicom

    root_p = Path(root)
    for path, rel in _inputs(root_p):
        with quiet_pydicom():  # pydicom's warnings quote values
            try:
                ds = read_checked(path)
            except UnsupportedFormat:
                continue
            except MedGemmaError as e:
                error: str | None = str(e).replace(str(path), "").lstrip(": ")
                found = None
            else:
                error, found = None, findings(ds, trust_declared_options)
        yield str(rel), found, error
