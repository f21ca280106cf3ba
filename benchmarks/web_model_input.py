"""What the web page's `POST /v1/medgemma/model-input` costs for a full CT series: rendering the sampled slices
(the imaging path chat uses) and encoding them as PNG at zlib levels 1 (what the endpoint uses) and 6 (Pillow's
default), side by side in one run. Prints seconds and megabytes; the ratios are what matter.

    python benchmarks/web_model_input.py [--slices 85] [--side 256] [--size 896]

The synthetic slices carry per-pixel noise, so they compress worse than most real CT.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

from medgemma_toolkit.core.messages import ImagePart
from medgemma_toolkit.imaging import ImageOptions, load_parts
from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, write_series


def encode(images, level: int) -> tuple[float, int]:
    start, total = time.perf_counter(), 0
    for img in images:
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=level)
        total += len(buf.getvalue())
    return time.perf_counter() - start, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=85)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--size", type=int, default=896)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        write_series(d, SeriesSpec(slices=a.slices, rows=a.side, cols=a.side))
        start = time.perf_counter()
        images = [p.image for p in load_parts(d, ImageOptions(), a.size) if isinstance(p, ImagePart)]
        render = time.perf_counter() - start
    fast, fast_bytes = encode(images, 1)
    default, default_bytes = encode(images, 6)
    print(f"{len(images)} slices of {a.side}x{a.side} -> {a.size} px: render {render:.2f} s")
    print(f"PNG level 1: {fast:.2f} s, {fast_bytes / 1e6:.1f} MB (base64 {fast_bytes * 4 / 3 / 1e6:.1f} MB)")
    print(f"PNG level 6: {default:.2f} s, {default_bytes / 1e6:.1f} MB")
    print(f"level 1 vs 6: {default / fast:.1f}x faster, {fast_bytes / default_bytes:.2f}x the bytes")


if __name__ == "__main__":
    main()
