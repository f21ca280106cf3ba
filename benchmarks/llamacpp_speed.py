"""Benchmark: decode speed of our `llamacpp` backend vs raw llama-cpp-python vs our `transformers` backend.

Same model (the demo Gemma 3 270M Q4_K_M GGUF), same completion prompt, same threads, greedy, same token budget.
Raw llama-cpp-python and our backend run alternately (so background load hits both alike); each side reports the
best of --repeat runs. Targets: ours >= 0.9x raw (overhead of stop strings, streaming bookkeeping), ours >= 2x
transformers (which dequantises the GGUF to fp32).

Run: .venv/bin/python benchmarks/llamacpp_speed.py [--threads 2] [--tokens 128] [--repeat 3] [--skip-transformers]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from medgemma_toolkit.backends.base import GenerationRequest, SamplingParams  # noqa: E402
from medgemma_toolkit.prompts.messages import Prompt  # noqa: E402

PROMPT = "Question: What are the common symptoms of community-acquired pneumonia in adults?\nAnswer:"
N_CTX = 2048


def raw_llama(path: Path, threads: int):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run(tokens: int) -> tuple[int, float]:
        llm.reset()
        t0 = time.perf_counter()
        out = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                                    repeat_penalty=1.0)
        return int(out["usage"]["completion_tokens"]), time.perf_counter() - t0

    return run


def ours(path: Path, threads: int, backend: str):
    from medgemma_toolkit import MedGemma

    t0 = time.perf_counter()
    mg = MedGemma.load(str(path), backend=backend, threads=threads, context_length=N_CTX)
    load_s = time.perf_counter() - t0
    be = mg.backend

    def run(tokens: int) -> tuple[int, float]:
        if hasattr(be, "llama"):
            be.llama.reset()  # no KV-cache reuse across runs: the raw side starts cold too
        req = GenerationRequest(Prompt(text=PROMPT), SamplingParams(max_new_tokens=tokens))
        t0 = time.perf_counter()
        c = be.generate([req])[0]
        return c.completion_tokens, time.perf_counter() - t0

    return run, load_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from medgemma_toolkit.models.demo import demo_gguf_path

    path = demo_gguf_path()
    print(f"model: {path.name}; prompt: completion, {args.tokens} new tokens, greedy, {args.threads} threads")

    raw_run = raw_llama(path, args.threads)
    our_run, our_load = ours(path, args.threads, "llamacpp")
    raw_run(8), our_run(8)  # warm-up: first-call allocations are not decode speed
    raw_tps, our_tps = [], []
    for _ in range(args.repeat):
        n, s = raw_run(args.tokens)
        raw_tps.append(n / s)
        n2, s2 = our_run(args.tokens)
        our_tps.append(n2 / s2)
    rows = [("raw llama-cpp-python", max(raw_tps), statistics.median(raw_tps), n, None),
            ("ours: llamacpp backend", max(our_tps), statistics.median(our_tps), n2, our_load)]
    if not args.skip_transformers:
        del our_run
        tf_run, tf_load = ours(path, args.threads, "transformers")
        tf_run(4)
        tf_tps = []
        for _ in range(max(1, args.repeat - 1)):
            n3, s3 = tf_run(args.tokens)
            tf_tps.append(n3 / s3)
        rows.append(("ours: transformers backend", max(tf_tps), statistics.median(tf_tps), n3, tf_load))

    print(f"{'engine':28} {'best tok/s':>10} {'median':>8} {'tokens':>6} {'load s':>7}")
    for name, best, med, n, load in rows:
        print(f"{name:28} {best:10.1f} {med:8.1f} {n:6d} {'' if load is None else f'{load:7.2f}'}")
    print(f"ratio ours/raw llama-cpp-python: {max(our_tps) / max(raw_tps):.2f}x (target >= 0.9x)")
    if not args.skip_transformers:
        print(f"ratio ours llamacpp/transformers: {max(our_tps) / rows[2][1]:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
