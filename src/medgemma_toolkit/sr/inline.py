"""The server's opt-in `medgemma.sr`: the SR returned in the response as a base64 DICOM part, never stored.

Pure functions, so the server route only has to collect the request's DICOM bytes and the answer:

    evidence = evidence_from_bytes(dicom_blobs, manifest)   # the instances the model saw, by SOPInstanceUID
    body["medgemma"] = {"sr": sr_field(question, answer.text, evidence, algorithm_of(mg))}

The SR is encoded in memory (no file, no temporary, no cache) and the field says what it is, so a client can write
it to disk or STOW it to its own PACS.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import BadInput, MedGemmaError
from .algorithm import AlgorithmInfo
from .evidence import NEEDS_DICOM

MEDIA_TYPE = "application/dicom"
MAX_SR_BYTES = 16 * 1024**2  # an SR of text and references is kilobytes; a larger one means a bug, not a report


def headers_from_bytes(blobs: Iterable[bytes]) -> dict[str, Any]:
    """SOPInstanceUID -> header (no pixel data) of each DICOM file among `blobs`; anything else is skipped."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from ..imaging.deflate import is_deflated, read_deflated
    from ..imaging.dicom import quiet_pydicom
    from ..imaging.options import DEFAULT_MAX_PIXELS

    quiet_pydicom()
    headers: dict[str, Any] = {}
    for blob in blobs:
        try:
            if is_deflated(blob[: 64 * 1024]):  # a deflated header could inflate without bound: imaging's reader
                ds = read_deflated(blob, "image", DEFAULT_MAX_PIXELS)
                for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
                    if key in ds:
                        del ds[key]
            else:
                ds = pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError, MedGemmaError):
            continue  # not DICOM: any image of the manifest it stands for is reported by `evidence_from_bytes`
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if uid:
            headers[uid] = ds
    return headers


def evidence_from_bytes(blobs: Sequence[bytes], manifest: Sequence[dict[str, Any]]) -> list[Any]:
    """The headers among `blobs` (DICOM files as sent) of exactly the instances in `manifest`, in its order.

    A manifest image without a SOPInstanceUID (a PNG), or one whose instance is not among `blobs`, is a `BadInput`
    (the server's 400): an SR must cite every image the model saw."""
    headers = headers_from_bytes(blobs)
    out, seen = [], set()
    for k, entry in enumerate(manifest):
        uid = str(entry.get("sop_instance_uid") or "")
        if not uid:
            raise BadInput(f"medgemma.sr: image {k + 1} is not a DICOM instance; {NEEDS_DICOM}")
        if uid not in headers:
            raise BadInput(f"medgemma.sr: image {k + 1} is not among the DICOM files of the request")
        if uid not in seen:
            seen.add(uid)
            out.append(headers[uid])
    if not out:
        raise BadInput(f"medgemma.sr: the request has no images; {NEEDS_DICOM}")
    return out


def encode(obj: Any) -> bytes:
    """A highdicom object as DICOM Part 10 bytes, in memory."""
    buf = io.BytesIO()
    obj.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    if len(data) > MAX_SR_BYTES:
        raise BadInput(f"medgemma.sr: report of {len(data):,} bytes is over the limit of {MAX_SR_BYTES:,}")
    return data


def part(obj: Any) -> dict[str, Any]:
    """`{"media_type", "data" (base64), "bytes", "sop_class_uid"}`; the UIDs of the patient's study stay inside."""
    data = encode(obj)
    return {
        "media_type": MEDIA_TYPE,
        "data": base64.b64encode(data).decode("ascii"),
        "bytes": len(data),
        "sop_class_uid": str(obj.SOPClassUID),
    }


def sr_field(
    question: str, answer: str, evidence: Sequence[Any], algo: AlgorithmInfo, thought: str | None = None
) -> dict[str, Any]:
    """The `medgemma.sr` field of a chat completion: the answer as a Comprehensive SR (see `answer_report`)."""
    from .answer import answer_report

    return part(answer_report(question, answer, evidence, algo, thought))


def regions_field(source: Any, regions: Sequence[Any], algo: AlgorithmInfo, frame: int | None = None) -> dict:
    """The `medgemma.sr` field of `/v1/medgemma/localize`: the boxes as a TID 1500 report over `source`."""
    from .regions import measurement_report

    return part(measurement_report(source, regions, algo, frame))
