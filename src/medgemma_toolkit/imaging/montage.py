"""Write what the model receives as one PNG: a single image as is, several as a labelled grid."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..core.messages import ImagePart, Part, TextPart
from ..errors import BadInput


def save_preview(parts: list[Part], output: str | Path) -> int:
    """Save the images among `parts` (labelled by the text part that follows each); return the image count."""
    items: list[tuple[Image.Image, str]] = []
    for p in parts:
        if isinstance(p, ImagePart):
            items.append((p.image, p.label))
        elif isinstance(p, TextPart) and items and not items[-1][1]:
            items[-1] = (items[-1][0], p.text.strip())
    if not items:
        raise BadInput("nothing to preview: no image in the input")
    out = Path(output)
    if out.suffix.lower() != ".png":
        raise BadInput(f"{output}: preview is written as PNG; use a .png name")
    if len(items) == 1 and not items[0][1]:
        items[0][0].save(out, format="PNG")
        return 1
    side = items[0][0].size[0]
    cols = math.ceil(math.sqrt(len(items)))
    rows = math.ceil(len(items) / cols)
    label_h = max(16, side // 24)  # legible when 896-px cells are viewed zoomed out
    font = ImageFont.load_default(size=label_h - 4)
    sheet = Image.new("RGB", (cols * side, rows * (side + label_h)), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for k, (im, label) in enumerate(items):
        x, y = (k % cols) * side, (k // cols) * (side + label_h)
        sheet.paste(im, (x, y))
        draw.text((x + 2, y + side + 1), label or f"image {k + 1}", fill=(255, 255, 255), font=font)
    sheet.save(out, format="PNG")
    return len(items)
