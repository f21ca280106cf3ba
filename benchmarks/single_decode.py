"""One greedy question through the transformers backend: HF `generate` for every token against the prefill plus
our own decode steps (`hf_decode.greedy_steps`, which `ask`, `chat` and `serve` now use for a single greedy row too),
side by side on the same model object, rounds alternating so the shared machine's load hits both alike.

Why: one row's decode step is a small matrix-vector pass, so the work around it counts. `generate` copies the
(1 x 262k) logits to float32, runs its processors and stopping criteria, and grows the KV cache by concatenation at
every step; the steps path takes the argmax of the bf16/fp32 logits (the same token) in a preallocated cache.
Printed: tokens per second of each side, their ratio, and whether the tokens are identical (they must be).

    python benchmarks/single_decode.py                      # the demo model (Gemma 3 270M) through transformers
    python benchmarks/single_decode.py --model PATH --max-new-tokens 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

QUESTION = "List the causes of a pleural effusion, with one sentence on how each is recognised on a chest X-ray."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.backends.decoding import RowState

    mg = MedGemma.load(args.model, backend="transformers", dtype=args.dtype)
    be = mg.backend
    request = mg.request(QUESTION, max_new_tokens=args.max_new_tokens)

    def run(steps: bool) -> tuple[float, str, int]:
        """One answer; `steps` False: `generate` makes every token (the static path, as before)."""
        t0 = time.perf_counter()
        done = be._generate_batch([RowState(0, request)], None, prune=steps)
        return time.perf_counter() - t0, done[0].text, done[0].completion_tokens

    texts: dict[bool, str] = {}
    run(False), run(True)  # warm-up of both sides: first calls allocate
    times: dict[bool, list[float]] = {False: [], True: []}
    tokens: dict[bool, int] = {}
    for _ in range(args.rounds):
        for steps in (False, True):
            seconds, texts[steps], tokens[steps] = run(steps)
            times[steps].append(seconds)
    rate = {s: tokens[s] / statistics.median(times[s]) for s in times}
    print(
        json.dumps(
            {
                "model": be.info.name,
                "dtype": be.info.extra.get("dtype"),
                "new_tokens": tokens,
                "generate_s": [round(t, 3) for t in times[False]],
                "steps_s": [round(t, 3) for t in times[True]],
                "identical": texts[False] == texts[True],
            }
        )
    )
    print(
        f"one greedy row, {tokens[True]} tokens (prefill included): generate {rate[False]:.2f} tok/s, "
        f"prefill + greedy_steps {rate[True]:.2f} tok/s ({rate[True] / rate[False]:.2f}x); "
        f"identical text: {texts[False] == texts[True]}"
    )


if __name__ == "__main__":
    main()
