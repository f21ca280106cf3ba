"""Throughput of `medgemma eval`'s batched runner against a transformers `pipeline` called once per item.

The baseline is how MedGemma's quick-start notebook runs a model: one pipeline call per question. Both sides use the
same loaded model (same weights and dtype), the same 64 MCQ prompts (rendered by our preset, so the token streams
are identical), greedy decoding and the same max new tokens. Our side is the whole runner: reading the data,
length-sorted batches through `Backend.generate`, parsing, flushed records and the summary with bootstrap CIs.

    python benchmarks/eval_runner.py                      # the demo model (Gemma 3 270M, through transformers)
    python benchmarks/eval_runner.py --model PATH --batch-size 16 --max-new-tokens 32

The ceiling: a large square matmul in the model's dtype on the same threads (`matmul_peak_gflops`), the best this
machine does. The fraction: the model's useful work in the runner's generate time (every real prompt and generated
token through every linear layer, attention over real positions, the output layer for generated tokens only, as
`generate` computes it; padding and dead rows count as waste) over that ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_items(path: Path, n: int, seed: int = 0) -> None:
    """n MedQA-format items: our sample questions with their options shuffled (so every prompt differs)."""
    from medgemma_toolkit.eval.samples.generate import LETTERS, QUESTIONS

    rnd = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            q, opts, gold = QUESTIONS[i % len(QUESTIONS)]
            answer = opts[LETTERS.index(gold)]
            shuffled = opts[:]
            rnd.shuffle(shuffled)
            options = dict(zip("ABCD", shuffled))
            f.write(
                json.dumps(
                    {"id": f"b{i}", "question": q, "options": options, "answer_idx": "ABCD"[shuffled.index(answer)]}
                )
                + "\n"
            )


def matmul_peak_gflops(dtype: object, n: int = 2048, reps: int = 3) -> float:
    """GFLOP/s of the best of `reps` (n x n) @ (n x n) matmuls in `dtype` on torch's threads: the compute ceiling.
    For bf16 on a CPU, also through a oneDNN-packed weight (what the runner's linear layers use,
    runtime/packed_linear.py), and the faster of the two counts."""
    import torch

    from medgemma_toolkit.runtime.packed_linear import can_pack

    a = torch.randn(n, n).to(dtype)  # type: ignore[arg-type]
    b = torch.randn(n, n).to(dtype)  # type: ignore[arg-type]
    calls = [lambda: torch.mm(a, b)]
    if dtype == torch.bfloat16 and can_pack():
        packed = torch.ops.mkldnn._reorder_linear_weight(b, n)
        calls.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    best = float("inf")
    for call in calls:
        call()  # warm-up (oneDNN picks its kernel)
        for _ in range(reps):
            t0 = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def useful_flops(model: object, records: list[dict[str, object]]) -> float:
    """FLOPs a padding-free, dead-row-free run must do for `records` (prompt and completion token counts): 2 per
    parameter of each linear layer per token, the output layer only for generated tokens (prefill keeps the last
    position's logits), causal attention (QK^T and AV) over the real positions, sliding layers over their window."""
    cfg = model.config.get_text_config()  # type: ignore[attr-defined]
    head = model.get_output_embeddings().weight.numel()  # type: ignore[attr-defined]
    body = sum(
        m.weight.numel()
        for name, m in model.named_modules()  # type: ignore[attr-defined]
        if type(m).__name__ == "Linear" and "lm_head" not in name and "vision" not in name
    )
    width = cfg.num_attention_heads * cfg.head_dim  # query heads x head size
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    window = getattr(cfg, "sliding_window", None) or 1 << 30
    total = 0.0
    for r in records:
        p, c = int(r["prompt_tokens"]), int(r["completion_tokens"])  # type: ignore[call-overload]
        total += 2 * body * (p + c) + 2 * head * c
        for t in range(1, p + c + 1):  # token t attends to min(t, window) positions: 4 FLOPs per position and width
            total += sum(4 * width * min(t, window if kind == "sliding_attention" else t) for kind in types)
    return total


# What each side of --compare switches on: (length buckets, fused RMSNorm, preallocated KV cache, packed linears,
# our own greedy steps, batches refilled as rows finish).
NOW = (True, True, True, True, True, True)
BEFORE = {
    "original": (False,) * 6,
    "buckets": (True, True, False, False, False, False),
    "decode": (True, True, True, True, True, False),
}


BEFORE_BATCH = 32  # the automatic CPU text batch before issue 35's third step (now 64 where memory allows)


def set_path(backend: object, path: tuple[bool, ...]) -> None:
    """Switch the transformers backend's throughput features on or off (nothing for other backends)."""
    from medgemma_toolkit.runtime.norms import fuse_rms_norms
    from medgemma_toolkit.runtime.packed_linear import pack_linears

    if not hasattr(backend, "bucket_prefill"):
        return
    bucket, norms, cache, packed, steps, refill = path
    backend.bucket_prefill = bucket
    backend.refill_batches = refill
    backend.preallocate_cache = cache
    backend.greedy_steps = steps
    fuse_rms_norms(backend.model, on=norms)  # type: ignore[attr-defined]
    # Only where the load packed a copy (enough memory; bf16, or fp32 on AMD); in-place packing has no plain path.
    if str(getattr(backend, "packed_linears", "")).isdigit():
        pack_linears(backend.model, on=packed, dtype=backend.dtype)  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="demo",
        help="demo, a checkpoint directory, a .gguf, or 'tiny' (random 4-layer, 256-wide MedGemma-architecture text model)",
    )
    ap.add_argument("--items", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument(
        "--batch-size", type=int, default=0, help="rows decoded at once; 0 (default): what `medgemma eval` picks"
    )
    ap.add_argument("--rounds", type=int, default=2, help="alternate runner and pipeline over this many item chunks")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--dtype", default="auto", help="auto (bf16 on CPUs with AMX/AVX512-BF16, as `medgemma eval`), float32, ..."
    )
    ap.add_argument(
        "--backend",
        default="transformers",
        help="the runner's backend; 'auto' = what `medgemma eval` picks (for the demo: transformers on a GPU or a "
        "bf16-capable CPU, else llama.cpp). "
        "The baseline is always a transformers pipeline: the same model object when the runner uses "
        "transformers, else the same weights loaded through transformers (dequantised, --dtype)",
    )
    ap.add_argument(
        "--compare",
        action="store_true",
        help="also run the runner as it was before (see --before), alternating with the default; reports both and "
        "their agreement",
    )
    ap.add_argument(
        "--before",
        choices=sorted(BEFORE),
        default="original",
        help="what --compare runs: 'original' = before issue 35 (each batch prefilled whole, transformers' own "
        "RMSNorm, DynamicCache, plain F.linear, a generate call per segment); 'buckets' = issue 35's first round "
        "(length buckets and fused norms only); 'decode' = its second (all but refilled batches: one batch after "
        "another)",
    )
    ap.add_argument("--no-pipeline", action="store_true", help="skip the one-call-per-item pipeline baseline")
    args = ap.parse_args()

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.eval.runner import EvalOptions, run_eval

    work = Path(tempfile.mkdtemp(prefix="mg-bench-"))
    model = args.model
    if model == "tiny":
        from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma

        model = str(build_tiny_medgemma(work / "tiny", text_only=True, hidden_size=256, layers=4))
    data = work / "items.jsonl"
    make_items(data, args.items)
    rows = data.read_text().splitlines()
    per_round = -(-len(rows) // args.rounds)
    chunks = [rows[k : k + per_round] for k in range(0, len(rows), per_round)]

    t0 = time.perf_counter()
    mg = MedGemma.load(
        model,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        max_batch_size=args.batch_size,
        workload="throughput",
    )  # as `medgemma eval` loads it
    print(
        f"model {mg.backend.info.name} ({mg.backend.info.extra}) loaded in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    from transformers import pipeline

    from medgemma_toolkit.eval.facts import eval_preset_name
    from medgemma_toolkit.eval.items import format_options
    from medgemma_toolkit.eval.spec import get_task
    from medgemma_toolkit.prompts.presets import get_preset

    base = (
        mg
        if mg.backend.info.backend == "transformers"
        else MedGemma.load(model, backend="transformers", device=args.device, dtype=args.dtype)
    )
    be = base.backend
    print(
        f"runner on {mg.backend.info.backend} {mg.backend.info.extra}; pipeline on transformers {be.info.extra}",
        file=sys.stderr,
    )
    pipe = pipeline("text-generation", model=be.model, tokenizer=be.tokenizer, device=be.model.device)
    eval_preset = get_preset(eval_preset_name(mg))  # the preset the runner uses: same prompts, same stop strings
    ours_wall = ours_gen = base_wall = ours_flops = whole_gen = whole_flops = 0.0
    whole_text: dict[str, str] = {}
    ours_tokens = base_tokens = 0
    ours_text: dict[str, str] = {}
    base_text: dict[str, str] = {}
    # Warm-up, untimed: the first calls of a process pay for oneDNN kernel set-up and lazy imports.
    warm = work / "warm.jsonl"
    warm.write_text("\n".join(rows[:4]) + "\n")
    before = BEFORE[args.before]
    for bucket, path in ((True, NOW), (False, before)) if args.compare else ((True, NOW),):
        set_path(mg.backend, path)
        run_eval(
            mg,
            EvalOptions(
                task="medqa",
                data=str(warm),
                out=work / f"warm-{bucket}",
                batch_size=4,
                max_new_tokens=4,
                use_cache=False,
                progress=False,
            ),
        )
    # Rounds alternate between the two sides, so a change in the (shared) machine's load hits both alike.
    for k, chunk in enumerate(chunks):
        part = work / f"items{k}.jsonl"
        part.write_text("\n".join(chunk) + "\n")
        # -- ours: the full runner (reading, batches, parsing, flushed records, summary with CIs, report) -----
        sides = [("", NOW), ("-before", before)] if args.compare else [("", NOW)]
        for tag, path in sides if k % 2 == 0 else sides[::-1]:
            set_path(mg.backend, path)
            t0 = time.perf_counter()
            summary = run_eval(
                mg,
                EvalOptions(
                    task="medqa",
                    data=str(part),
                    out=work / f"run{k}{tag}",
                    # The earlier paths ran batches of 32 where the batch was automatic (`BEFORE_BATCH`).
                    batch_size=args.batch_size or (BEFORE_BATCH if tag else None),
                    max_new_tokens=args.max_new_tokens,
                    use_cache=False,
                    progress=False,
                ),
            )
            wall = time.perf_counter() - t0
            recs = [json.loads(x) for x in (work / f"run{k}{tag}" / "records.jsonl").read_text().splitlines()]
            flops = useful_flops(mg.backend.model, recs) if mg.backend.info.backend == "transformers" else 0.0
            texts = {r["item_id"]: (r["raw"] or "").strip() for r in recs}
            if tag:
                whole_gen += summary["timing"]["generate_seconds"]
                whole_flops += flops
                whole_text.update(texts)
                continue
            ours_wall += wall
            ours_gen += summary["timing"]["generate_seconds"]
            ours_flops += flops
            ours_tokens += sum(r["completion_tokens"] for r in recs)
            ours_text.update(texts)
        if args.no_pipeline:
            continue

        # -- baseline: a transformers pipeline, one call per item, the same rendered prompts ------------------
        user_preset, base.preset = base.preset, eval_preset
        texts = []
        for line in chunk:
            row = json.loads(line)
            prompt_text = (
                get_task("medqa")
                .prompt.format(question=row["question"], options=format_options(row["options"]), condition="")
                .strip()
            )
            texts.append(be.render(base.request(prompt_text, max_new_tokens=args.max_new_tokens).prompt))
        add_special = base.request("x").prompt.is_completion  # chat-rendered text already carries <bos>
        stop = {"stop_strings": list(eval_preset.stop), "tokenizer": be.tokenizer} if eval_preset.stop else {}
        base.preset = user_preset
        t0 = time.perf_counter()
        for line, text in zip(chunk, texts):
            out = pipe(
                text,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                return_tensors=True,
                add_special_tokens=add_special,
                **stop,
            )
            n_prompt = len(be.tokenizer(text, add_special_tokens=add_special)["input_ids"])
            base_tokens += len(out[0]["generated_token_ids"]) - n_prompt
            answer = be.tokenizer.decode(out[0]["generated_token_ids"][n_prompt:], skip_special_tokens=True)
            for s in eval_preset.stop:
                answer = answer.split(s)[0]
            base_text[json.loads(line)["id"]] = answer.strip()
        base_wall += time.perf_counter() - t0
        print(
            f"round {k + 1}/{len(chunks)}: runner {ours_wall:.1f} s, pipeline {base_wall:.1f} s so far", file=sys.stderr
        )

    n = args.items
    peak = matmul_peak_gflops(be.model.dtype)
    reached = ours_flops / ours_gen / 1e9
    result = {
        "model": mg.backend.info.name,
        "device": mg.backend.info.extra.get("device"),
        "dtype": mg.backend.info.extra.get("dtype"),
        "items": n,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size or f"auto ({mg.backend.capabilities.max_batch_size})",
        "rounds": len(chunks),
        "runner_items_per_s": round(n / ours_wall, 3),
        **(
            {
                "before": args.before,
                "before_generate_only_items_per_s": round(n / whole_gen, 3),
                "before_fraction_of_peak": round(whole_flops / whole_gen / 1e9 / peak, 3),
                "same_answers_as_before": sum(ours_text.get(i) == a for i, a in whole_text.items()),
            }
            if args.compare
            else {}
        ),
        "runner_generate_only_items_per_s": round(n / ours_gen, 3),
        "pipeline_items_per_s": round(n / base_wall, 3) if base_wall else None,
        "runner_tokens": ours_tokens,
        "pipeline_tokens": base_tokens,
        "speedup": round(base_wall / ours_wall, 2) if base_wall else None,
        "runner_backend": mg.backend.info.backend,
        "pipeline_dtype": be.info.extra.get("dtype"),
        "same_answers": sum(ours_text.get(i) == a for i, a in base_text.items()),
        "peak_gflops": round(peak, 1),
        "runner_useful_gflops": round(reached, 1),
        "fraction_of_peak": round(reached / peak, 3),
    }
    print(json.dumps(result, indent=2))
    if base_wall:
        print(
            f"runner {n / ours_wall:.2f} items/s (whole run incl. records and report) vs pipeline "
            f"{n / base_wall:.2f} items/s: {base_wall / ours_wall:.2f}x"
        )
    print(
        f"ceiling {peak:.0f} GFLOP/s ({str(be.model.dtype).replace('torch.', '')} matmul); runner's generate time "
        f"does {reached:.0f} GFLOP/s of useful work: {100 * reached / peak:.0f}% of peak"
    )


if __name__ == "__main__":
    main()
