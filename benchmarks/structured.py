"""Constrained vs free decoding speed (tokens/s) on one model, through `MedGemma.request` and `Backend.generate`.

The same prompts, greedy, once free and once under a JSON schema (tests/data/structured/nested.json by default);
prints tokens/s of each and their ratio (the issue's goal: constrained >= 0.8x free). Run it briefly:

    python benchmarks/structured.py --model /path/to/checkpoint-or.gguf --n 4 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--schema", default=str(ROOT / "tests" / "data" / "structured" / "nested.json"))
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()

    from medgemma_toolkit import MedGemma

    schema = json.loads(Path(args.schema).read_text())
    mg = MedGemma.load(args.model)
    questions = [f"Summarise lab report {i} as JSON." for i in range(args.n)]

    def run(constrained: bool) -> float:
        tokens, seconds = 0, 0.0
        for q in questions:  # one at a time: the per-token cost, not batching, is what the mask adds
            req = mg.request(q, max_new_tokens=args.max_new_tokens, json_schema=schema if constrained else None)
            t0 = time.perf_counter()
            c = mg.backend.generate([req])[0]
            seconds += time.perf_counter() - t0
            tokens += c.completion_tokens
        return tokens / seconds

    run(True)  # warm-up: builds the grammar engine's token trie once
    free, bound = run(False), run(True)
    print(
        json.dumps(
            {
                "backend": mg.backend.info.backend,
                "free_tok_s": round(free, 1),
                "constrained_tok_s": round(bound, 1),
                "ratio": round(bound / free, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
