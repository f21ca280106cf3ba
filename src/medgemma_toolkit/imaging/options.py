"""User settings for turning files into model-ready images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from .budget import DecodeBudget

WindowName = Literal["container", "container-windowed", "voi", "file", "full"]
WINDOW_NAMES: tuple[str, ...] = ("container", "container-windowed", "voi", "file", "full")
Window = Union[tuple[float, float], WindowName, None]

DEFAULT_IMAGE_SIZE = 896  # every MedGemma image encoder takes 896x896 -> 256 tokens
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb threshold (2x its warning level)


@dataclass(frozen=True)
class ImageOptions:
    """How to read one image.

    window: DICOM only. None (default) = "container": Google's serving container's current CXR path, no window,
        the whole dynamic range in its arithmetic (google-health/medgemma 71a1135, "Remove Windowing for CXR
        imaging"; `imaging/cxr.py`); "container-windowed" = the container before 71a1135 (04b60aca): the file's
        WindowCenter/WindowWidth when it has them (`dicom.file_window`), else the full range; "file" = that
        window, required; "full" = always the full range (min-max); (center, width) = that window;
        "voi" = the DICOM standard's VOI LUT function via pydicom (VOI LUT sequences too).
    frame: DICOM multi-frame only; None = the middle frame.
    max_pixels: refuse images (or DICOM frames x rows x columns) above this many pixels.
    max_slices: CT/MR series: sample at most this many slices uniformly (MedGemma 1.5 uses 85).
    slice_order: CT/MR series: "instance_number" (Google's CT notebook; falls back to position when numbers are
        missing or repeated) or "position" (along the slice normal).
    slice_sampling: CT/MR series: "notebook" (indices round(i/k*(n-1)) for i = 1..k, Google's CT notebook) or
        "linspace" (k evenly spaced indices, first and last slice included).
    ct_windows: CT series: window preset packed into RGB ("notebook" or "server", see imaging/windows.py).
    max_patches: whole-slide images: sample at most this many tissue patches.
    patch_seed: whole-slide images: seed of the patch sampling (same seed, same patches).
    patch_order: whole-slide images: "random" (sampled order) or "spatial" (row by row).
    pad: 2D images: pad to a centred square before resizing (True), or stretch to the square as the image
        processor does (False); None = the prompt preset's choice (padded, except `cxr-longitudinal`, which follows
        Google's longitudinal notebook: `preprocess_image = False`). `padded(options)` reads it.
    budget: pixels and CPU seconds shared by every image read with these options (`imaging.budget`); None = none.
    pdf_text: PDFs: each page's text layer as text parts with page markers (True) or each page as an image
        (False); None = images for a model with a vision tower, text for a text-only model (`MedGemma.media`).
    max_text_chars: PDF text layers: characters one document may contribute; more is refused, not cut.
    """

    window: Window = None
    frame: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_slices: int = 85
    slice_order: Literal["instance_number", "position"] = "instance_number"
    slice_sampling: Literal["notebook", "linspace"] = "notebook"
    ct_windows: str = "notebook"
    max_patches: int = 125
    patch_seed: int = 0
    patch_order: Literal["random", "spatial"] = "random"
    pad: bool | None = None
    budget: DecodeBudget | None = field(default=None, compare=False)
    pdf_text: bool | None = None
    max_text_chars: int = 200_000


def padded(options: ImageOptions) -> bool:
    """Whether 2D images are padded to a square: yes unless asked otherwise (None counts as yes here; presets
    that want otherwise set it before images load, see `MedGemma.request`)."""
    return options.pad is not False


def parse_window(text: str | None) -> Window:
    """Parse a CLI window: one of `WINDOW_NAMES`, "C,W" (e.g. "40,400"), or None (the default choice)."""
    from ..errors import BadInput

    if text is None or text == "":
        return None
    if text.lower() in WINDOW_NAMES:
        return text.lower()  # type: ignore[return-value]
    try:
        c, w = (float(v) for v in text.split(","))
    except ValueError:
        names = ", ".join(f"'{n}'" for n in WINDOW_NAMES)
        raise BadInput(f"--window must be {names} or 'CENTER,WIDTH' (e.g. 40,400), got {text[:40]!r}") from None
    if w <= 0:
        raise BadInput("--window width must be positive")
    return (c, w)


def check_options(options: ImageOptions) -> ImageOptions:
    """Reject out-of-range series/slide settings up front, with the CLI flag's name."""
    from ..errors import BadInput
    from .windows import get_ct_windows

    if options.max_slices < 1:
        raise BadInput("--max-slices must be at least 1")
    if options.slice_order not in ("instance_number", "position"):
        raise BadInput(f"--slice-order must be 'instance_number' or 'position', got {options.slice_order!r}")
    if options.slice_sampling not in ("notebook", "linspace"):
        raise BadInput(f"--slice-sampling must be 'notebook' or 'linspace', got {options.slice_sampling!r}")
    if options.max_patches < 1:
        raise BadInput("--max-patches must be at least 1")
    if options.patch_order not in ("random", "spatial"):
        raise BadInput(f"--patch-order must be 'random' or 'spatial', got {options.patch_order!r}")
    get_ct_windows(options.ct_windows)
    return options
