"""Prior before current: order single DICOM images by when they were taken, for longitudinal comparison.

Google's longitudinal notebook sends the prior image, then the current one. When a user gives DICOM files without
saying which is which, their headers say: StudyDate (+ StudyTime), else AcquisitionDateTime (or AcquisitionDate +
AcquisitionTime), oldest first. Only the headers are read. Dates are PHI: they are compared, never printed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .deflate import is_deflated

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DATE_TAGS = ("StudyDate", "StudyTime", "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime")


@dataclass(frozen=True)
class Ordered:
    sources: list[str]
    notice: str | None  # one line for stderr: what was done (never the dates themselves)


def _digits(value: object) -> str:
    return "".join(c for c in str(value or "") if c.isdigit())


def acquired_key(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(study date-time, acquisition date-time) as digit strings that sort in time order, or None when the file
    is not a readable single DICOM file or has neither date."""
    import pydicom

    from .dicom import looks_like_dicom, quiet_pydicom

    p = Path(path)
    try:
        if not p.is_file():
            return None
        with open(p, "rb") as f:
            head = f.read(64 * 1024)
        if not looks_like_dicom(head) or is_deflated(head):  # a deflated header could inflate without bound
            return None
        quiet_pydicom()
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=list(DATE_TAGS))
    except Exception:  # unreadable headers simply give no order; the image reader reports them later
        return None
    return dataset_key(ds)


def bytes_key(data: bytes) -> tuple[str, str] | None:
    """`dataset_key` of a DICOM file's bytes (headers only), or None."""
    import io

    import pydicom

    from .dicom import looks_like_dicom, quiet_pydicom

    if not looks_like_dicom(data[:132]) or is_deflated(data[: 64 * 1024]):
        return None
    try:
        quiet_pydicom()
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=list(DATE_TAGS))
    except Exception:
        return None
    return dataset_key(ds)


def dataset_key(ds: Dataset) -> tuple[str, str] | None:
    """(study date-time, acquisition date-time) of a dataset as digit strings that sort in time order, or None."""
    study = _digits(ds.get("StudyDate"))
    study = study + _digits(ds.get("StudyTime")) if study else ""
    acquired = _digits(ds.get("AcquisitionDateTime")) or (
        _digits(ds.get("AcquisitionDate")) + _digits(ds.get("AcquisitionTime")) if ds.get("AcquisitionDate") else ""
    )
    if not (study or acquired):
        return None
    # Digit strings compare as times only at equal length: pad to YYYYMMDDHHMMSS + 6 fraction digits.
    return (study or acquired).ljust(20, "0")[:20], acquired.ljust(20, "0")[:20]


def order_by_acquisition(sources: Sequence[str]) -> Ordered:
    """`sources` oldest first when every one is a DICOM file with a date; otherwise as given (with a notice when
    some DICOM files had dates and others not)."""
    given = [str(s) for s in sources]
    if len(given) < 2:
        return Ordered(given, None)
    if not all(_is_dicom_file(s) for s in given):
        return Ordered(given, None)  # not all DICOM files (PNG, a series folder): the order given is the order
    keys = [acquired_key(s) for s in given]
    known = [k for k in keys if k is not None]
    if len(known) < len(keys):
        return Ordered(
            given, "note: images kept in the order given: not every DICOM file has a StudyDate or AcquisitionDateTime"
        )
    order = sorted(range(len(given)), key=lambda i: (known[i], i))
    moved = " (reordered)" if order != list(range(len(given))) else ""
    return Ordered(
        [given[i] for i in order],
        f"note: {len(given)} DICOM images ordered by StudyDate/AcquisitionDateTime, oldest first{moved}",
    )


def order_groups(groups: list[list[Any]]) -> tuple[list[list[Any]], str | None]:
    """The server's counterpart of `order_by_acquisition`: each group holds the parts of one image source; when every
    group is a single DICOM image (its `info` carries an `acquired` key, see `manifest.dicom_info`), they are put
    oldest first if all are dated, else kept with a notice. Other mixes are kept as given, silently."""
    if len(groups) < 2:
        return groups, None
    # parts are ImageParts and TextParts (prompts' plain types); only images carry `info`
    infos = [(getattr(g[0], "info", None) or {}) if len(g) == 1 else {} for g in groups]
    if not all("acquired" in i for i in infos):
        return groups, None
    keys = [i["acquired"] for i in infos]
    if any(k is None for k in keys):
        return groups, "images kept in the order given: not every DICOM image has a StudyDate or AcquisitionDateTime"
    order = sorted(range(len(groups)), key=lambda k: (keys[k], k))
    moved = " (reordered)" if order != list(range(len(groups))) else ""
    return [groups[k] for k in order], f"{len(groups)} DICOM images ordered by StudyDate/AcquisitionDateTime{moved}"


def _is_dicom_file(source: str) -> bool:
    from .dicom import looks_like_dicom

    try:
        p = Path(source)
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            return looks_like_dicom(f.read(132))
    except (OSError, ValueError):
        return False
