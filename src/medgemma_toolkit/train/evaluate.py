"""Before/after scores on the validation split, through the same `Backend` interface every other path uses.

Prompts are built by the training collator's own `prompt_for` (same preset, same image pipeline), generation is
greedy, and answers are scored by exact match (classification, VQA) or token F1 (reports, chat), each with a 95%
interval: Wilson for a proportion, a seeded bootstrap for a mean. This is the fallback for `--eval-task val`; the
evaluation harness's tasks are used when it provides a runner.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

from ..backends.base import GenerationRequest, SamplingParams
from ..prompts.thinking import split_thought
from .collator import SFTCollator
from .data import Example

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(s: str) -> str:
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s.lower().translate(_PUNCT)).split())


def token_f1(pred: str, ref: str) -> float:
    p, r = normalize(pred).split(), normalize(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if not common:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def bootstrap(values: list[float], seed: int = 0, rounds: int = 1000) -> tuple[float, float]:
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(rounds))
    return (means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1])


def score_answers(preds: list[str], examples: list[Example], metric: str) -> dict[str, Any]:
    if metric == "accuracy":
        hits = [normalize(p) == normalize(ex.answer) for p, ex in zip(preds, examples)]
        lo, hi = wilson(sum(hits), len(hits))
        value = sum(hits) / len(hits) if hits else 0.0
    else:
        vals = [token_f1(p, ex.answer) for p, ex in zip(preds, examples)]
        lo, hi = bootstrap(vals)
        value = sum(vals) / len(vals) if vals else 0.0
    return {"metric": metric, "value": round(value, 4), "ci95": [round(lo, 4), round(hi, 4)], "n": len(preds)}


def predict(backend: Any, preset: Any, examples: list[Example], batch_size: int = 8) -> list[str]:
    """Greedy answers for `examples`, with room for the longest reference answer."""
    builder = SFTCollator(examples, getattr(backend, "processor", None), backend.tokenizer, preset,
                          backend.info.image_size)
    longest = max((len(backend.tokenizer(ex.answer, add_special_tokens=False)["input_ids"]) for ex in examples),
                  default=8)
    params = SamplingParams(max_new_tokens=min(512, longest + 8), stop=preset.stop)
    out: list[str] = []
    for i in range(0, len(examples), batch_size):
        reqs = [GenerationRequest(builder.prompt_for(ex), params) for ex in examples[i : i + batch_size]]
        out += [split_thought(c.text).answer.strip() for c in backend.generate(reqs)]
    return out


def load_backend(model_dir: Path, adapter_dir: Path | None, device: str, method: str = "lora") -> Any:
    """The toolkit's transformers backend on the base checkpoint the adapter was trained on, adapter applied.

    LoRA: bf16 base, adapter merged in memory (plain weights, fastest). QLoRA: the same 4-bit NF4 base the adapter
    was trained against, adapter kept unmerged (merging into 4-bit weights would re-quantise them, and the bf16
    base is what QLoRA was chosen not to load)."""
    from ..backends.torch_setup import LoadOptions
    from ..backends.transformers_backend import TransformersBackend

    quantize = "4bit" if method == "qlora" else "none"
    be = TransformersBackend(model_dir, {"name": str(model_dir)}, LoadOptions(device=device, quantize=quantize))
    if adapter_dir is not None:
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(be.model, str(adapter_dir))
        be.model = peft_model if method == "qlora" else peft_model.merge_and_unload()
        be.model.eval()
    return be


def evaluate(model_dir: Path, adapter_dir: Path | None, preset: Any, examples: list[Example], metric: str,
             device: str, method: str = "lora") -> dict[str, Any]:
    be = load_backend(model_dir, adapter_dir, device, method)
    try:
        preds = predict(be, preset, examples)
    finally:
        be.close()
    result = score_answers(preds, examples, metric)
    result["predictions"] = preds[:20]  # a sample for the report; answers are model text, not input data
    return result


def harness_task_exists(task: str) -> None:
    """Raise `BadInput` unless `task` is one of the evaluation harness's tasks."""
    from ..eval.spec import get_task

    get_task(task)


def evaluate_with_harness(task: str, data: str | None, model_dir: Path, adapter_dir: Path | None, device: str,
                          out: Path, max_new_tokens: int | None = None, method: str = "lora") -> dict[str, Any]:
    """Run the evaluation harness's task (MedGemma's protocol) and return its primary metric with the 95% CI.

    The result cache is off: base and adapted model share a checkpoint path, so cached base answers would
    otherwise be served for the adapted model."""
    from ..api import MedGemma
    from ..eval.runner import EvalOptions, run_eval

    be = load_backend(model_dir, adapter_dir, device, method)
    try:
        summary = run_eval(MedGemma(be), EvalOptions(task=task, data=data, out=out, use_cache=False, progress=False,
                                                          max_new_tokens=max_new_tokens))
    finally:
        be.close()
    primary = summary["task"]["primary_metric"]
    m = summary["metrics"][primary]
    return {"metric": primary, "value": m["value"], "ci95": [m["ci_low"], m["ci_high"]], "n": m["n"],
            "task": f"{summary['task']['name']}@{summary['task']['version']}", "harness_report": str(out)}
