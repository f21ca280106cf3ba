"""Read one input fully and check it before anything is written: a truncated or corrupt file is an error.

pydicom reads a file cut short without complaint (it stops at the end), so the checks are ours: the last
element must be complete, the file must end where its last element ends (a sequence of undefined length with its delimiter), no Type 1
attribute of the IOD's mandatory modules may be missing after the last element (a cut at an element boundary
leaves exactly those out), native pixel data must hold rows x columns x frames x samples x bits, encapsulated
pixel data must be a complete run of items, and an object whose IOD has pixels must have them.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput, UnsupportedFormat
from ..imaging.deflate import PIXEL_TAGS, dcmread_file
from ..imaging.options import DEFAULT_MAX_PIXELS
from .profile import table

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima"}


class Corrupt(BadInput):
    """A DICOM file that cannot be de-identified safely (truncated, corrupt); nothing is written for it."""


def _looks_dicom(path: Path, head: bytes) -> bool:
    if head[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES:
        return True
    return len(head) > 0 and not any(head[:128])  # a zero preamble cut short


def read_checked(path: Path) -> Dataset:
    """The dataset of `path`, complete and checked. UnsupportedFormat: not DICOM; Corrupt: a broken DICOM."""
    from pydicom.errors import InvalidDicomError

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(132)
            candidate = _looks_dicom(path, head)
            part10 = head[128:132] == b"DICM"
            if size < 132 and candidate:
                raise Corrupt(f"{path}: too short to be a DICOM file ({size} bytes)")
            try:  # a deflated file is inflated under a bound: pydicom alone would inflate a bomb whole
                ds = dcmread_file(f, str(path), DEFAULT_MAX_PIXELS, part10)
            except BadInput as e:
                raise Corrupt(f"{path}: {str(e).removeprefix(str(path) + ': ')}") from None
            except InvalidDicomError:
                raise (
                    Corrupt(f"{path}: corrupt DICOM") if candidate else UnsupportedFormat(f"{path}: not DICOM")
                ) from None
            if not part10 and "SOPClassUID" not in ds and "Rows" not in ds:
                if candidate:
                    raise Corrupt(f"{path}: corrupt or truncated DICOM (no SOP class)")
                raise UnsupportedFormat(f"{path}: not DICOM")
            _check_complete(path, ds, size)
            return ds
    except (Corrupt, UnsupportedFormat):
        raise
    except OSError as e:
        raise Corrupt(f"{path}: cannot read file ({e.strerror})") from None
    except Exception as e:  # truncated or corrupt headers surface as many exception types
        raise Corrupt(f"{path}: corrupt or truncated DICOM ({type(e).__name__})") from None


def _check_complete(path: Path, ds: Dataset, size: int) -> None:
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None)
    if ts is not None and ts.is_deflated:  # positions are in the inflated stream, not the file
        size = 1 << 62
    tags = list(ds.keys())
    if not tags:
        raise Corrupt(f"{path}: truncated DICOM (no data set after the header)")
    last = ds.get_item(tags[-1])
    length = getattr(last, "length", None)
    value_tell = getattr(last, "value_tell", None)
    if length is not None and length != 0xFFFFFFFF and value_tell is not None:
        pixels = int(tags[-1]) in PIXEL_TAGS  # cut pixel data is measured (and named) below
        value = None if pixels else last.value
        if (isinstance(value, (bytes, str)) and len(value) < length) or (not pixels and value_tell + length > size):
            raise Corrupt(f"{path}: truncated DICOM (the last element is cut short)")
        if size != 1 << 62 and value_tell + length < size:  # pydicom drops a tail shorter than an element header
            raise Corrupt(f"{path}: truncated DICOM (the file does not end on a complete element)")
    if length is None and size != 1 << 62 and getattr(last, "VR", None) == "SQ" and last.value.is_undefined_length:
        with open(path, "rb") as f:  # the last element is a sequence: its delimiter must end the file
            f.seek(max(size - 8, 0))
            if f.read(8) not in (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"):
                raise Corrupt(f"{path}: truncated DICOM (the file does not end on a complete element)")
    sop_class = ds.get("SOPClassUID") or getattr(meta, "MediaStorageSOPClassUID", None)
    if sop_class is None or ("SOPClassUID" in ds and "SOPInstanceUID" not in ds):  # (a DICOMDIR has only meta)
        raise Corrupt(f"{path}: truncated or incomplete DICOM (no SOP Class or Instance UID)")
    # A file cut at an element boundary parses; what shows the cut is that the Type 1 attributes of its IOD that
    # sort after its last element are missing (elements are stored in tag order). One missing before the last
    # element is a complete file that does not conform: kept (many real files lack one), not refused.
    end = int(tags[-1])
    missing = [t for t in table().type1_of(str(sop_class)) if t > end and t not in ds]
    if missing:
        raise Corrupt(
            f"{path}: truncated DICOM ({len(missing)} Type 1 attribute(s) of its IOD missing after its last "
            f"element, e.g. {_tag_name(min(missing))})"
        )
    pixel = next((t for t in PIXEL_TAGS if t in ds), None)
    if pixel is None:
        if table().needs_pixels(str(sop_class)) or "Rows" in ds:
            raise Corrupt(f"{path}: truncated DICOM (an image without pixel data)")
        return
    raw = ds.get_item(pixel)
    data = raw.value if raw is not None else None
    if data is None:
        raise Corrupt(f"{path}: truncated DICOM (empty pixel data)")
    if ts is not None and ts.is_encapsulated and pixel == 0x7FE00010:
        _check_fragments(path, bytes(data))
        return
    _check_native_length(path, ds, pixel, len(data))


def _tag_name(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _check_native_length(path: Path, ds: Dataset, pixel: int, have: int) -> None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = {0x7FE00008: 32, 0x7FE00009: 64}.get(pixel) or int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise Corrupt(f"{path}: corrupt DICOM (pixel data without a valid size)") from None
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422" and samples == 3:
        samples = 2  # 4:2:2: two chroma samples per two pixels (PS3.3 C.7.6.3.1.2), so 2 values a pixel
    need = (rows * cols * frames * samples * bits + 7) // 8
    if have < need:
        raise Corrupt(f"{path}: truncated pixel data ({have:,} of {need:,} bytes)")


def _check_fragments(path: Path, data: bytes) -> None:
    """Encapsulated pixel data: items (FFFE,E000) back to back, each complete, at least one after the offsets."""
    pos, items = 0, 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise Corrupt(f"{path}: truncated pixel data (a fragment header is cut short)")
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        if (group, elem) == (0xFFFE, 0xE0DD):
            break
        if (group, elem) != (0xFFFE, 0xE000) or pos + 8 + length > len(data):
            raise Corrupt(f"{path}: truncated or corrupt pixel data (fragment {items})")
        pos += 8 + length
        items += 1
    if items < 2:
        raise Corrupt(f"{path}: truncated pixel data (no frame after the offset table)")
