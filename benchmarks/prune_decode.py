"""Greedy batch decoding through the transformers backend with and without dropping finished rows, side by side.

A static batch decodes every row until its last row stops; the backend now cuts the batch between steps once a
quarter of its rows have finished (`backends/hf_decode.py`). Same model object, same 32 MCQ prompts rendered as
`benchmarks/eval_runner.py` renders them (the eval preset, its stop strings), same max new tokens; rounds
alternate the two sides so a change in the shared machine's load hits both alike. Also printed: one prefill, the
time of one decode step at several batch sizes, and the cost of selecting rows from the KV cache.

    python benchmarks/prune_decode.py                      # the demo model (Gemma 3 270M) through transformers
    python benchmarks/prune_decode.py --model PATH --items 16 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--fractions", default="0.25", help="comma-separated shares of finished rows that end a segment")
    args = ap.parse_args()

    import torch
    from eval_runner import make_items

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.backends import hf_decode
    from medgemma_toolkit.backends.decoding import RowState
    from medgemma_toolkit.eval.facts import eval_preset_name
    from medgemma_toolkit.eval.items import format_options
    from medgemma_toolkit.eval.spec import get_task

    mg = MedGemma.load(args.model, backend="transformers", dtype=args.dtype, max_batch_size=args.items)
    be = mg.backend
    torch.set_grad_enabled(False)
    data = Path(tempfile.mkdtemp(prefix="mg-prune-")) / "items.jsonl"
    make_items(data, args.items)
    preset = eval_preset_name(mg)
    requests = []
    for line in data.read_text().splitlines():
        row = json.loads(line)
        text = (
            get_task("medqa")
            .prompt.format(question=row["question"], options=format_options(row["options"]), condition="")
            .strip()
        )
        requests.append(mg.request(text, max_new_tokens=args.max_new_tokens, preset=preset))

    fractions = [float(x) for x in args.fractions.split(",")]
    calls: list[tuple[int, int, float]] = []  # (rows, new tokens, seconds) of each generate call in a batch
    real_generate = be.model.generate

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        out = real_generate(*a, **kw)
        seq = out.sequences if hasattr(out, "sequences") else out
        calls.append((seq.shape[0], seq.shape[1] - kw["input_ids"].shape[1], round(time.perf_counter() - t0, 3)))
        return out

    be.model.generate = timed_generate
    segments: dict[float | None, list] = {}

    def run(fraction: float | None) -> tuple[float, list]:
        """One batch: static (None) or pruned once `fraction` of a segment's rows have finished."""
        rows = [RowState(i, r) for i, r in enumerate(requests)]
        if fraction is not None:
            hf_decode.PRUNE_FRACTION = fraction
        calls.clear()
        t0 = time.perf_counter()
        done = be._generate_batch(rows, None, prune=fraction is not None)
        segments[fraction] = calls[:]
        return time.perf_counter() - t0, done

    run(fractions[0])  # warm-up (first calls allocate)
    sides: list[float | None] = [None, *fractions]
    times: dict[float | None, list[float]] = {f: [] for f in sides}
    answers: dict[float | None, list] = {}
    for _ in range(args.rounds):
        for f in sides:
            t, done = run(f)
            times[f].append(t)
            answers[f] = done

    be.model.generate = real_generate
    inputs = be._encode([r.prompt for r in requests]).to(be.input_device)
    t0 = time.perf_counter()
    out = be.model(**inputs, use_cache=True, logits_to_keep=1)
    prefill = time.perf_counter() - t0
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    n = inputs["input_ids"].shape[0]
    step_ms = {}
    select_ms = {}
    for b in sorted({n, max(1, 3 * n // 4), max(1, n // 2), max(1, n // 4), 1}, reverse=True):
        part = copy.deepcopy(cache)
        t0 = time.perf_counter()
        part.batch_select_indices(torch.arange(b))
        select_ms[b] = round(1000 * (time.perf_counter() - t0), 1)
        mask = torch.cat([inputs["attention_mask"][:b], inputs["attention_mask"].new_ones(b, 1)], dim=1)
        token = torch.full((b, 1), be.tokenizer.pad_token_id or 0, dtype=torch.long)
        pos = mask.long().cumsum(-1)[:, -1:] - 1
        samples = []
        for _ in range(3):
            step_cache = copy.deepcopy(part)
            t0 = time.perf_counter()
            be.model(input_ids=token, attention_mask=mask, position_ids=pos, cache=step_cache, use_cache=True)
            samples.append(time.perf_counter() - t0)
        step_ms[b] = round(1000 * min(samples), 1)

    lengths = [c.completion_tokens for c in answers[None]]
    static = statistics.mean(times[None])
    pruned = {f: statistics.mean(times[f]) for f in fractions}
    result = {
        "model": be.info.name,
        "dtype": be.info.extra.get("dtype"),
        "rows": n,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "static_s": [round(t, 2) for t in times[None]],
        "pruned_s_by_fraction": {f: [round(t, 2) for t in times[f]] for f in fractions},
        "speedup_by_fraction": {f: round(static / pruned[f], 2) for f in fractions},
        "prefill_s": round(prefill, 2),
        "answer_tokens": {"min": min(lengths), "max": max(lengths), "mean": round(statistics.mean(lengths), 1)},
        "wasted_share_static": round(1 - sum(lengths) / (n * max(lengths)), 2),
        "same_answers_by_fraction": {
            f: sum(
                (a.text, a.finish_reason, a.completion_tokens) == (b.text, b.finish_reason, b.completion_tokens)
                for a, b in zip(answers[None], answers[f])
            )
            for f in fractions
        },
        "generate_calls_by_fraction (rows, new tokens, s)": {f: segments[f] for f in fractions},
        "decode_step_ms_by_batch": step_ms,
        "cache_select_ms_by_rows_kept": select_ms,
    }
    print(json.dumps(result, indent=2))
    for f in fractions:
        print(f"static {static:.2f} s vs pruned at {f} {pruned[f]:.2f} s per batch of {n}: {static / pruned[f]:.2f}x")


if __name__ == "__main__":
    main()
