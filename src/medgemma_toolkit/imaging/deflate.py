"""Deflated DICOM (Deflated Explicit VR Little Endian) read under a bound, so a small file cannot inflate to GiBs.

pydicom inflates a deflated dataset whole, before reading a single element: a 0.5 MB file can become 512 MiB (and
three times that at peak). Here the dataset is inflated in two steps: first at most `HEADER_BYTES`, enough to read
its header up to the pixel data; then only as far as that header's own Rows x Columns x frames x samples x bits
can need. A stream that goes on beyond that is refused before it is inflated.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import TYPE_CHECKING, BinaryIO

from ..errors import BadInput, ImageTooLarge

if TYPE_CHECKING:
    from pydicom.dataset import Dataset, FileDataset

DEFLATED = "1.2.840.10008.1.2.1.99"
HEADER_BYTES = 4 * 1024**2  # the inflated header (everything before the pixel data) may take at most this
SLACK_BYTES = 1024**2  # elements after the pixel data (padding, digital signatures) may add at most this
BYTES_PER_PIXEL_CAP = 8  # a frame at the pixel limit: 3 samples x 16 bits fits; whole files beyond it are refused
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData


def meta_end_and_syntax(data: bytes) -> tuple[int, str]:
    """(offset where the dataset starts, transfer syntax UID) of a Part 10 file, from its group-2 elements
    (always explicit VR little endian). The offset is -1 when `data` ends inside the file meta (the syntax may
    still be known); ("", -1) for data without the Part 10 preamble."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return -1, ""
    pos, syntax = 132, ""
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 2:
            return pos, syntax
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                break
            length, head = struct.unpack_from("<I", data, pos + 8)[0], 12
        else:
            length, head = struct.unpack_from("<H", data, pos + 6)[0], 8
        if elem == 0x0010:
            syntax = data[pos + head : pos + head + length].decode("ascii", "replace").strip("\0 ")
        pos += head + length
    return -1, syntax


def is_deflated(head: bytes) -> bool:
    """Whether a file starting with `head` (its first few KiB suffice) is in the deflated transfer syntax."""
    return meta_end_and_syntax(head)[1] == DEFLATED


def dcmread_file(f: BinaryIO, name: str, max_pixels: int, part10: bool) -> FileDataset:
    """`pydicom.dcmread` of an open file from its start, except that a deflated Part 10 dataset is inflated under
    `read_deflated`'s bound instead of whole. pydicom's own errors pass through; a bomb is `ImageTooLarge`."""
    import pydicom

    f.seek(0)
    if part10 and is_deflated(f.read(64 * 1024)):
        f.seek(0)
        return read_deflated(f.read(), name, max_pixels)
    f.seek(0)
    return pydicom.dcmread(f, force=not part10)


def _declared_pixel_bytes(header: Dataset, name: str, max_pixels: int) -> int:
    """Bytes the header's image attributes say the pixel data takes; refuses frames over the pixel limit."""
    try:
        rows, cols = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        bits = int(header.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError):
        raise BadInput(f"{name}: DICOM image size attributes are missing or invalid") from None
    if min(rows, cols, frames, samples, bits) < 0:
        raise BadInput(f"{name}: DICOM image size attributes are missing or invalid")
    if rows * cols > max_pixels:
        raise ImageTooLarge(f"{name}: DICOM frame is {cols}x{rows} pixels, over the limit of {max_pixels:,}")
    total = rows * cols * frames * samples * ((bits + 7) // 8)
    if total > max_pixels * BYTES_PER_PIXEL_CAP:
        raise ImageTooLarge(
            f"{name}: deflated DICOM declares {total:,} bytes of pixel data, over this reader's "
            f"limit of {max_pixels * BYTES_PER_PIXEL_CAP:,}"
        )
    return total


def read_deflated(data: bytes, name: str, max_pixels: int) -> FileDataset:
    """A deflated Part 10 file's bytes -> pydicom `FileDataset`, inflating no more than its header allows."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.filereader import read_dataset

    start, _ = meta_end_and_syntax(data)
    if start < 0:
        raise BadInput(f"{name}: corrupt or truncated DICOM file meta")
    try:
        meta = FileMetaDataset(read_dataset(io.BytesIO(data[132:start]), False, True))
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        head = inflater.decompress(data[start:], HEADER_BYTES)
        if not inflater.eof:
            header = read_dataset(io.BytesIO(head), False, True, stop_when=lambda tag, *_: int(tag) in PIXEL_TAGS)
            limit = HEADER_BYTES + _declared_pixel_bytes(header, name, max_pixels) + SLACK_BYTES
            rest = inflater.decompress(inflater.unconsumed_tail, limit - len(head) + 1)
            if len(head) + len(rest) > limit or not inflater.eof:
                raise ImageTooLarge(
                    f"{name}: deflated DICOM inflates beyond what its image size needs "
                    f"({limit:,} bytes): refused as a decompression bomb"
                )
            head += rest
            del rest
        ds = read_dataset(io.BytesIO(head), False, True)
    except BadInput:
        raise
    except Exception as e:  # zlib.error, truncated elements
        raise BadInput(f"{name}: corrupt or truncated deflated DICOM ({type(e).__name__})") from None
    return FileDataset(name, ds, preamble=data[:128], file_meta=meta, is_implicit_VR=False, is_little_endian=True)
