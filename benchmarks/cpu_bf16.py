"""transformers on CPU, bf16 vs fp32, side by side: decode tok/s (batch 1 and 8), peak RSS, and greedy agreement.

Each dtype loads in its own process (so its peak RSS is its own); the agreement check converts one fp32 model to
bf16 and compares greedy continuations step by step (`medgemma_toolkit.testing.bf16_agreement`).

    python benchmarks/cpu_bf16.py                    # the demo model (Gemma 3 270M through transformers)
    python benchmarks/cpu_bf16.py --model tiny       # the 64-wide test checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def model_spec(name: str) -> str:
    if name != "tiny":
        return name
    from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma

    path = Path(tempfile.gettempdir()) / "mg-bench-tiny-medgemma"
    return str(path if (path / "config.json").is_file() else build_tiny_medgemma(path))


def speed(model: str, dtype: str, new_tokens: int) -> dict[str, object]:
    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.testing.bf16_agreement import QUESTIONS

    t0 = time.perf_counter()
    mg = MedGemma.load(model, backend="transformers", dtype=dtype, max_batch_size=8)
    load_s = time.perf_counter() - t0
    mg.ask("Hello", max_new_tokens=2)
    t = time.perf_counter()
    one = mg.ask(QUESTIONS[0], max_new_tokens=new_tokens)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    many = mg.ask_batch(QUESTIONS, max_new_tokens=new_tokens)
    t8 = time.perf_counter() - t
    return {
        "dtype": dtype,
        "load_s": round(load_s, 1),
        "batch1_tok_s": round(one.completion_tokens / t1, 2),
        "batch8_tok_s": round(sum(a.completion_tokens for a in many) / t8, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    model = model_spec(args.model)
    if args.child:
        print(json.dumps(speed(model, args.child, args.new_tokens)))
        return
    rows = []
    for dtype in ("float32", "bfloat16"):
        cmd = [sys.executable, __file__, "--model", model, "--new-tokens", str(args.new_tokens), "--child", dtype]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    f, b = rows
    print(
        f"bf16/fp32: batch-1 decode {b['batch1_tok_s'] / f['batch1_tok_s']:.2f}x, batch-8 "
        f"{b['batch8_tok_s'] / f['batch8_tok_s']:.2f}x, peak RSS {b['peak_rss_gib'] / f['peak_rss_gib']:.2f}x"
    )

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.testing.bf16_agreement import QUESTIONS, agreement

    mg = MedGemma.load(model, backend="transformers", dtype="float32")
    summary = agreement(mg.backend, [mg.request(q).prompt for q in QUESTIONS], args.new_tokens)
    print(json.dumps(summary))
    print(
        f"greedy agreement over {summary['items']} items x {args.new_tokens} tokens: {summary['identical']} identical, "
        f"{summary['diverged']} diverged ({summary['within_tolerance']} of them where fp32's top two logits were "
        f"within {summary['rel_tol']:.4f} x the largest logit)"
    )


if __name__ == "__main__":
    main()
