"""Make any RGB image what MedGemma's encoder takes: padded to a centred square on black, then resized.

MedGemma was trained on non-square images padded this way; resizing here (with the image processor's own bilinear
filter) makes the processor's resize a no-op, so `medgemma preview` shows exactly the pixels the model receives.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def square_offsets(width: int, height: int) -> tuple[int, int, int]:
    """(side, left, top): where `pad_to_square` puts a `width` x `height` image on its square canvas.

    The odd pixel of padding goes right/below, as in Google's notebooks (`dh // 2` before, `dh - dh // 2` after);
    `localize` maps boxes back through the same numbers.
    """
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def pad_to_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side, left, top = square_offsets(w, h)
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(img, (left, top))
    return canvas


def to_model_image(img: Image.Image, size: int, pad: bool = True) -> Image.Image:
    """RGB, square, `size` x `size`. `pad=False` stretches instead, as the image processor does to an image that
    was not padded first (Google's longitudinal notebook sends its images so: `preprocess_image = False`)."""
    sq = pad_to_square(img.convert("RGB")) if pad else img.convert("RGB")
    if sq.size != (size, size):
        sq = sq.resize((size, size), Image.Resampling.BILINEAR)
    return sq


def scale_to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linearly map [lo, hi] (default: the array's min..max) to 0..255, clipping outside values.

    A constant image maps to 0 rather than dividing by zero.
    """
    a = np.asarray(arr, dtype=np.float64)
    lo = float(a.min()) if lo is None else lo
    hi = float(a.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    scaled = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    return np.round(scaled * 255.0).astype(np.uint8)
