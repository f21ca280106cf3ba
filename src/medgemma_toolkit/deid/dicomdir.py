"""DICOMDIR: its records hold byte offsets to each other, which change when de-identification shortens values.

The record links are read before de-identifying (offset -> record index), and after it the dataset is encoded,
each record's new position read back, and the offsets rewritten (they are fixed-size UL values, so the second
encoding has the same layout). Each record's dates are shifted with the patient above it (the instances'
shift), records of files that were not written are dropped, and the records' Type 1 keys keep a value.
"""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_NEXT, _LOWER = 0x00041400, 0x00041420
_FIRST, _LAST = 0x00041200, 0x00041202


def is_dicomdir(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return (
        str(getattr(meta, "MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY and "DirectoryRecordSequence" in ds
    )


def record_links(ds: Dataset) -> dict:
    """Links between records by index, from the offsets as read."""
    records = list(ds.DirectoryRecordSequence)
    at = {getattr(r, "seq_item_tell", None): i for i, r in enumerate(records)}

    def index(offset: int | None) -> int | None:
        return None if not offset else at.get(int(offset))

    return {
        "first": index(ds.get(_FIRST).value if _FIRST in ds else 0),
        "last": index(ds.get(_LAST).value if _LAST in ds else 0),
        "records": [
            (index(r[_NEXT].value if _NEXT in r else 0), index(r[_LOWER].value if _LOWER in r else 0)) for r in records
        ],
    }


def relink(ds: Dataset, links: dict) -> None:
    """Rewrite the offsets of `ds` (de-identified) for the links read before."""
    import pydicom

    buf = BytesIO()
    ds.save_as(buf)
    buf.seek(0)
    again = pydicom.dcmread(buf)
    tells = [r.seq_item_tell for r in again.DirectoryRecordSequence]

    def offset(i: int | None) -> int:
        return 0 if i is None else tells[i]

    if _FIRST in ds:
        ds[_FIRST].value = offset(links["first"])
    if _LAST in ds:
        ds[_LAST].value = offset(links["last"])
    for rec, (nxt, lower) in zip(ds.DirectoryRecordSequence, links["records"]):
        if _NEXT in rec:
            rec[_NEXT].value = offset(nxt)
        if _LOWER in rec:
            rec[_LOWER].value = offset(lower)


# Identifying keys of the directory records (PS3.3 F.5, Basic Directory IOD: Patient, Study, Series and Image
# Keys) with their type in the record. The profile empties or removes them; a Type 1 key gets a dummy and a Type 2
# one is kept present (empty), so the directory stays valid.
RECORD_KEYS: dict[str, dict[int, str]] = {
    "PATIENT": {0x00100010: "2", 0x00100020: "1"},
    "STUDY": {0x00080020: "1", 0x00080030: "1", 0x00081030: "2", 0x00200010: "1", 0x00080050: "2"},
    "SERIES": {0x00080060: "1", 0x0020000E: "1", 0x00200011: "1"},
    "IMAGE": {0x00200013: "1"},
}


def _rtype(rec: Dataset) -> str:
    return str(rec.DirectoryRecordType) if "DirectoryRecordType" in rec else ""


def record_patients(ds: Dataset, links: dict) -> list[str]:
    """For each record, the PatientID of the PATIENT record above it ('' if none), following the links (not the
    file order, which the standard does not fix)."""
    records = list(ds.DirectoryRecordSequence)
    out = [""] * len(records)
    seen: set[int] = set()

    def visit(i: int | None, patient: str) -> None:
        while i is not None and i not in seen:
            seen.add(i)
            rec = records[i]
            own = str(rec.get("PatientID", "") or "") if _rtype(rec) == "PATIENT" else patient
            out[i] = own
            visit(links["records"][i][1], own)
            i = links["records"][i][0]

    visit(links["first"], "")
    for i, rec in enumerate(records):  # records no link reaches (offsets absent or broken): file order
        if i not in seen:
            out[i] = str(rec.get("PatientID", "") or "") if _rtype(rec) == "PATIENT" else (out[i - 1] if i else "")
    return out


def repair_records(ds: Dataset, pseudonyms: list[str]) -> None:
    """Type 1 keys emptied or removed by the profile get dummies (PatientID: `pseudonyms[i]` for record i, one
    per patient), Type 2 keys are kept present (empty)."""
    from pydicom.datadict import dictionary_VR

    from .engine import _DUMMY

    for rec, pseudonym in zip(ds.DirectoryRecordSequence, pseudonyms):
        for tag, type_ in RECORD_KEYS.get(_rtype(rec), {}).items():
            elem = rec.get(tag)
            if tag == 0x00100020 and pseudonym:  # one stand-in per patient: two patients stay two records
                rec.add_new(tag, "LO", pseudonym)
                continue
            empty = elem is None or elem.value in (None, "", [])
            if not empty:
                continue
            vr = dictionary_VR(tag)
            if type_ == "1":
                rec.add_new(tag, vr, pseudonym if tag == 0x00100020 else _DUMMY.get(vr, ""))
            elif elem is None:
                rec.add_new(tag, vr, "")


def drop_records(ds: Dataset, links: dict, drop: set[int]) -> dict:
    """Remove records `drop` (of files not written) and return the links between the records kept."""
    records = list(ds.DirectoryRecordSequence)

    def skip(i: int | None) -> int | None:
        while i is not None and i in drop:
            i = links["records"][i][0]
        return i

    keep = [i for i in range(len(records)) if i not in drop]
    index = {old: new for new, old in enumerate(keep)}

    def mapped(i: int | None) -> int | None:
        i = skip(i)
        return None if i is None else index[i]

    ds.DirectoryRecordSequence = [records[i] for i in keep]
    return {
        "first": mapped(links["first"]),
        "last": mapped(links["last"]),
        "records": [(mapped(links["records"][i][0]), mapped(links["records"][i][1])) for i in keep],
    }


def file_ids(ds: Dataset) -> list[tuple[str, ...] | None]:
    """Each record's ReferencedFileID as path components (None when it references no file)."""
    out: list[tuple[str, ...] | None] = []
    for rec in ds.DirectoryRecordSequence:
        ref = rec.get(0x00041500)  # ReferencedFileID (by tag: the element, not its value)
        if ref is None or ref.value in (None, ""):
            out.append(None)
        else:
            out.append((ref.value,) if isinstance(ref.value, str) else tuple(str(v) for v in ref.value))
    return out
