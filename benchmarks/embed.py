"""Benchmark: images/s of `medgemma embed` (MedSigLIP.embed_images) vs the notebook's plain loop, side by side.

Loop (Google's quick-start way, one image at a time): `Image.open` -> `processor(images=[img])` -> the image tower
-> L2 norm. Ours: batches of `--batch-size`, images decoded and resized by a thread pool ahead of the model, the
same model. Both run on the same files with the same random SigLIP checkpoint (by default a small image tower:
224 px, patch 16, width 384, 6 layers, 8.7M parameters; `--width 768 --layers 8` gives 43M), warmed up once, then
alternated `--repeat` times;
the best run of each is compared (the CPUs are shared). The checkpoint is built here; nothing is downloaded.

Run: flock /work/heavy.lock .venv/bin/python benchmarks/embed.py [--images 48] [--side 1024] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from medgemma_toolkit import MedSigLIP
from medgemma_toolkit.testing.tiny_siglip import build_tiny_siglip


def write_images(d: Path, n: int, side: int) -> list[str]:
    """Grey radiograph-like PNGs (smooth body, noise): decoding them costs what real CXR PNGs cost."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    base = 180 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.55) ** 2) * 6)
    out = []
    for k in range(n):
        a = np.clip(base + rng.normal(0, 12, (side, side)), 0, 255).astype(np.uint8)
        p = d / f"img{k:03d}.png"
        Image.fromarray(a, "L").save(p)
        out.append(str(p))
    return out


def loop(ms: MedSigLIP, files: list[str]) -> np.ndarray:
    import torch

    vecs = []
    for f in files:
        img = Image.open(f).convert("RGB")
        px = ms.processor(images=[img], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            pooled = ms.model.vision_model(pixel_values=px).pooler_output
        vecs.append(torch.nn.functional.normalize(pooled, dim=-1)[0].numpy())
    return np.stack(vecs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model = build_tiny_siglip(
            t / "m", image_size=args.image_size, patch_size=16, hidden_size=args.width, layers=args.layers
        )
        files = write_images(t, args.images, args.side)
        ms = MedSigLIP.load(str(model), batch_size=args.batch_size)
        params = sum(p.numel() for p in ms.model.vision_model.parameters()) / 1e6
        loop(ms, files[:2])  # warm-up: first allocations, lazy imports
        ms.embed_images(files[:2])
        best_loop = best_ours = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ref = loop(ms, files)
            best_loop = min(best_loop, time.perf_counter() - t0)
            t0 = time.perf_counter()
            ours = ms.embed_images(files).vectors
            best_ours = min(best_ours, time.perf_counter() - t0)
        # Same model, same images; only the resize filter differs (processor: PIL bicubic with antialiasing;
        # ours: the notebook's bilinear without), so vectors agree closely but not exactly.
        cos = float(np.mean(np.sum(ref * ours, axis=1)))
    n = args.images
    print(
        f"{n} PNGs {args.side}x{args.side} -> {args.image_size}px, image tower {params:.1f}M params, "
        f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, decode workers {ms.workers}"
    )
    print(f"notebook loop : {n / best_loop:7.2f} images/s ({best_loop:.2f} s)")
    print(f"medgemma embed: {n / best_ours:7.2f} images/s ({best_ours:.2f} s)")
    print(f"speed-up      : {best_loop / best_ours:.2f}x   (mean cosine between the two paths' vectors: {cos:.4f})")


if __name__ == "__main__":
    main()
