"""The source instances an SR cites: their headers, read back from the files the model saw.

An SR inherits Patient and Study from its evidence (PS3.3 C.17.2: it belongs to the source's study, or a PACS
files it as a new patient). The headers are read again with `stop_before_pixels`, so nothing but the manifest's
paths and UIDs travel from the run to here. Patient attributes a de-identified input lacks stay empty (type 2):
the SR then carries exactly what the source carried, no more.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..imaging.dicomweb import parse_dicomweb_uri

# Patient/Study attributes highdicom reads from the first evidence instance (all type 2 in the SR IODs).
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID")
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
NEEDS_DICOM = "an SR needs a DICOM source (a DICOM file or series directory)"


def read_header(path: str | Path) -> Any:
    """One DICOM file's header (no pixel data); a one-line `BadInput` when it is not DICOM or lacks UIDs."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from ..imaging.dicom import quiet_pydicom

    quiet_pydicom()
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        raise BadInput(f"{path}: {NEEDS_DICOM}") from None
    missing = [k for k in _REQUIRED if not ds.get(k)]
    if missing:
        raise BadInput(f"{path}: DICOM file without {', '.join(missing)}; an SR cannot reference it")
    return ds


def check_dicom_sources(sources: Sequence[str]) -> None:
    """Before any model loads: every `--image` must be a local DICOM file or a directory/glob of them.

    DICOMweb sources are refused too: their instances are read into memory, not kept, so the SR could not be
    checked against them (store the study locally first)."""
    from ..imaging.series import series_files

    if not sources:
        raise BadInput(f"--sr: no --image given; {NEEDS_DICOM}")
    for src in sources:
        if parse_dicomweb_uri(src) is not None:
            raise BadInput("--sr: DICOMweb sources are not supported yet; retrieve the series to a folder first")
        files = series_files(src)
        read_header(files[0] if files else src)


def evidence_for(entries: Sequence[dict[str, Any]]) -> list[Any]:
    """The header of each image the model saw (manifest `entries`), once per instance, in manifest order.

    Each entry's file is read again and must still hold the SOPInstanceUID the manifest recorded: the SR cites
    exactly the instances that were sampled (a CT series' chosen slices, not its whole folder)."""
    out: list[Any] = []
    seen: set[str] = set()
    for k, e in enumerate(entries):
        uid, src = e.get("sop_instance_uid"), e.get("source")
        if not uid or not src:
            raise BadInput(f"image {k + 1} of the prompt is not a DICOM instance; {NEEDS_DICOM}")
        if uid in seen:
            continue
        ds = read_header(src)
        if str(ds.SOPInstanceUID) != uid:
            raise BadInput(f"{src}: changed since it was read (another SOPInstanceUID)")
        seen.add(uid)
        out.append(ds)
    return out


def home_first(evidence: Sequence[Any]) -> list[Any]:
    """`evidence` with the instances of the last image's study first: highdicom files the SR in the first one's
    study, and in a comparison (prior, then current) the report belongs to the current study; instances of other
    studies are then listed as Pertinent Other Evidence."""
    if not evidence:
        return []
    home = str(evidence[-1].StudyInstanceUID)
    return sorted(evidence, key=lambda ds: str(ds.StudyInstanceUID) != home)


def for_sr(ds: Any) -> Any:
    """A copy of `ds`'s header with the type-2 Patient/Study attributes present (empty when absent), which
    highdicom reads unconditionally."""
    out = ds.copy()
    for key in _TYPE2:
        if key not in out:
            setattr(out, key, "")
    for key in ("StudyDate", "StudyTime"):
        if key not in out:
            setattr(out, key, None)
    return out
