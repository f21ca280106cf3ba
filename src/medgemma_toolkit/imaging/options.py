"""User settings for turning files into model-ready images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from .budget import DecodeBudget

Window = Union[tuple[float, float], Literal["voi"], None]

DEFAULT_IMAGE_SIZE = 896  # every MedGemma image encoder takes 896x896 -> 256 tokens
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb threshold (2x its warning level)


@dataclass(frozen=True)
class ImageOptions:
    """How to read one image.

    window: DICOM only. None = full dynamic range after the modality LUT (as MedGemma's CXR notebooks do);
    (center, width) = that window; "voi" = the file's own VOI LUT / window.
    frame: DICOM multi-frame only; None = the middle frame.
    max_pixels: refuse images (or DICOM frames x rows x columns) above this many pixels.
    max_slices: CT/MR series: sample at most this many slices uniformly (MedGemma 1.5 uses 85).
    ct_windows: CT series: window preset packed into RGB ("notebook" or "server", see imaging/windows.py).
    max_patches: whole-slide images: sample at most this many tissue patches.
    patch_seed: whole-slide images: seed of the patch sampling (same seed, same patches).
    patch_order: whole-slide images: "random" (sampled order) or "spatial" (row by row).
    budget: pixels and CPU seconds shared by every image read with these options (`imaging.budget`); None = none.
    """

    window: Window = None
    frame: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_slices: int = 85
    ct_windows: str = "notebook"
    max_patches: int = 125
    patch_seed: int = 0
    patch_order: Literal["random", "spatial"] = "random"
    budget: DecodeBudget | None = field(default=None, compare=False)


def parse_window(text: str | None) -> Window:
    """Parse a CLI window: "voi", "C,W" (e.g. "40,400"), or None."""
    from ..errors import BadInput

    if text is None or text == "":
        return None
    if text.lower() == "voi":
        return "voi"
    try:
        c, w = (float(v) for v in text.split(","))
    except ValueError:
        raise BadInput(f"--window must be 'voi' or 'CENTER,WIDTH' (e.g. 40,400), got {text!r}") from None
    if w <= 0:
        raise BadInput("--window width must be positive")
    return (c, w)


def check_options(options: ImageOptions) -> ImageOptions:
    """Reject out-of-range series/slide settings up front, with the CLI flag's name."""
    from ..errors import BadInput
    from .windows import get_ct_windows

    if options.max_slices < 1:
        raise BadInput("--max-slices must be at least 1")
    if options.max_patches < 1:
        raise BadInput("--max-patches must be at least 1")
    if options.patch_order not in ("random", "spatial"):
        raise BadInput(f"--patch-order must be 'random' or 'spatial', got {options.patch_order!r}")
    get_ct_windows(options.ct_windows)
    return options
