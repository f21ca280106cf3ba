"""The model's box frame to the original image's pixels.

MedGemma answers in a 0-1000 frame over the *padded square* it saw (`imaging.square.pad_to_square`, then resized;
resizing does not move a normalised coordinate). Undoing that: scale by the square's side, subtract the padding
on the left/top, clip to the image.
"""

from __future__ import annotations

from ..imaging.square import square_offsets

SCALE = 1000.0  # the notebook's normalisation: 150 means 15% of the width


def to_pixels(box_2d: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """`[y0, x0, y1, x1]` (0-1000 over the padded square) -> `(x0, y0, x1, y1)` pixels of a `width` x `height`
    image, clipped to it, rounded to 0.1 px.

    >>> to_pixels((250, 100, 750, 600), 400, 200)   # a wide image padded 100 px above and below
    (40.0, 0.0, 240.0, 200.0)
    """
    side, left, top = square_offsets(width, height)
    y0, x0, y1, x1 = box_2d
    k = side / SCALE

    def px(v: float, offset: int, limit: int) -> float:
        return round(min(max(v * k - offset, 0.0), float(limit)), 1)

    return px(x0, left, width), px(y0, top, height), px(x1, left, width), px(y1, top, height)
