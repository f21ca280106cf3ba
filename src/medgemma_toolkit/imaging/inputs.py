"""One entry point from whatever the user gave (path, bytes) to model-ready content parts.

A 2D image becomes one `ImagePart`; richer sources (CT/MR series, whole slides, DICOMweb) become several images
interleaved with text parts. Readers are tried in order, so a new source type is one function and one line here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from ..core.messages import ImagePart, Part
from ..errors import BadInput
from .dicom import dicom_to_rgb, looks_like_dicom, read_dataset
from .manifest import dicom_info, with_source
from .options import DEFAULT_IMAGE_SIZE, ImageOptions, padded
from .raster import read_raster
from .square import to_model_image

# A reader gets (source, options, size) and returns parts, or None if the source is not its kind.
Reader = Callable[[str, ImageOptions, int], "list[Part] | None"]
_READERS: list[Reader] = []

MAX_FILE_BYTES = 2 * 1024**3  # a single 2D image file above 2 GiB is not a 2D image


def register_reader(reader: Reader, first: bool = True) -> None:
    """Add a source reader (e.g. DICOM series directories); `first` puts it before the 2D-file reader."""
    if first:
        _READERS.insert(0, reader)
    else:
        _READERS.append(reader)


def decode_image_bytes(data: bytes, name: str, options: ImageOptions = ImageOptions()) -> Image.Image:
    """DICOM or raster bytes to an RGB image (original size and aspect)."""
    if not data:
        raise BadInput(f"{name}: file is empty")
    if looks_like_dicom(data):
        return dicom_to_rgb(read_dataset(data, name, options.max_pixels), name, options)
    try:
        return read_raster(data, name, options.max_pixels, options.budget)
    except BadInput:
        # DICOM without the Part 10 preamble: try once more as DICOM before giving up.
        if name.lower().endswith((".dcm", ".dicom")):
            return dicom_to_rgb(read_dataset(data, name, options.max_pixels), name, options)
        raise


def read_file_bytes(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        exists = p.exists()
    except (OSError, ValueError):  # a name too long for the file system, or with NUL
        raise BadInput(f"{str(p)[:60]}...: not a usable file path") from None
    if not exists:
        raise BadInput(f"{p}: file not found")
    if p.is_dir():
        raise BadInput(f"{p}: is a directory, not an image file")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise BadInput(f"{p}: file is too large ({size:,} bytes) for a 2D image")
    try:
        return p.read_bytes()
    except OSError as e:
        raise BadInput(f"{p}: cannot read file ({e.strerror})") from None


def load_image(path: str | os.PathLike[str], options: ImageOptions = ImageOptions()) -> Image.Image:
    """Read one 2D image file (PNG/JPEG/TIFF/BMP/WebP/DICOM) as RGB at its original size."""
    return decode_image_bytes(read_file_bytes(path), str(path), options)


def _read_2d_file(source: str, options: ImageOptions, size: int) -> list[Part]:
    data = read_file_bytes(source)
    if looks_like_dicom(data):
        ds = read_dataset(data, source, options.max_pixels)
        rgb = dicom_to_rgb(ds, source, options)
        return [ImagePart(to_model_image(rgb, size, padded(options)), info=dicom_info(source, ds))]
    return [ImagePart(to_model_image(decode_image_bytes(data, source, options), size, padded(options)))]


def load_parts(
    source: str | os.PathLike[str], options: ImageOptions = ImageOptions(), size: int = DEFAULT_IMAGE_SIZE
) -> list[Part]:
    """Model-ready parts for one user-given image source."""
    src = str(source)
    parts = load_rich_parts(src, options, size)
    return parts if parts is not None else with_source(_read_2d_file(src, options, size), src)


def load_rich_parts(source: str, options: ImageOptions, size: int) -> list[Part] | None:
    """Parts from the registered readers (series, slides, DICOMweb), or None for a plain 2D file, which callers
    with their own resizing (MedSigLIP's) then decode at its original size."""
    for reader in _READERS:
        parts = reader(source, options, size)
        if parts is not None:
            return with_source(parts, source)
    return None
