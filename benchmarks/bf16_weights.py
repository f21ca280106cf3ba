"""bf16 weights with fp32 arithmetic (`--dtype bfloat16-weights`, runtime/bf16_weights.py) against fp32 and bf16
layers, on one decoder layer's linear shapes of MedGemma 4B (q, k, v, o, gate, up, down), at several row counts.

Each row count runs the three kinds of layer alternately on the same inputs, `--rounds` times, and prints the best
time of each, the ratio to fp32 and the weight memory. On a CPU without bf16 instructions the bf16-weights layers
should track bf16 at a few rows (decode: half of fp32's bytes to read) and fp32 at many (prefill: an exact upcast,
then fp32's kernels); the row count where upcasting starts to win is where `UPCAST_ROWS` belongs.

    python benchmarks/bf16_weights.py                    # rows 1, 4, 8, 16, 32, 64, 290
    python benchmarks/bf16_weights.py --rows 1,290 --rounds 5
    python benchmarks/bf16_weights.py --kernel linear       # upcast rows through F.linear (MKL) instead of oneDNN
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# MedGemma 4B (Gemma 3 4B): width 2560, 8 query heads and 4 KV heads of 256, MLP 10240.
SHAPES = ((2048, 2560), (1024, 2560), (1024, 2560), (2560, 2048), (10240, 2560), (10240, 2560), (2560, 10240))


def layers(dtype: str) -> list:
    import torch

    from medgemma_toolkit.runtime.bf16_weights import keep_bf16_weights

    torch.manual_seed(0)
    out = []
    for o, i in SHAPES:
        layer = torch.nn.Linear(i, o, bias=False)
        with torch.no_grad():
            layer.weight.mul_(0.02)
        if dtype == "bfloat16":
            layer = layer.to(torch.bfloat16)
        elif dtype == "bfloat16-weights":
            layer = layer.to(torch.bfloat16)
            keep_bf16_weights(layer)
        out.append(layer)
    return out


def run(stack: list, inputs: dict, dtype: str) -> float:
    import torch

    t = time.perf_counter()
    with torch.inference_mode():
        for layer in stack:
            x = inputs[layer.in_features]
            layer(x.to(torch.bfloat16) if dtype == "bfloat16" else x)
    return time.perf_counter() - t


def main() -> None:
    import torch

    from medgemma_toolkit.runtime.bf16_weights import UPCAST_ROWS
    from medgemma_toolkit.runtime.torch_setup import BF16_CPU_FLAGS, cpu_flags

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,4,8,16,32,64,290")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--kernel", default="onednn", help="the upcast rows' fp32 matmul: onednn (the default) or linear (F.linear)"
    )
    args = ap.parse_args()
    import medgemma_toolkit.runtime.bf16_weights as bw

    bw.UPCAST_KERNEL = args.kernel
    kinds = ("float32", "bfloat16", "bfloat16-weights")
    stacks = {k: layers(k) for k in kinds}
    bf16_cpu = bool(cpu_flags() & BF16_CPU_FLAGS)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16 instructions: "
        f"{'yes' if bf16_cpu else 'no'}; UPCAST_ROWS={UPCAST_ROWS}, upcast kernel {args.kernel}"
    )
    mib = {
        k: sum(p.numel() * p.element_size() for layer in s for p in layer.parameters()) >> 20 for k, s in stacks.items()
    }
    print("weights: " + ", ".join(f"{k} {v} MiB" for k, v in mib.items()))
    print(f"{'rows':>5} " + " ".join(f"{k + ' ms':>20}" for k in kinds) + f" {'bf16-weights/fp32':>18}")
    for rows in (int(r) for r in args.rows.split(",")):
        inputs = {i: torch.randn(rows, i) for i in {i for _, i in SHAPES}}
        best = {k: float("inf") for k in kinds}
        for k in kinds:  # warm-up: first-call allocations
            run(stacks[k], inputs, k)
        for _ in range(args.rounds):
            for k in kinds:
                best[k] = min(best[k], run(stacks[k], inputs, k))
        cells = " ".join(f"{best[k] * 1e3:20.1f}" for k in kinds)
        print(f"{rows:5} {cells} {best['bfloat16-weights'] / best['float32']:17.2f}x", flush=True)


if __name__ == "__main__":
    main()
