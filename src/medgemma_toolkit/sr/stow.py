"""STOW-RS: store DICOM instances (our SRs, or any file) on a DICOMweb server through dicomweb-client.

The session is the one reading uses (`imaging.dicomweb._session`): credentials from the environment
(``MEDGEMMA_DICOMWEB_TOKEN``, or ``_USER`` + ``_PASSWORD``) sent to the target's origin only, timeouts, no redirects
(a redirect could carry the instances off the operator's network) and POSTs never retried (a retried store could
double-file a result). Messages name the host, the file and the HTTP status, never UIDs or patient values.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import BadInput
from ..imaging.dicomweb import DicomWebError, DicomWebRef, _call, _client

# DICOM PS3.18 Table 10.5.3-1 (Store Instances Response Module): the failure reasons a server gives per instance.
_FAILURES = {
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "referenced transfer syntax not supported",
    0x0110: "processing failure",
    0x0122: "referenced SOP class not supported",
}


@dataclass(frozen=True)
class Stored:
    """One instance's outcome: the file (or name) it came from and whether the server stored it."""

    name: str
    host: str
    ok: bool
    reason: str = ""

    def line(self) -> str:
        if self.ok:
            return f"stored {self.name} on {self.host}"
        return f"not stored: {self.name} on {self.host} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.name, "host": self.host, "stored": self.ok, "reason": self.reason or None}


def parse_stow_url(url: str) -> DicomWebRef:
    """The DICOMweb root to store into: ``http(s)://host[:port]/path``, ``dicomweb://host/path`` (HTTPS) or
    ``dicomweb+http://host/path``; no credentials, query or study path in it."""
    low = url[:16].lower()
    if low.startswith("dicomweb+http://"):
        url = "http://" + url[len("dicomweb+http://") :]
    elif low.startswith("dicomweb://"):
        url = "https://" + url[len("dicomweb://") :]
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise BadInput("--stow/--to: give the DICOMweb root as http(s)://HOST[:PORT]/PATH, e.g. .../dicom-web")
    if parts.username or parts.password:
        raise BadInput("put DICOMweb credentials in MEDGEMMA_DICOMWEB_USER/PASSWORD or _TOKEN, not in the URL")
    if parts.query or parts.fragment:
        raise BadInput("--stow/--to: the DICOMweb URL must not carry a query or fragment")
    path = parts.path.rstrip("/")
    if "/studies" in path + "/":
        raise BadInput("--stow/--to: give the DICOMweb root (e.g. http://pacs/dicom-web), not a study URL")
    return DicomWebRef(f"{parts.scheme.lower()}://{parts.netloc}{path}", parts.hostname, study="")


def read_for_stow(paths: Sequence[str | Path]) -> list[tuple[str, Any]]:
    """Every file read in full before anything is sent: a bad file fails the command, not half a transfer."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from ..imaging.dicom import quiet_pydicom

    quiet_pydicom()
    out = []
    for p in paths:
        if not Path(p).is_file():
            raise BadInput(f"{p}: no such file")
        try:
            ds = pydicom.dcmread(str(p))
        except (InvalidDicomError, OSError, ValueError, EOFError):
            raise BadInput(f"{p}: not a DICOM file") from None
        if not ds.get("SOPInstanceUID") or not ds.get("StudyInstanceUID"):
            raise BadInput(f"{p}: DICOM file without SOPInstanceUID or StudyInstanceUID; cannot be stored")
        out.append((str(p), ds))
    return out


def _outcome(name: str, ref: DicomWebRef, response: Any) -> Stored:
    failed = list(getattr(response, "FailedSOPSequence", None) or [])
    if failed:
        code = failed[0].get("FailureReason")
        reason = _FAILURES.get(int(code), f"failure reason {int(code):#06x}") if code is not None else "refused"
        return Stored(name, ref.host, False, reason)
    return Stored(name, ref.host, True)


def stow(items: Sequence[tuple[str, Any]], url: str) -> Iterator[Stored]:
    """Store each `(name, dataset)` on the server at `url`, one STOW-RS request per instance (so each gets its own
    outcome), yielding as they complete. A transport or HTTP failure raises a one-line `DicomWebError`."""
    ref = parse_stow_url(url)
    client = _client(ref)
    for name, ds in items:
        response = _call(ref, "store", client.store_instances, [ds])
        if response is None:
            raise DicomWebError(f"DICOMweb store on {ref.host}: no answer for {name}")
        yield _outcome(name, ref, response)
