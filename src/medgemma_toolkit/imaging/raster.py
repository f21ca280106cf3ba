"""Ordinary image files (PNG, JPEG, TIFF, BMP, WebP) to 8-bit RGB."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadInput, ImageTooLarge, UnsupportedFormat
from .budget import DecodeBudget
from .square import scale_to_uint8

FORMATS = {"PNG", "JPEG", "TIFF", "BMP", "WEBP", "MPO", "GIF"}


def read_raster(data: bytes, name: str, max_pixels: int, budget: DecodeBudget | None = None) -> Image.Image:
    """Decode image bytes to RGB, checking the pixel count the header declares before decoding (decompression-bomb
    guard) and charging it to the request's `budget`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in FORMATS:
                raise UnsupportedFormat(f"{name}: unsupported image format {img.format}")
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLarge(f"{name}: image is {w}x{h} pixels, over the limit of {max_pixels:,}")
            if budget is not None:
                budget.charge(w * h, name)
            img.load()
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name}: image exceeds the pixel limit (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise UnsupportedFormat(f"{name}: not a readable image (PNG, JPEG, TIFF, BMP, WebP or DICOM)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise BadInput(f"{name}: corrupt or truncated image ({type(e).__name__})") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB without losing the dynamic range of 16-bit or float greyscale."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        grey = scale_to_uint8(arr)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (0, 0, 0))  # black, like the square padding
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")
