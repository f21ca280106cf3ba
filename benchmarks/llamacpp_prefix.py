"""Benchmark: the llama.cpp engine's prompt cache on a chat turn. A ~1,500-token history (questions and answers) is
answered once, then the next turn resends it plus the answer and a new question, as `medgemma chat` and `serve`
clients do. Timed side by side in one run, alternating: the second turn with the cache (only the new tokens are
prefilled) and without it (the cache cleared and off: the whole history is prefilled again). Same loaded demo model
(Gemma 3 270M Q4_K_M), greedy. Prints the median second-turn seconds of each, the ratio, the tokens served from the
cache, and whether the answers agree (they may part at a near-tie: a prefill split in two rounds differently).

    python benchmarks/llamacpp_prefix.py [--history-tokens 1500] [--max-new-tokens 16] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FACTS = [
    ("What is the normal adult resting heart rate?", "Between 60 and 100 beats per minute at rest."),
    ("Which organ produces insulin?", "The pancreas, in the beta cells of its islets."),
    ("What does the kidney do?", "It filters the blood, removes waste and balances water and salts."),
    ("What is hypertension?", "Blood pressure that stays at or above 130 over 80 mmHg."),
    ("Which bone is the longest in the human body?", "The femur, the thigh bone."),
    ("How many chambers does the human heart have?", "Four: two atria and two ventricles."),
    ("What are common symptoms of pneumonia?", "Cough, fever, shortness of breath and chest pain."),
    ("Name a vitamin made in the skin.", "Vitamin D, when the skin is exposed to sunlight."),
]


def history(be, n_tokens: int) -> str:
    """Question/answer turns until the prompt holds about `n_tokens` tokens."""
    text, i = "", 0
    while len(be.llama.tokenize(text.encode(), add_bos=True, special=True)) < n_tokens:
        q, a = FACTS[i % len(FACTS)]
        text += f"Question ({i + 1}): {q}\nAnswer: {a}\n"
        i += 1
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history-tokens", type=int, default=1500)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from llamacpp_build import build_label

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.backends.base import GenerationRequest, SamplingParams
    from medgemma_toolkit.core.messages import Prompt

    mg = MedGemma.load("demo", backend="llamacpp", threads=args.threads, parallel=4)
    be, eng = mg.backend, mg.backend.engine

    def ask(text: str) -> tuple[str, float, int, int]:
        before = eng.cached_prompt_tokens
        t0 = time.perf_counter()
        c = be.generate([GenerationRequest(Prompt(text=text), SamplingParams(max_new_tokens=args.max_new_tokens))])[0]
        return c.text, time.perf_counter() - t0, c.prompt_tokens, eng.cached_prompt_tokens - before

    print(f"llama_cpp: {build_label()}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    first = history(be, args.history_tokens) + "Question: What is the main function of red blood cells?\nAnswer:"
    secs: dict[bool, list[float]] = {True: [], False: []}
    answers: dict[bool, str] = {}
    info: dict[bool, tuple[int, int]] = {}
    for r in range(args.rounds):
        for reuse in [True, False] if r % 2 == 0 else [False, True]:
            eng.clear_cache()
            eng.reuse_prefix = True
            a1, _t, _p, _c = ask(first)  # turn 1 (its KV stays cached when the cache is on)
            second = f"{first}{a1}\nQuestion: And what carries oxygen inside them?\nAnswer:"
            eng.reuse_prefix = reuse
            if not reuse:
                eng.clear_cache()
            text, t, n_prompt, reused = ask(second)
            secs[reuse].append(t)
            answers[reuse], info[reuse] = text, (n_prompt, reused)
    eng.reuse_prefix = True
    on, off = statistics.median(secs[True]), statistics.median(secs[False])
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        f"second chat turn on the demo GGUF, {info[True][0]} prompt tokens, {args.max_new_tokens} new tokens, greedy, "
        f"{args.threads} threads, median of {args.rounds}"
    )
    print(f"  without the prompt cache: {off:6.2f} s  (prefilled {info[False][0] - info[False][1]} tokens)")
    print(
        f"  with the prompt cache   : {on:6.2f} s  (prefilled {info[True][0] - info[True][1]} tokens, "
        f"{info[True][1]} from the cache)   {off / on:.1f}x faster"
    )
    print(f"  answers equal: {answers[True] == answers[False]}")
    mg.backend.close()


if __name__ == "__main__":
    main()
