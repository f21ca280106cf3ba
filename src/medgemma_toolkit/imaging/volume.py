"""An ordered CT/MR volume -> the parts MedGemma 1.5 expects: up to 85 slice images, each followed by "SLICE n".

CT slices carry three HU windows in R, G, B (`windows.py`); MR and other modalities are min-max normalised over
the whole volume (not per slice, so intensities stay comparable between slices), as Google's notebooks do.
Slices are sampled uniformly over the ordered stack; labels count the sampled slices from 1, as the notebooks do.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import BadInput
from ..prompts.messages import ImagePart, Part, TextPart
from .options import ImageOptions
from .series import SeriesVolume, load_series, series_files
from .square import scale_to_uint8, to_model_image
from .windows import get_ct_windows, window_lut, windows_to_rgb

DEFAULT_MAX_SLICES = 85  # MedGemma 1.5's CT/MR protocol
_LUT_MAX_SPAN = 1 << 17  # stored-value ranges up to this use a lookup table (16-bit data always does)


def sample_indices(n: int, k: int) -> list[int]:
    """`k` indices spread evenly over `n` slices, first and last included; all of them when n <= k.

    >>> sample_indices(10, 4)
    [0, 3, 6, 9]
    """
    if k < 1:
        raise BadInput("the number of slices to sample must be at least 1")
    if n <= k:
        return list(range(n))
    if k == 1:
        return [n // 2]
    return [int(i) for i in np.round(np.linspace(0, n - 1, k)).astype(int)]


def volume_rgb(vol: SeriesVolume, indices: list[int], options: ImageOptions) -> np.ndarray:
    """(len(indices), rows, cols, 3) uint8 slices as the model sees them before padding and resizing."""
    idx = np.asarray(indices)
    if vol.modality == "CT":
        windows = get_ct_windows(options.ct_windows)
        stored = vol.stored[idx]
        same_rescale = np.all(vol.slopes == vol.slopes[0]) and np.all(vol.intercepts == vol.intercepts[0])
        if same_rescale and stored.dtype.kind in "iu" and stored.size:
            lo, hi = int(stored.min()), int(stored.max())
            if hi - lo < _LUT_MAX_SPAN:
                lut = window_lut(windows, float(vol.slopes[0]), float(vol.intercepts[0]), lo, hi)
                return lut[stored.astype(np.int32) - lo] if lo else lut[stored]
        return windows_to_rgb(vol.hu(idx), windows)
    # MR and the rest: one min-max over the whole volume.
    values = vol.hu()
    lo, hi = float(values.min()), float(values.max())
    grey = scale_to_uint8(values[idx], lo, hi)
    return np.repeat(grey[..., None], 3, axis=-1)


def volume_parts(vol: SeriesVolume, options: ImageOptions, size: int) -> list[Part]:
    """Image, "SLICE n", image, "SLICE n", ... for the sampled slices."""
    rows, cols = vol.stored.shape[1:]
    if rows * cols > options.max_pixels:
        raise BadInput(f"slices are {cols}x{rows} pixels, over the limit of {options.max_pixels:,}")
    indices = sample_indices(vol.num_slices, options.max_slices)
    rgb = volume_rgb(vol, indices, options)
    parts: list[Part] = []
    for n, arr in enumerate(rgb, start=1):
        parts.append(ImagePart(to_model_image(Image.fromarray(arr, "RGB"), size)))
        parts.append(TextPart(f"SLICE {n}"))
    return parts


def read_series_source(source: str, options: ImageOptions, size: int) -> list[Part] | None:
    """`load_parts` reader for a series directory or a glob of DICOM files (None for anything else)."""
    files = series_files(source)
    if files is None:
        return None
    return volume_parts(load_series(files), options, size)
