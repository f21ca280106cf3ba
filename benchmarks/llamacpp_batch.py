"""Benchmark: `medgemma eval` through the llama.cpp backend at --batch-size 8 (8 sequences per llama_decode) against
the same backend one item at a time, on the demo model (Gemma 3 270M Q4_K_M). Same loaded model, same items, greedy,
same max new tokens; the two sides alternate over item chunks so background load hits both alike. Prints items/s
for each side, the ratio (goal >= 3x), how many answers differ, and a profile of one batch-8 and one single decode
step (prefill vs per-step time) to show where the time goes.

    python benchmarks/llamacpp_batch.py [--items 32] [--max-new-tokens 32] [--batch-size 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def answers(run_dir: Path) -> dict[str, str]:
    out = {}
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[str(rec["key"])] = rec["raw"]
    return out


def step_profile(be, prompts: list[str], steps: int = 16) -> dict[str, float]:
    """Seconds of the prefill call and mean seconds per decode step, for these prompts decoded together."""
    from medgemma_toolkit.backends.base import GenerationRequest, SamplingParams
    from medgemma_toolkit.core.messages import Prompt

    eng = be.engine
    stamps: list[float] = []
    step = eng.step

    def timed_step() -> None:
        step()
        stamps.append(time.perf_counter())

    eng.step = timed_step  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        be.generate([GenerationRequest(Prompt(text=p), SamplingParams(max_new_tokens=steps)) for p in prompts])
    finally:
        del eng.step
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"prefill_s": stamps[0] - t0, "step_s": sum(gaps) / max(1, len(gaps))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--parallel",
        type=int,
        help="sequences decoded together (default: --batch-size); fewer than the "
        "batch size makes finished sequences' slots refill from the rest of the batch",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from eval_runner import make_items

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.eval.runner import EvalOptions, run_eval

    work = Path(tempfile.mkdtemp(prefix="mg-llbatch-"))
    mg = MedGemma.load("demo", backend="llamacpp", threads=args.threads, parallel=args.parallel or args.batch_size)
    from llamacpp_build import build_label

    print(f"llama_cpp: {build_label()}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    per = args.items // args.rounds
    secs = {1: 0.0, args.batch_size: 0.0}
    got: dict[int, dict[str, str]] = {1: {}, args.batch_size: {}}
    for r in range(args.rounds):
        data = work / f"items{r}.jsonl"
        make_items(data, per, seed=r)
        order = [1, args.batch_size] if r % 2 == 0 else [args.batch_size, 1]
        for bs in order:
            out = work / f"r{r}-bs{bs}"
            opts = EvalOptions(
                task="medqa",
                data=str(data),
                out=out,
                batch_size=bs,
                max_new_tokens=args.max_new_tokens,
                use_cache=False,
                n_boot=10,
                progress=False,
            )
            summary = run_eval(mg, opts)
            secs[bs] += summary["timing"]["generate_seconds"]
            got[bs].update({f"{r}:{k}": v for k, v in answers(out).items()})
    one, many = args.items / secs[1], args.items / secs[args.batch_size]
    differ = [k for k in got[1] if got[1][k] != got[args.batch_size][k]]
    prompts = [
        f"Question: {q}\nAnswer:"
        for q in (
            "What is the normal adult resting heart rate?",
            "Which organ produces insulin?",
            "What does the kidney do?",
            "Name a common cause of pneumonia.",
        )
    ] * 2
    p1 = step_profile(mg.backend, prompts[:1])
    p8 = step_profile(mg.backend, prompts[: min(8, args.parallel or args.batch_size)])
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        f"eval on the demo GGUF, {args.items} items, {args.max_new_tokens} new tokens, greedy, {args.threads} threads"
    )
    print(f"  one at a time : {one:6.2f} items/s")
    print(
        f"  batch size {args.batch_size:<3}: {many:6.2f} items/s   ratio {many / one:.2f}x (goal >= 3x; "
        f"{args.parallel or args.batch_size} sequences in parallel)"
    )
    print(f"  answers that differ: {len(differ)} of {len(got[1])}")
    print(
        f"profile: 1 sequence: prefill {p1['prefill_s'] * 1000:.0f} ms, {p1['step_s'] * 1000:.1f} ms/step; "
        f"{len(prompts[: min(8, args.parallel or args.batch_size)])} sequences: prefill {p8['prefill_s'] * 1000:.0f} ms, "
        f"{p8['step_s'] * 1000:.1f} ms/step ({p8['step_s'] / p1['step_s']:.2f}x the time for "
        f"{len(prompts[: min(8, args.parallel or args.batch_size)])}x the tokens)"
    )


if __name__ == "__main__":
    main()
