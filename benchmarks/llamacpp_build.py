"""Benchmark: two llama-cpp-python builds side by side on the demo model (Gemma 3 270M Q4_K_M): prefill tok/s for a
short and a long prompt and decode tok/s, raw llama-cpp-python (no toolkit code in the timed part). Each build runs
in its own process (PYTHONPATH=DIR first); the builds alternate over --rounds so background load hits both alike.
Prints each build's location and CPU features (llama_print_system_info) so the run shows what was measured.

    pip install --no-deps --no-cache-dir --target /tmp/llother llama-cpp-python==0.3.36   # with other CMAKE_ARGS
    python benchmarks/llamacpp_build.py --build /tmp/llother [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "Question: A 54-year-old man presents with crushing chest pain radiating to the left arm, diaphoresis and "
    "nausea for the past hour. His ECG shows ST elevation in leads II, III and aVF. Which coronary artery is most "
    "likely occluded, and what is the first-line reperfusion strategy if a catheterisation lab is available? "
)


def build_label() -> str:
    """Where llama_cpp was imported from and the CPU features its ggml was compiled with."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    feats = [k.split()[-1] for k, _, v in (p.partition("=") for p in info.split("|")) if v.strip() == "1"]
    return f"{Path(llama_cpp.__file__).parent} [{' '.join(feats)}]"


def measure(threads: int, prompt_lens: list[int], decode_steps: int) -> dict[str, object]:
    """tok/s of one prefill per prompt length and of decode_steps single-token steps after a 75-token prompt."""
    from llama_cpp import Llama

    from medgemma_toolkit.models.demo import demo_gguf_path

    llm = Llama(str(demo_gguf_path()), n_ctx=2048, n_batch=512, n_threads=threads, verbose=False)
    toks = llm.tokenize(TEXT.encode())
    toks = (toks * (max(prompt_lens) // len(toks) + 2))[: max(prompt_lens) + decode_steps]
    llm.reset()
    llm.eval(toks[:32])  # warm-up: thread pool, first allocations
    out: dict[str, object] = {"build": build_label()}
    for n in prompt_lens:
        llm.reset()
        t = time.perf_counter()
        llm.eval(toks[:n])
        out[f"prefill_{n}"] = n / (time.perf_counter() - t)
    llm.reset()
    llm.eval(toks[:75])
    t = time.perf_counter()
    for tok in toks[75 : 75 + decode_steps]:
        llm.eval([tok])
    out["decode"] = decode_steps / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", default=[], help="a --target dir holding llama_cpp (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-lens", default="75,512")
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    lens = [int(n) for n in args.prompt_lens.split(",")]
    if args.child:
        sys.path.insert(0, str(ROOT / "src"))
        print(json.dumps(measure(args.threads, lens, args.decode_steps)))
        return
    builds = ["", *args.build]  # "" = whatever `import llama_cpp` finds without help (the installed one)
    runs: dict[str, list[dict[str, object]]] = {b: [] for b in builds}
    for r in range(args.rounds):
        for b in builds if r % 2 == 0 else builds[::-1]:
            env = dict(os.environ, HF_HUB_OFFLINE="1")
            if b:
                env["PYTHONPATH"] = os.pathsep.join(p for p in (b, env.get("PYTHONPATH", "")) if p)
            cmd = [sys.executable, __file__, "--child", "--threads", str(args.threads), "--prompt-lens",
                   args.prompt_lens, "--decode-steps", str(args.decode_steps)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            runs[b].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    metrics = [f"prefill_{n}" for n in lens] + ["decode"]
    base = {m: statistics.median(float(x[m]) for x in runs[""]) for m in metrics}  # type: ignore[arg-type]
    print(f"demo model, {args.threads} threads, median of {args.rounds} rounds (tok/s; ratio to the installed build)")
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    for b in builds:
        print(f"  {runs[b][0]['build']}")
        line = []
        for m in metrics:
            v = statistics.median(float(x[m]) for x in runs[b])  # type: ignore[arg-type]
            line.append(f"{m} {v:7.1f}" + (f" ({v / base[m]:.2f}x)" if b else ""))
        print("    " + "   ".join(line))


if __name__ == "__main__":
    main()
