"""Malicious inputs built on demand, for the hostile-input tests and `benchmarks/hostile.py`.

Each builder returns a small byte string whose decoding would, without the imaging layer's bounds, cost far more
memory or CPU than its size suggests. Nothing here is written to disk unless the caller does so.
"""

from __future__ import annotations

import struct
import zlib

DEFLATED = "1.2.840.10008.1.2.1.99"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _part10(transfer_syntax: str, attrs: dict) -> tuple[bytes, bytes]:
    """(preamble + file meta, dataset bytes in explicit VR little endian) for a tiny image header."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE  # type: ignore[assignment]  # pydicom types it UID; the setter takes str
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax  # type: ignore[assignment]  # pydicom types it UID; the setter takes str
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    head, body = DicomBytesIO(), DicomBytesIO()
    for f in (head, body):
        f.is_little_endian, f.is_implicit_VR = True, False
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    write_dataset(body, ds)
    return head.getvalue(), body.getvalue()


def deflate_bomb(inflated_mib: int = 512, rows: int = 16, cols: int = 16) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM of `rows` x `cols` whose pixel data element holds
    `inflated_mib` MiB of zeros: about 1 KiB on the wire per MiB inflated."""
    head, body = _part10(DEFLATED, {"Rows": rows, "Columns": cols})
    n = inflated_mib * 1024**2
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [c.compress(body + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, n))]
    chunk = bytes(1024**2)
    out += [c.compress(chunk) for _ in range(inflated_mib)]
    out.append(c.flush())
    return head + b"".join(out)


def j2k_frame(rows: int, cols: int, declared: tuple[int, int] | None = None) -> bytes:
    """A JPEG 2000 codestream of a `rows` x `cols` black image (at least 32 px a side); with `declared`, its SIZ
    segment is rewritten to claim (width, height) instead: what a decoder trusts when it allocates."""
    import numpy as np
    import openjpeg

    data = bytearray(openjpeg.encode(np.zeros((rows, cols), np.uint8), bits_stored=8))
    if declared is not None:
        assert data[:4] == b"\xff\x4f\xff\x51"
        struct.pack_into(">II", data, 8, *declared)  # Xsiz, Ysiz (image offsets stay 0)
        struct.pack_into(">II", data, 24, *declared)  # XTsiz, YTsiz: one tile the size of the claimed image
    return bytes(data)


def j2k_dicom(rows: int, cols: int, declared: tuple[int, int] | None = None, frame: bytes | None = None) -> bytes:
    """A JPEG 2000 Lossless DICOM whose header says `rows` x `cols`; its codestream may declare otherwise."""
    import io

    from pydicom import dcmread
    from pydicom.encaps import encapsulate

    head, body = _part10("1.2.840.10008.1.2.4.90", {"Rows": rows, "Columns": cols})
    ds = dcmread(io.BytesIO(head + body))
    ds.PixelData = encapsulate([frame if frame is not None else j2k_frame(rows, cols, declared)])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def rle_frame(rows: int, cols: int, bits: int = 16) -> bytes:
    """A DICOM RLE Lossless frame of `rows` x `cols` zeros: one segment per byte of the sample, each a run of
    128-byte replicate runs, so a 64 Mpx slice costs ~1 MB per segment on the wire."""
    segments = bits // 8
    n = rows * cols
    runs, tail = divmod(n, 128)
    segment = bytes([0x81, 0]) * runs + (bytes([257 - tail, 0]) if tail > 1 else b"\x00\x00" if tail else b"")
    if len(segment) % 2:
        segment += b"\0"
    header = struct.pack("<I", segments)
    offsets, pos = [], 64
    for _ in range(segments):
        offsets.append(pos)
        pos += len(segment)
    header += b"".join(struct.pack("<I", o) for o in offsets) + bytes(4 * (15 - segments))
    return header + segment * segments


def rle_series_zip(slices: int = 8, rows: int = 8000, cols: int = 8000) -> bytes:
    """A stored ZIP of a CT series of RLE Lossless slices of zeros (what the web page uploads as
    `data:application/zip`): `slices` x `rows` x `cols` voxels from a body of ~2 MB per 64 Mpx slice."""
    import io
    import zipfile

    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    from .synthetic_dicom import SeriesSpec, make_slice

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        frame = rle_frame(rows, cols)
        for i in range(slices):
            ds = make_slice(SeriesSpec(slices=slices, rows=8, cols=8), i)
            ds.file_meta.TransferSyntaxUID = RLELossless
            ds.Rows, ds.Columns = rows, cols
            ds.PixelData = encapsulate([frame])
            ds["PixelData"].VR = "OB"
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            zf.writestr(f"slice{i:03d}.dcm", out.getvalue())
    return buf.getvalue()
