"""Synthetic whole-slide images for tests: a pyramidal tiled TIFF (SVS-style) with known tissue regions.

White glass with saturated pink "tissue" rectangles at known places, so tests know which patches hold tissue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TISSUE_RGB = (200, 80, 150)  # eosin-like pink: high saturation against white glass


def slide_pixels(width: int, height: int, tissue: list[tuple[int, int, int, int]], seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: white with faint noise, tissue boxes (x, y, w, h) in pink with texture."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 242, dtype=np.uint8)
    for x, y, w, h in tissue:
        box = np.array(TISSUE_RGB, dtype=np.int16) + rng.integers(-8, 9, size=(h, w, 1), dtype=np.int16)
        img[y : y + h, x : x + w] = np.clip(box, 0, 255).astype(np.uint8)
    return img


def write_pyramid_tiff(
    path: str | Path, image: np.ndarray, mpp: float, levels: int = 3, tile: int = 256, aperio: bool = True
) -> Path:
    """Write `image` as a tiled pyramidal TIFF (downsample 4 per level) with SVS-style metadata.

    With `aperio`, the first page's description follows Aperio's ("Aperio Image Library ... |MPP = x"), so
    SVS readers take the pixel spacing from it; resolution tags carry it too for generic TIFF readers.
    """
    import tifffile

    path = Path(path)
    h, w = image.shape[:2]
    desc = f"Aperio Image Library v12.0.0\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90|AppMag = {10 / mpp:g}|MPP = {mpp}"
    res = (1e4 / mpp, 1e4 / mpp)  # pixels per centimetre
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        tw.write(
            image,
            tile=(tile, tile),
            photometric="rgb",
            compression="zlib",
            resolution=res,
            resolutionunit="CENTIMETER",
            description=desc if aperio else None,
            metadata=None,
        )
        if aperio:  # SVS layout: the second page is a small stripped thumbnail, not a pyramid level
            tw.write(np.ascontiguousarray(image[::32, ::32]), photometric="rgb", description=desc, metadata=None)
        level = image
        for k in range(1, levels):
            level = level[::4, ::4]
            if min(level.shape[:2]) < 16:
                break
            lmpp = mpp * 4**k
            tw.write(
                np.ascontiguousarray(level),
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                resolution=(1e4 / lmpp, 1e4 / lmpp),
                resolutionunit="CENTIMETER",
                description=(desc.replace(f"{w}x{h}", f"{level.shape[1]}x{level.shape[0]}", 1) if aperio else None),
                metadata=None,
            )
    return path
