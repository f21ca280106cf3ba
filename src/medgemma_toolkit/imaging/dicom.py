"""Single DICOM images (CR/DX, one CT or MR slice, single- or multi-frame) to 8-bit RGB.

Order of operations follows the DICOM grayscale pipeline and MedGemma's CXR notebooks: stored values -> modality
LUT (rescale slope/intercept) -> optional VOI window -> dynamic range to 8 bit -> MONOCHROME1 inverted so that
dense tissue is bright. Compressed transfer syntaxes are decoded by pydicom's pixel-data plugins (pylibjpeg for
JPEG, JPEG-LS, JPEG 2000 and RLE). Error messages never quote header values: they may be PHI.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..errors import BadInput, ImageTooLarge, UnsupportedFormat
from .codestreams import check_frame, quiet_decoders
from .deflate import is_deflated, read_deflated
from .options import DEFAULT_MAX_PIXELS, ImageOptions
from .square import scale_to_uint8


def looks_like_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_dataset(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Parse a DICOM file's bytes; any parser failure becomes a one-line `BadInput`. A deflated dataset is
    inflated only as far as its image size needs (`imaging.deflate`), never whole."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from .series import quiet_pydicom

    quiet_pydicom()  # pydicom's validation warnings quote header values (PHI)
    if is_deflated(data):
        return read_deflated(data, name, max_pixels)
    try:
        return pydicom.dcmread(io.BytesIO(data), force=not looks_like_dicom(data))
    except InvalidDicomError:
        raise UnsupportedFormat(f"{name}: not a DICOM file") from None
    except Exception as e:  # truncated headers surface as many exception types
        raise BadInput(f"{name}: corrupt or truncated DICOM ({type(e).__name__})") from None


def dicom_frame(ds, name: str, options: ImageOptions) -> np.ndarray:
    """Decode one frame (the middle one unless `options.frame` says otherwise) as a numpy array."""
    from pydicom.pixels import pixel_array

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise BadInput(f"{name}: DICOM file has no pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise BadInput(f"{name}: DICOM image size attributes are missing or invalid") from None
    if rows * cols > options.max_pixels:
        raise ImageTooLarge(f"{name}: DICOM frame is {cols}x{rows} pixels, over the limit of {options.max_pixels:,}")
    index = frames // 2 if options.frame is None else options.frame
    if not 0 <= index < frames:
        raise BadInput(f"{name}: frame {index} requested but the file has {frames} frame(s)")
    check_frame(ds, name, index, frames, rows, cols, options.max_pixels)  # the codestream's own size, first
    if options.budget is not None:
        options.budget.charge(rows * cols, name)
    quiet_decoders()
    try:
        return pixel_array(ds, index=index if frames > 1 else None)
    except Exception as e:  # missing codec, truncated pixel data, inconsistent attributes
        raise BadInput(f"{name}: cannot decode DICOM pixel data ({type(e).__name__})") from None


def dicom_to_rgb(ds, name: str, options: ImageOptions) -> Image.Image:
    """Apply the grayscale pipeline to one frame and return an RGB image."""
    from pydicom.pixels import apply_modality_lut

    arr = dicom_frame(ds, name, options)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples == 3:  # colour images arrive as RGB from pydicom's decoders
        rgb = arr if arr.dtype == np.uint8 else scale_to_uint8(arr)
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if samples != 1 or arr.ndim != 2:
        raise UnsupportedFormat(f"{name}: unsupported DICOM pixel layout ({samples} samples per pixel)")
    try:
        values = apply_modality_lut(arr, ds).astype(np.float64)
    except Exception as e:
        raise BadInput(f"{name}: invalid modality LUT ({type(e).__name__})") from None
    window = options.window
    if window == "voi":
        grey = _file_voi(values, ds, name)
    elif window is not None:
        center, width = window
        grey = scale_to_uint8(values, center - width / 2.0, center + width / 2.0)
    else:
        grey = scale_to_uint8(values)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = 255 - grey
    return Image.fromarray(grey, "L").convert("RGB")


def _file_voi(values: np.ndarray, ds, name: str) -> np.ndarray:
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" not in ds and "WindowCenter" not in ds:
        raise BadInput(f"{name}: --window voi asked for, but the file has no VOI LUT or window")
    try:
        out = apply_voi_lut(values, ds, index=0)
    except Exception as e:
        raise BadInput(f"{name}: invalid VOI LUT or window ({type(e).__name__})") from None
    return scale_to_uint8(out)
