"""Everything that turns medical image inputs into model-ready RGB squares (and text parts)."""

from __future__ import annotations

from .dicomweb import read_dicomweb_source
from .inputs import decode_image_bytes, load_image, load_parts, register_reader
from .options import DEFAULT_IMAGE_SIZE, ImageOptions, parse_window
from .pdf import read_pdf_source
from .square import pad_to_square, to_model_image
from .volume import read_series_source
from .wsi import read_slide_source

# Richer sources, tried before the 2D-file reader; the last registered is tried first (URLs, then slides, then
# series), and each reader imports its optional packages only when a source is its kind.
register_reader(read_series_source)
register_reader(read_slide_source)
register_reader(read_dicomweb_source)
register_reader(read_pdf_source)  # PDF documents: one image per page

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
