"""The original image with its boxes and labels drawn, for `medgemma localize -o`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import BadInput

# Distinct, saturated colours that stay visible on greyscale radiographs.
COLOURS = ((255, 64, 64), (64, 200, 255), (255, 200, 0), (80, 230, 120), (255, 96, 255), (255, 140, 0))


def draw_boxes(image: Image.Image, boxes: Sequence[tuple[str, tuple[float, float, float, float]]]) -> Image.Image:
    """A copy of `image` (RGB, same size) with each `(label, (x0, y0, x1, y1))` outlined and labelled."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    w, h = out.size
    line = max(1, round(min(w, h) / 200))
    font = ImageFont.load_default(size=max(10, round(min(w, h) / 30)))
    for i, (label, (x0, y0, x1, y1)) in enumerate(boxes):
        colour = COLOURS[i % len(COLOURS)]
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        if not label:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        th = bottom - top
        ty = y0 - th - 2 * line if y0 - th - 2 * line >= 0 else y0 + line  # above the box, else just inside it
        tx = min(max(x0, 0), max(0, w - (right - left)))
        draw.rectangle([tx, ty, tx + right - left + 2, ty + th + 2], fill=(0, 0, 0))
        draw.text((tx + 1 - left, ty + 1 - top), label, fill=colour, font=font)
    return out


def save_overlay(
    image: Image.Image, boxes: Sequence[tuple[str, tuple[float, float, float, float]]], path: Path
) -> None:
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_boxes(image, boxes).save(path, format=fmt)
    except OSError as e:
        raise BadInput(f"{path}: cannot write the overlay ({e.strerror or type(e).__name__})") from None
