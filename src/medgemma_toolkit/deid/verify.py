"""`deid --verify`: list, by tag name, every attribute in a tree that the profile says must not be there.

Works on files from any tool. A file that declares itself de-identified (PatientIdentityRemoved YES) is held to
what can be told from outside: no attribute the table removes or empties may carry a value, no private element
(unless its declared options include Retain Safe Private), no curve or overlay group, and its declared options
(CID 7050 codes in DeidentificationMethodCodeSequence) are honoured. Dummies and new UIDs cannot be told from
originals, so in a file that does not declare itself de-identified every table attribute with a value is listed.
Values are never read out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import MedGemmaError, UnsupportedFormat
from .engine import META_KEEP
from .profile import Options, is_curve_group, is_overlay_group, table
from .read import read_checked


def _empty(elem) -> bool:
    v = elem.value
    if v is None:
        return True
    if elem.VR == "SQ":
        return all(_empty_item(item) for item in v)
    return len(v) == 0 if hasattr(v, "__len__") else False


def _empty_item(item) -> bool:
    return all(_empty(e) for e in item)


def _name(elem, path: str) -> str:
    own = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
    return f"{path}{own}"


def findings(ds) -> list[str]:
    """Attribute paths (names only) that should not be in `ds` under the profile and its declared options."""
    claimed = str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() == "YES"
    codes = {str(getattr(c, "CodeValue", "")) for c in ds.get("DeidentificationMethodCodeSequence", []) or []}
    opts = Options.from_codes(codes) if claimed else Options()
    out: list[str] = []
    if not claimed:
        out.append("PatientIdentityRemoved (absent or not YES)")
    _check(ds, opts, claimed, "", out, top=True, sop_class=str(ds.get("SOPClassUID", "") or ""))
    meta = getattr(ds, "file_meta", None)
    for elem in meta or []:
        if int(elem.tag) not in META_KEEP and not _empty(elem):
            out.append(_name(elem, "FileMeta."))
    return out


def _check(ds, opts: Options, claimed: bool, path: str, out: list[str], top: bool, sop_class: str) -> None:
    tab = table()
    for elem in ds:
        tag = int(elem.tag)
        if elem.tag.is_private:
            if not opts.retain_safe_private and not elem.tag.is_private_creator:
                out.append(_name(elem, path))
            continue
        if is_curve_group(tag >> 16) or is_overlay_group(tag >> 16):
            out.append(_name(elem, path))
            continue
        row = tab.rows.get(tag)
        if row is None:
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value or []):
                    _check(item, opts, claimed, f"{path}{elem.keyword or elem.tag}[{i}].", out, False, sop_class)
            elif elem.VR == "PN" and not _empty(elem):
                out.append(_name(elem, path))
            continue
        action = row.action(opts, tab.type_of(sop_class, tag) if top else None)
        bad = False
        if action in ("X", "Z"):
            bad = not _empty(elem)
        elif action in ("D", "U", "C") and not claimed:
            bad = not _empty(elem)
        if bad:
            out.append(_name(elem, path))
        elif elem.VR == "SQ" and action != "X":
            for i, item in enumerate(elem.value or []):
                _check(item, opts, claimed, f"{path}{elem.keyword or elem.tag}[{i}].", out, False, sop_class)


def verify_tree(root: str | Path) -> Iterator[tuple[str, list[str] | None, str | None]]:
    """(file relative to root, findings or None, error or None) for every DICOM file under `root`."""
    from .files import _inputs

    root_p = Path(root)
    for path, rel in _inputs(root_p):
        try:
            ds = read_checked(path)
        except UnsupportedFormat:
            continue
        except MedGemmaError as e:
            yield str(rel), None, str(e).replace(str(path), "").lstrip(": ")
            continue
        yield str(rel), findings(ds), None
