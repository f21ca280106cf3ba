"""Before/after scores on the validation split, through the same `Backend` interface every other path uses.

Prompts are built by the training collator's own `prompt_for` (same preset, same image pipeline), generation is
greedy, and answers are scored by exact match (classification, VQA) or token F1 (reports, chat), each with a 95%
interval from `stats` (Wilson for a proportion, a seeded bootstrap for a mean), the evaluation harness's own
statistics. This is the fallback for `--eval-task val`; the harness's tasks are used when it provides a runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..backends.base import Backend, GenerationRequest, SamplingParams
from ..core.model import ModelHint
from ..models.checkpoint import is_multimodal, load_processing
from ..prompts.thinking import split_thought
from ..stats import bootstrap_mean, normalize_answer, token_f1, wilson_interval
from .collator import SFTCollator
from .data import Example


def score_answers(preds: list[str], examples: list[Example], metric: str) -> dict[str, Any]:
    if metric == "accuracy":
        hits = [normalize_answer(p) == normalize_answer(ex.answer) for p, ex in zip(preds, examples)]
        lo, hi = wilson_interval(sum(hits), len(hits)) if hits else (0.0, 0.0)
        value = sum(hits) / len(hits) if hits else 0.0
    else:
        vals = [token_f1(p, ex.answer) for p, ex in zip(preds, examples)]
        blo, bhi = bootstrap_mean(vals)
        # One value (or none) has no spread to resample: the interval is the value itself.
        lo, hi = (blo, bhi) if blo is not None and bhi is not None else (vals[0], vals[0]) if vals else (0.0, 0.0)
        value = sum(vals) / len(vals) if vals else 0.0
    return {"metric": metric, "value": round(value, 4), "ci95": [round(lo, 4), round(hi, 4)], "n": len(preds)}


def predict(backend: Backend, preset: Any, examples: list[Example], model_dir: Path, batch_size: int = 8) -> list[str]:
    """Greedy answers for `examples`, with room for the longest reference answer. Prompts are built by the
    training collator over the checkpoint's own processor, exactly as training renders them."""
    proc = load_processing(str(model_dir), is_multimodal(model_dir))
    builder = SFTCollator(examples, proc.processor, proc.tokenizer, preset, backend.info.image_size)
    longest = max((backend.count_text_tokens(ex.answer) or 0 for ex in examples), default=8)
    params = SamplingParams(max_new_tokens=min(512, longest + 8), stop=preset.stop)
    out: list[str] = []
    for i in range(0, len(examples), batch_size):
        reqs = [GenerationRequest(builder.prompt_for(ex), params) for ex in examples[i : i + batch_size]]
        out += [split_thought(c.text).answer.strip() for c in backend.generate(reqs)]
    return out


def load_backend(model_dir: Path, adapter_dir: Path | None, device: str, method: str = "lora") -> Backend:
    """The toolkit's transformers backend on the base checkpoint the adapter was trained on, adapter applied.

    LoRA: bf16 base, adapter merged in memory (plain weights, fastest). QLoRA: the same 4-bit NF4 base the adapter
    was trained against, adapter kept unmerged (see `LoadOptions.adapter`)."""
    from ..backends.transformers_backend import TransformersBackend
    from ..core.options import LoadOptions
    from ..eval.generation import AUTO_BATCH

    quantize = "4bit" if method == "qlora" else "none"
    return TransformersBackend(
        model_dir,
        ModelHint(str(model_dir)),
        LoadOptions(
            device=device,
            quantize=quantize,
            max_batch_size=AUTO_BATCH,
            adapter=str(adapter_dir) if adapter_dir is not None else None,
        ),
    )


def evaluate(
    model_dir: Path,
    adapter_dir: Path | None,
    preset: Any,
    examples: list[Example],
    metric: str,
    device: str,
    method: str = "lora",
) -> dict[str, Any]:
    be = load_backend(model_dir, adapter_dir, device, method)
    try:
        preds = predict(be, preset, examples, model_dir)
    finally:
        be.close()
    result = score_answers(preds, examples, metric)
    result["predictions"] = preds[:20]  # a sample for the report; answers are model text, not input data
    return result


def harness_task_exists(task: str) -> None:
    """Raise `BadInput` unless `task` is one of the evaluation harness's tasks."""
    from ..eval.spec import get_task

    get_task(task)


def evaluate_with_harness(
    task: str,
    data: str | None,
    model_dir: Path,
    adapter_dir: Path | None,
    device: str,
    out: Path,
    max_new_tokens: int | None = None,
    method: str = "lora",
) -> dict[str, Any]:
    """Run the evaluation harness's task (MedGemma's protocol) and return its primary metric with the 95% CI.

    The result cache is off: base and adapted model share a checkpoint path, so cached base answers would
    otherwise be served for the adapted model."""
    from ..api import MedGemma
    from ..eval.runner import EvalOptions, run_eval

    be = load_backend(model_dir, adapter_dir, device, method)
    try:
        summary = run_eval(
            MedGemma(be),
            EvalOptions(task=task, data=data, out=out, use_cache=False, progress=False, max_new_tokens=max_new_tokens),
        )
    finally:
        be.close()
    primary = summary["task"]["primary_metric"]
    m = summary["metrics"][primary]
    return {
        "metric": primary,
        "value": m["value"],
        "ci95": [m["ci_low"], m["ci_high"]],
        "n": m["n"],
        "task": f"{summary['task']['name']}@{summary['task']['version']}",
        "harness_report": str(out),
    }
