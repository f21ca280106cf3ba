"""The image size a compressed DICOM frame declares, read from its codestream header before anything decodes it.

A decoder allocates what the codestream says, not what Rows and Columns say: a 16x16 DICOM whose JPEG 2000 stream
declares 20000x20000 would get a 1.6 GB buffer past `--max-pixels`. So each frame's own header (JPEG and JPEG-LS
SOF, JPEG 2000 SIZ, RLE segment count) must agree with the DICOM attributes, which were checked against the limit.
"""

from __future__ import annotations

import logging
import struct
import warnings
from typing import TYPE_CHECKING

from ..errors import BadInput, ImageTooLarge

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
J2K = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
RLE = "1.2.840.10008.1.2.5"
# Start-of-frame markers that carry the frame size (not DHT C4, JPG C8, DAC CC); F7 is JPEG-LS's SOF55.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_SCAN_LIMIT = 1 << 20  # the frame header sits before the entropy-coded data; never scan further than this


def quiet_decoders() -> None:
    """pydicom logs each failed decoder attempt with a full traceback at ERROR; the failure reaches the user as
    one `BadInput` line instead, so these logs are only noise on a server's stderr. Its warnings about invalid
    values quote those values (possibly PHI): silenced too."""
    logging.getLogger("pydicom.pixels").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG or JPEG-LS stream's start-of-frame segment; None if none is found."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, min(len(data), _SCAN_LIMIT)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def j2k_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 codestream's SIZ segment (raw or inside a JP2 file)."""
    at = data.find(b"\xff\x4f\xff\x51", 0, _SCAN_LIMIT)
    if at < 0 or at + 24 > len(data):
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, at + 8)
    return max(0, xsiz - xo), max(0, ysiz - yo)


def rle_segments(data: bytes) -> int | None:
    return struct.unpack_from("<I", data, 0)[0] if len(data) >= 64 else None


def check_frame(ds: Dataset, name: str, index: int, frames: int, rows: int, cols: int, max_pixels: int) -> None:
    """Refuse a compressed frame whose codestream disagrees with Rows/Columns or exceeds the pixel limit."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax not in JPEG | JPEG_LS | J2K and syntax != RLE:
        return
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(ds.PixelData, index, number_of_frames=frames)
    except Exception as e:  # missing, truncated or inconsistent fragments
        raise BadInput(f"{name}: cannot find frame {index} in the compressed pixel data ({type(e).__name__})") from None
    if syntax == RLE:
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        bits = int(getattr(ds, "BitsAllocated", 8) or 8)
        n = rle_segments(frame)
        if n is None or n != samples * ((bits + 7) // 8):
            raise BadInput(
                f"{name}: RLE frame has {n} segments; {samples} sample(s) of {bits} bits need "
                f"{samples * ((bits + 7) // 8)}"
            )
        return
    size = j2k_size(frame) if syntax in J2K else jpeg_size(frame)
    kind = "JPEG 2000" if syntax in J2K else "JPEG-LS" if syntax in JPEG_LS else "JPEG"
    if size is None:
        raise BadInput(f"{name}: {kind} frame has no readable size header")
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{name}: {kind} codestream declares {width}x{height} pixels, over the limit of {max_pixels:,}"
        )
    if (width, height) != (cols, rows):
        raise BadInput(
            f"{name}: {kind} codestream declares {width}x{height} pixels but the DICOM header says {cols}x{rows}"
        )
