"""Prototype, measured not shipped: the OpenVINO SigLIP tower feeding its image embeddings to llama.cpp.

libmtmd's own tower is ~35 s of a MedGemma-4B image question on the 2-core CPU (benchmarks/mmproj_tower.py);
OpenVINO's is ~15 s (runtime/cpu_vision.py). Here, in one process, the llama.cpp backend answers the same image
question two ways, alternating: (a) as shipped, libmtmd encodes the image; (b) libmtmd's image chunk is decoded
from embeddings computed by the OpenVINO tower + the transformers projector (`mtmd_helper_decode_image_chunk`,
which does for pre-encoded embeddings what libmtmd does for its own: the image span in one non-causal batch).
(b) swaps one call of the engine, through a proxy of the `mtmd_cpp` module it holds, for the benchmark's image.

Inputs from `benchmarks/cpu_4b.py`'s cache: the Q4_K_M text GGUF + the default mmproj, and the vision-only copy of
the checkpoint (tower + projector in bf16) that `mmproj_tower.py` builds. The OpenVINO IR is the one the
transformers path converts (same weights, same fingerprint), so no conversion runs when it is cached.

HEAVY (~6 GB, minutes): `flock /work/heavy.lock python benchmarks/llamacpp_ov_tower.py --rounds 2`
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class OpenVinoImages:
    """The tower (OpenVINO) + projector (torch) of the vision-only checkpoint: pixels -> 256 x 2560 embeddings."""

    def __init__(self, ckpt: Path) -> None:
        import torch
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoImageProcessor, SiglipVisionModel
        from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector

        from medgemma_toolkit.runtime.cpu_vision import install

        cfg = AutoConfig.from_pretrained(ckpt)
        sd = load_file(str(ckpt / "model.safetensors"))
        self.tower = SiglipVisionModel(cfg.vision_config).to(torch.bfloat16).eval()
        self.tower.load_state_dict({k[13:]: v for k, v in sd.items() if k.startswith("vision_tower.")})
        self.proj = Gemma3MultiModalProjector(cfg).to(torch.bfloat16).eval()
        self.proj.load_state_dict({k[22:]: v for k, v in sd.items() if k.startswith("multi_modal_projector.")})
        del sd
        self.path = install(
            SimpleNamespace(model=SimpleNamespace(vision_tower=self.tower)),
            torch.device("cpu"),
            torch.bfloat16,
            "openvino",
        )
        self.processor = AutoImageProcessor.from_pretrained(ckpt)
        self.torch = torch
        self.tower_s: list[float] = []

    def embeddings(self, image: Any) -> Any:
        torch = self.torch
        px = self.processor(image, return_tensors="pt")["pixel_values"].to(torch.bfloat16)
        with torch.inference_mode():
            t = time.perf_counter()
            hidden = self.tower(pixel_values=px).last_hidden_state
            self.tower_s.append(time.perf_counter() - t)
            return self.proj(hidden)[0].float().contiguous().numpy()


class _MtmdWithOpenVino:
    """The `mtmd_cpp` module as the engine sees it, except that an image chunk is decoded from OpenVINO embeddings."""

    def __init__(self, mtmd_cpp: Any, images: OpenVinoImages, image: Any) -> None:
        self._m, self._images, self._image = mtmd_cpp, images, image

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)

    def mtmd_helper_eval_chunk_single(self, ctx, lctx, chunk, n_past, seq_id, n_batch, logits_last, new_n_past):  # type: ignore[no-untyped-def]
        embd = self._images.embeddings(self._image)
        ptr = embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        cb = self._m.mtmd_helper_post_decode_callback(0)  # NULL: no per-batch callback
        return self._m.mtmd_helper_decode_image_chunk(
            ctx, lctx, chunk, ptr, n_past, seq_id, n_batch, new_n_past, cb, None
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    from cpu_4b import IMAGE_QUESTION, cache_root, image_file, mmproj_file, peak_rss_gb, quant_gguf
    from mmproj_tower import vision_checkpoint

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.core.messages import ImagePart
    from medgemma_toolkit.export.gguf_export import DEFAULT_MMPROJ_TYPE

    cache = cache_root()
    mg = MedGemma.load(
        str(quant_gguf(cache, "q4_k_m")),
        mmproj=str(mmproj_file(cache, DEFAULT_MMPROJ_TYPE)),
        preset="medgemma-v1",
        threads=2,
    )
    src = str(image_file(cache))
    image = next(p for p in mg.media([src]) if isinstance(p, ImagePart)).image
    t = time.perf_counter()
    ov = OpenVinoImages(vision_checkpoint(cache))
    print(
        f"OpenVINO tower ready in {time.perf_counter() - t:.1f} s ({ov.path.runtime}, {ov.path.reason})",
        file=sys.stderr,
    )
    engine = mg.backend.engine
    libmtmd, proxied = engine._m, _MtmdWithOpenVino(engine._m, ov, image.convert("RGB"))
    res: dict[str, dict[str, list[float]]] = {"libmtmd": {}, "openvino": {}}
    n = 0
    for r in range(args.rounds + 1):  # round 0 warms both paths up (thread pools, first allocations, OV compile)
        for name, m in (("libmtmd", libmtmd), ("openvino", proxied)):
            engine._m = m
            n += 1
            q = f"Case {n}. {IMAGE_QUESTION}"
            t = time.perf_counter()
            first = mg.ask(q, images=[src], max_new_tokens=1)
            ttft = time.perf_counter() - t
            n += 1
            t = time.perf_counter()
            ans = mg.ask(f"Case {n}. {IMAGE_QUESTION}", images=[src], max_new_tokens=args.new_tokens)
            e2e = time.perf_counter() - t
            row = {"ttft_s": ttft, "e2e_s": e2e, "tokens": ans.completion_tokens, "prompt": first.prompt_tokens}
            print(json.dumps({"round": r, "path": name, **row, "answer": ans.raw}), file=sys.stderr, flush=True)
            if r:
                for k in ("ttft_s", "e2e_s"):
                    res[name].setdefault(k, []).append(row[k])
    engine._m = libmtmd
    print(
        f"\nOpenVINO tower alone (median of {len(ov.tower_s) - 2}): "
        f"{statistics.median(ov.tower_s[2:]):.2f} s; peak RSS of the process (both paths): {peak_rss_gb():.2f} GiB"
    )
    print(f"{'path':10} {'first token s':>14} {'end to end s':>13}   runs")
    for name, v in res.items():
        print(
            f"{name:10} {statistics.median(v['ttft_s']):14.2f} {statistics.median(v['e2e_s']):13.2f}   "
            f"{' '.join(f'{x:.1f}' for x in v['e2e_s'])}"
        )


if __name__ == "__main__":
    main()
