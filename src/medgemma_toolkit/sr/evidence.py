"""The source instances an SR cites: their headers, read back from where the model's images came from.

An SR belongs to the study of the images it reports on: its Patient and Study modules are copied from them (with
other values a PACS would file it under another patient). The headers are read again — local files with
`stop_before_pixels`, DICOMweb instances as WADO-RS metadata — so nothing but the manifest's sources and UIDs
travel from the run to here. Patient attributes a de-identified input lacks stay empty (type 2): the SR then
carries exactly what the source carried, no more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..imaging.dicomweb import parse_dicomweb_uri

# Patient/Study attributes highdicom reads from the first evidence instance (all type 2 in the SR IODs).
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID")
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
NEEDS_DICOM = "an SR needs a DICOM source (a DICOM file or series directory)"
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
# Refused rather than half-done: a patch is a region of one pyramid level, which an SR would have to cite as a
# spatial coordinate on the right tile instance; citing the whole level would claim the model saw all of it.
NO_WSI = "an SR of whole-slide patches is not supported (it would have to cite each patch's region of the slide)"


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
    """Before any model loads: every `--image` must be a local DICOM file, a directory/glob of them, or a DICOMweb
    URI (whose instances' headers are fetched again over WADO-RS when the SR is built)."""
    from ..imaging.series import series_files

    if not sources:
        raise BadInput(f"--sr: no --image given; {NEEDS_DICOM}")
    for src in sources:
        if parse_dicomweb_uri(src) is not None:
            continue
        files = series_files(src)
        ds = read_header(files[0] if files else src)
        if str(ds.SOPClassUID) == WSI_SOP_CLASS:
            raise BadInput(f"--sr: {src}: {NO_WSI}")


def evidence_for(
    entries: Sequence[dict[str, Any]], sources: Sequence[str] = (), known: Mapping[str, Any] | None = None
) -> list[Any]:
    """The header of each image the model saw (manifest `entries`), once per instance, in manifest order.

    `known` maps SOPInstanceUIDs to headers already in hand (the server's DICOM bytes sent inline): those are used
    as they are, since there is no file or server to read them again from.

    A local file is read again and must still hold the SOPInstanceUID the manifest recorded; an instance that came
    over DICOMweb (one of the `sources` URIs) is looked up there by its SOPInstanceUID and its metadata fetched
    (WADO-RS). Either way the SR cites exactly the instances that were sampled (a CT series' chosen slices, not
    its whole folder)."""
    refs = [r for r in (parse_dicomweb_uri(s) for s in sources) if r is not None]
    remote = _RemoteHeaders(refs)
    out: list[Any] = []
    seen: set[str] = set()
    for k, e in enumerate(entries):
        uid, src = e.get("sop_instance_uid"), e.get("source")
        if e.get("patch") is not None:
            raise BadInput(f"image {k + 1} of the prompt is a whole-slide patch; {NO_WSI}")
        if uid and known is not None and str(uid) in known:
            ds = known[str(uid)]
            missing = [key for key in _REQUIRED if not ds.get(key)]
            if missing:
                raise BadInput(f"image {k + 1}: DICOM without {', '.join(missing)}; an SR cannot reference it")
            if uid not in seen:
                seen.add(uid)
                out.append(ds)
            continue
        if not uid or not src:
            raise BadInput(f"image {k + 1} of the prompt is not a DICOM instance; {NEEDS_DICOM}")
        if uid in seen:
            continue
        if Path(str(src)).is_file():
            ds = read_header(src)
            if str(ds.SOPInstanceUID) != uid:
                raise BadInput(f"{src}: changed since it was read (another SOPInstanceUID)")
        else:
            ds = remote.header(str(uid), k)
        seen.add(uid)
        out.append(ds)
    return out


class _RemoteHeaders:
    """Instance metadata from the DICOMweb servers the images came from, one client per server."""

    def __init__(self, refs: Sequence[Any]) -> None:
        self.refs = list(refs)
        self.clients: dict[int, Any] = {}

    def header(self, uid: str, k: int) -> Any:
        from ..imaging.dicomweb import DicomWebError, _call, _client

        last: DicomWebError | None = None
        for i, ref in enumerate(self.refs):
            if i not in self.clients:
                self.clients[i] = _client(ref)
            client = self.clients[i]
            try:
                series = ref.series or self._series_of(ref, client, uid)
                if not series:
                    continue
                meta = _call(ref, "metadata", client.retrieve_instance_metadata, ref.study, series, uid)
            except DicomWebError as e:  # not on this server (404), or refused: try the next source
                last = e
                continue
            return _from_json(meta, ref.host)
        if last is not None:
            raise last
        raise BadInput(f"image {k + 1} of the prompt is not a local DICOM file nor found on its DICOMweb server")

    @staticmethod
    def _series_of(ref: Any, client: Any, uid: str) -> str | None:
        """A study URI: the series that holds the instance (QIDO-RS)."""
        from ..imaging.dicomweb import _call, _value

        found = _call(
            ref, "search", client.search_for_instances, ref.study,
            search_filters={"SOPInstanceUID": uid}, fields=["0020000E"],
        )  # fmt: skip
        series = _value(found[0], "0020000E") if found else None
        return str(series) if series else None


def _from_json(meta: Any, host: str) -> Any:
    from pydicom.dataset import Dataset

    try:
        ds = Dataset.from_json(meta, bulk_data_uri_handler=lambda *_: b"")
    except Exception:  # malformed DICOM JSON from the server
        raise BadInput(f"DICOMweb metadata from {host} is not valid DICOM JSON") from None
    missing = [k for k in _REQUIRED if not ds.get(k)]
    if missing:
        raise BadInput(f"DICOMweb metadata from {host} lacks {', '.join(missing)}")
    return ds


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
