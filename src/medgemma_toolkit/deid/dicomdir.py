"""DICOMDIR: its records hold byte offsets to each other, which change when de-identification shortens values.

The record links are read before de-identifying (offset -> record index), and after it the dataset is encoded,
each record's new position read back, and the offsets rewritten (they are fixed-size UL values, so the second
encoding has the same layout).
"""

from __future__ import annotations

from io import BytesIO

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_NEXT, _LOWER = 0x00041400, 0x00041420
_FIRST, _LAST = 0x00041200, 0x00041202


def is_dicomdir(ds) -> bool:
    meta = getattr(ds, "file_meta", None)
    return (
        str(getattr(meta, "MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY and "DirectoryRecordSequence" in ds
    )


def record_links(ds) -> dict:
    """Links between records by index, from the offsets as read."""
    records = list(ds.DirectoryRecordSequence)
    at = {getattr(r, "seq_item_tell", None): i for i, r in enumerate(records)}

    def index(offset) -> int | None:
        return None if not offset else at.get(int(offset))

    return {
        "first": index(ds.get(_FIRST).value if _FIRST in ds else 0),
        "last": index(ds.get(_LAST).value if _LAST in ds else 0),
        "records": [
            (index(r[_NEXT].value if _NEXT in r else 0), index(r[_LOWER].value if _LOWER in r else 0)) for r in records
        ],
    }


def relink(ds, links: dict) -> None:
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
