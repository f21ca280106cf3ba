"""Single DICOM images (CR/DX, one CT or MR slice, single- or multi-frame) to 8-bit RGB.

Order of operations follows the DICOM grayscale pipeline and Google's serving container: stored values -> modality
LUT (rescale slope/intercept) -> grey levels -> MONOCHROME1 inverted so that dense tissue is bright. The default
grey levels are the container's current CXR path (google-health/medgemma 71a1135, "Remove Windowing for CXR
imaging": the whole dynamic range, no VOI window; `imaging.cxr`); `window="container-windowed"` is the container
before that commit (the file's own WindowCenter/WindowWidth when it has one, as its `window_accurate` applies it:
clip to center +/- width // 2, map linearly to 0..255, round half to even). Compressed transfer syntaxes are decoded
by pydicom's pixel-data plugins (pylibjpeg for JPEG, JPEG-LS, JPEG 2000 and RLE). Error messages never quote header
values: they may be PHI.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..errors import BadInput, ImageTooLarge, UnsupportedFormat
from .codestreams import check_frame, quiet_decoders
from .cxr import container_grey
from .deflate import is_deflated, read_deflated
from .options import DEFAULT_MAX_PIXELS, ImageOptions
from .square import scale_to_uint8

if TYPE_CHECKING:
    from pydicom.dataset import Dataset, FileDataset


def looks_like_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def quiet_pydicom() -> None:
    """Stop pydicom's value validation on read: its warnings and log lines quote header values (PHI)."""
    import logging

    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def read_dataset(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileDataset:
    """Parse a DICOM file's bytes; any parser failure becomes a one-line `BadInput`. A deflated dataset is
    inflated only as far as its image size needs (`imaging.deflate`), never whole."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    quiet_pydicom()  # pydicom's validation warnings quote header values (PHI)
    if is_deflated(data):
        return read_deflated(data, name, max_pixels)
    try:
        return pydicom.dcmread(io.BytesIO(data), force=not looks_like_dicom(data))
    except InvalidDicomError:
        raise UnsupportedFormat(f"{name}: not a DICOM file") from None
    except Exception as e:  # truncated headers surface as many exception types
        raise BadInput(f"{name}: corrupt or truncated DICOM ({type(e).__name__})") from None


def dicom_frame(ds: Dataset, name: str, options: ImageOptions) -> np.ndarray:
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


def dicom_to_rgb(ds: Dataset, name: str, options: ImageOptions) -> Image.Image:
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
        lut = apply_modality_lut(arr, ds)
    except Exception as e:
        raise BadInput(f"{name}: invalid modality LUT ({type(e).__name__})") from None
    monochrome1 = str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    window = options.window
    if window is None or window == "container":  # the serving container's current CXR path (imaging/cxr.py)
        return Image.fromarray(container_grey(np.asarray(lut), monochrome1, name), "L").convert("RGB")
    values = np.asarray(lut, dtype=np.float64)
    if window == "container-windowed":  # the container before 71a1135: the file's own window when it has one
        window = "file" if _has_window(ds) else "full"
    if window == "file":
        grey = file_window(values, ds, name)
    elif window == "full":
        grey = scale_to_uint8(values)
    elif window == "voi":
        grey = _file_voi(values, ds, name)
    else:
        center, width = window
        grey = scale_to_uint8(values, center - width / 2.0, center + width / 2.0)
    if monochrome1:
        grey = 255 - grey
    return Image.fromarray(grey, "L").convert("RGB")


def _has_window(ds: Dataset) -> bool:
    return "WindowCenter" in ds and "WindowWidth" in ds and bool(ds.WindowCenter) and bool(ds.WindowWidth)


def file_window(values: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    """The file's first WindowCenter/WindowWidth pair, as Google's serving container applied it to CXR before 71a1135.

    Clip to [center - width // 2, center + width // 2], map linearly onto 0..255, round half to even. Several
    windows in a file: the first (the container passes the attribute through; one window is the common case).
    """
    if not _has_window(ds):
        raise BadInput(f"{name}: --window file asked for, but the file has no WindowCenter/WindowWidth")
    try:
        c, w = (
            float(v[0] if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else v)
            for v in (ds.WindowCenter, ds.WindowWidth)
        )
    except (TypeError, ValueError, IndexError):
        raise BadInput(f"{name}: attribute WindowCenter or WindowWidth is malformed") from None
    if not (np.isfinite(c) and np.isfinite(w)) or w // 2 <= 0:
        raise BadInput(f"{name}: attribute WindowCenter or WindowWidth is invalid")
    lo, hi = c - w // 2, c + w // 2
    return np.round(np.interp(np.clip(values, lo, hi), (lo, hi), (0, 255)), 0).astype(np.uint8)


def _file_voi(values: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" not in ds and "WindowCenter" not in ds:
        raise BadInput(f"{name}: --window voi asked for, but the file has no VOI LUT or window")
    try:
        out = apply_voi_lut(values, ds, index=0)
    except Exception as e:
        raise BadInput(f"{name}: invalid VOI LUT or window ({type(e).__name__})") from None
    return scale_to_uint8(out)
