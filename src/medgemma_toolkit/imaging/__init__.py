"""Everything that turns medical image inputs into model-ready RGB squares (and text parts)."""

from __future__ import annotations

from .inputs import decode_image_bytes, load_image, load_parts, register_reader
from .options import DEFAULT_IMAGE_SIZE, ImageOptions, parse_window
from .square import pad_to_square, to_model_image

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "ImageOptions",
    "decode_image_bytes",
    "load_image",
    "load_parts",
    "pad_to_square",
    "parse_window",
    "register_reader",
    "to_model_image",
]
