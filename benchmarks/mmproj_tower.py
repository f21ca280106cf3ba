"""libmtmd's image tower alone, per mmproj weight type and attention kernel, against the transformers tower.

The image question through llama.cpp spends most of its first token in libmtmd's SigLIP tower (896 px: 4,096
patches x 27 layers). This script measures one image encode (`mtmd_encode_chunk`, nothing else) for each mmproj
type written by `medgemma export gguf --mmproj-outtype` and each `flash_attn_type`, and checks each against the
transformers tower in bf16 on the same pixels: cosine of the 256 projected image features (min and mean over
tokens), the issue's tolerance being >= 0.999.

Inputs (built once into `$MEDGEMMA_BENCH_CACHE/mmproj`, default ~/.cache/medgemma-toolkit/bench/mmproj):
  * a vision-only copy of the random MedGemma-4B checkpoint that `benchmarks/cpu_4b.py` builds (its SigLIP weights
    and config), with the projector seeded non-zero exactly as `cpu_4b.py`'s `random_projector` does: the random
    checkpoint's projector is all zeros, which would make every variant's features zero and every cosine undefined;
  * one mmproj GGUF per type, through the toolkit's own exporter (`export_mmproj`);
  * the benchmark's 2048x2048 CXR DICOM, read by the toolkit and resized once to 896x896 (so neither side resizes).

HEAVY (a minute or more of both cores per variant): `flock /work/heavy.lock python benchmarks/mmproj_tower.py`.

    python benchmarks/mmproj_tower.py --types f16,bf16,q8_0 --flash on,off --rounds 1
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FLASH = {"auto": -1, "off": 0, "on": 1}  # llama.cpp's enum llama_flash_attn_type


def vision_checkpoint(cache: Path) -> Path:
    """The 4B checkpoint's vision tower + a seeded projector, as a small checkpoint the exporter takes."""
    from cpu_4b import vision_only_checkpoint

    return vision_only_checkpoint(cache / "medgemma-4b-random", cache / "mmproj" / "vision-ckpt", seed_projector=True)


def mmproj_file(ckpt: Path, outtype: str) -> Path:
    from medgemma_toolkit.export.gguf_export import export_mmproj

    path = ckpt.parent / f"mmproj-{outtype}.gguf"
    if not path.is_file():
        t = time.perf_counter()
        export_mmproj(ckpt, path, outtype)  # type: ignore[arg-type]
        print(f"exported {path.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return path


def bench_image(cache: Path) -> Any:
    """The benchmark's CXR through the toolkit's DICOM reader, resized once to the tower's 896 px."""
    from cpu_4b import image_file
    from PIL import Image

    from medgemma_toolkit.core.messages import ImagePart
    from medgemma_toolkit.imaging import load_parts

    parts = load_parts(str(image_file(cache)))
    img = next(p for p in parts if isinstance(p, ImagePart)).image
    return img.convert("RGB").resize((896, 896), Image.Resampling.BICUBIC)


def reference_features(ckpt: Path, image: Any) -> tuple[Any, float]:
    """(256 x 2560 features, seconds) of the transformers tower + projector in bf16, cached beside the checkpoint."""
    import numpy as np

    cached = ckpt.parent / "reference-features.npy"
    if cached.is_file():
        return np.load(cached), float((ckpt.parent / "reference-seconds.txt").read_text())
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoImageProcessor, SiglipVisionModel
    from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector

    cfg = AutoConfig.from_pretrained(ckpt)
    sd = load_file(str(ckpt / "model.safetensors"))
    tower = SiglipVisionModel(cfg.vision_config).to(torch.bfloat16).eval()
    tower.load_state_dict({k[len("vision_tower.") :]: v for k, v in sd.items() if k.startswith("vision_tower.")})
    proj = Gemma3MultiModalProjector(cfg).to(torch.bfloat16).eval()
    proj.load_state_dict({k[len("multi_modal_projector.") :]: v for k, v in sd.items() if "projector" in k})
    del sd
    px = AutoImageProcessor.from_pretrained(ckpt)(image, return_tensors="pt")["pixel_values"].to(torch.bfloat16)
    with torch.inference_mode():
        t = time.perf_counter()
        feats = proj(tower(pixel_values=px).last_hidden_state)[0].float().numpy()
        secs = time.perf_counter() - t
    np.save(cached, feats)
    (ckpt.parent / "reference-seconds.txt").write_text(f"{secs:.2f}")
    return feats, secs


class _Lines(logging.Handler):
    """Keeps libmtmd's lines that say what ran: its compute buffer size and the attention kernel chosen."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "compute buffer size" in msg or "flash attention is" in msg:
            self.lines.append(msg)

    def take(self) -> dict[str, Any]:
        buf = [float(ln.split("=")[1].split()[0]) for ln in self.lines if "compute buffer size" in ln]
        fa = [ln.rsplit(" ", 1)[-1] for ln in self.lines if "flash attention is" in ln]
        self.lines = []
        return {"compute_buffer_mib": max(buf) if buf else None, "flash_attention": fa[-1] if fa else None}


class Encoder:
    """libmtmd over one mmproj, paired with the text GGUF's vocabulary (mtmd checks the embedding width)."""

    def __init__(self, text_gguf: Path, threads: int) -> None:
        import llama_cpp
        from llama_cpp import mtmd_cpp

        from medgemma_toolkit.backends.llamacpp_logging import llama_log_callback, route_llama_logs

        route_llama_logs()  # llama.cpp's and libmtmd's lines go to our logger, not the table
        mtmd_cpp.mtmd_log_set(llama_log_callback(), ctypes.c_void_p(0))
        self.lines = _Lines()
        logger = logging.getLogger("medgemma_toolkit.backends.llamacpp_backend")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self.lines)
        logger.propagate = False
        self.lc, self.m, self.threads = llama_cpp, mtmd_cpp, threads
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True  # hyper-parameters and vocabulary: no weights
        self.model = llama_cpp.llama_model_load_from_file(str(text_gguf).encode(), params)

    def encode(self, mmproj: Path, image: Any, flash: str) -> tuple[Any, float, float, dict[str, Any]]:
        """(features, encode seconds, init seconds, what libmtmd said it ran) of one image, fresh mtmd context."""
        import numpy as np

        m = self.m
        p = m.mtmd_context_params_default()
        p.use_gpu, p.print_timings, p.warmup, p.n_threads = False, False, True, self.threads
        p.flash_attn_type = FLASH[flash]
        t = time.perf_counter()
        ctx = m.mtmd_init_from_file(str(mmproj).encode(), self.model, p)
        init_s = time.perf_counter() - t
        if not ctx:
            raise RuntimeError(f"{mmproj}: mtmd could not load it")
        data = image.tobytes()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bmp = m.mtmd_bitmap_init(image.width, image.height, buf)
        chunks = m.mtmd_input_chunks_init()
        try:
            inp = m.mtmd_input_text()
            raw = m.mtmd_default_marker()
            inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), False, True
            arr = (m.mtmd_bitmap_p_ctypes * 1)(bmp)
            if m.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), arr, 1) != 0:
                raise RuntimeError("mtmd_tokenize failed")
            chunk = next(
                c
                for c in (m.mtmd_input_chunks_get(chunks, i) for i in range(m.mtmd_input_chunks_size(chunks)))
                if m.mtmd_input_chunk_get_type(c) == m.MTMD_INPUT_CHUNK_TYPE_IMAGE
            )
            n_tok = m.mtmd_input_chunk_get_n_tokens(chunk)
            t = time.perf_counter()
            if m.mtmd_encode_chunk(ctx, chunk) != 0:
                raise RuntimeError("mtmd_encode_chunk failed")
            enc_s = time.perf_counter() - t
            ptr = m.mtmd_get_output_embd(ctx)
            n_embd = projection_dim(mmproj)  # a vocabulary-only text model states no width (0)
            feats = np.ctypeslib.as_array(ptr, shape=(n_tok * n_embd,)).reshape(n_tok, n_embd).copy()
        finally:
            m.mtmd_input_chunks_free(chunks)
            m.mtmd_bitmap_free(bmp)
            m.mtmd_free(ctx)
        return feats, enc_s, init_s, self.lines.take()


def projection_dim(mmproj: Path) -> int:
    from gguf import GGUFReader

    return int(GGUFReader(str(mmproj)).fields["clip.vision.projection_dim"].contents())


def cosines(a: Any, b: Any) -> tuple[float, float]:
    """(min, mean) over image tokens of the per-token cosine."""
    import numpy as np

    a, b = a.astype(np.float64), b.astype(np.float64)
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(c.min()), float(c.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="f16,bf16,q8_0", help="mmproj weight types to export and time")
    ap.add_argument("--flash", default="on,off", help="flash_attn_type values: on, off, auto")
    ap.add_argument("--rounds", type=int, default=1, help="encodes per variant (alternating); the median is shown")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-reference", action="store_true", help="skip the transformers tower (no cosine)")
    args = ap.parse_args()
    from cpu_4b import build, cache_root
    from llamacpp_build import build_label

    cache = cache_root()
    _, text_gguf, _ = build(cache)
    ckpt = vision_checkpoint(cache)
    types = [t for t in args.types.split(",") if t]
    files = {t: mmproj_file(ckpt, t) for t in types}
    image = bench_image(cache)
    ref, ref_s = (None, None) if args.no_reference else reference_features(ckpt, image)
    gc.collect()
    print(f"llama.cpp: {build_label()}", file=sys.stderr)
    enc = Encoder(text_gguf, args.threads)
    variants = [(t, f) for t in types for f in args.flash.split(",") if f]
    times: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    result: dict[tuple[str, str], dict[str, Any]] = {}
    for _ in range(args.rounds):
        for t, f in variants:
            feats, enc_s, init_s, said = enc.encode(files[t], image, f)
            times[(t, f)].append(enc_s)
            row = {"type": t, "flash": f, "mmproj_mib": round(files[t].stat().st_size / 2**20), "init_s": init_s}
            row.update(said)
            if ref is not None:
                row["cos_min"], row["cos_mean"] = cosines(feats, ref)
            result[(t, f)] = row
            print(json.dumps({**row, "encode_s": round(enc_s, 2)}), file=sys.stderr, flush=True)
    print(f"\nreference: transformers SigLIP + projector, bf16, torch SDPA: {ref_s if ref_s else '-'} s")
    print(
        f"{'mmproj':7} {'flash':5} {'MiB':>5} {'buffer MiB':>10} {'encode s (median)':>18} {'runs':>16} "
        f"{'cos min':>9} {'cos mean':>9}"
    )
    for v in variants:
        r = result[v]
        runs = " ".join(f"{x:.1f}" for x in times[v])
        print(
            f"{r['type']:7} {r['flash']:5} {r['mmproj_mib']:5} {r['compute_buffer_mib'] or '-':>10} "
            f"{statistics.median(times[v]):18.2f} {runs:>16} "
            f"{r.get('cos_min', float('nan')):9.6f} {r.get('cos_mean', float('nan')):9.6f}"
        )


if __name__ == "__main__":
    main()
