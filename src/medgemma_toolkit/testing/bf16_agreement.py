"""Do greedy answers survive bf16? Compare a model's greedy continuations in fp32 and bf16, item by item.

Where the two differ, the first divergent step is found and the fp32 model's own logits at that step (same prefix:
everything before it is identical) give the margin between fp32's choice and bf16's choice. A divergence is
"within bf16 tolerance" when that margin is below what bf16 rounding can move a logit by there: `rel_tol` (default
2^-5: bf16 keeps 8 significant bits, ~2^-9 relative rounding per operation, compounded over the layers) times the
largest logit magnitude at that step. A bug in the bf16 path (a wrong mask, a dropped scale) diverges at margins
far above that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REL_TOL = 2.0**-5
# Short medical questions: the items the test and benchmarks/cpu_bf16.py compare on.
QUESTIONS = [
    "Which organ produces insulin?",
    "What is the normal range of serum sodium?",
    "Name three causes of a raised troponin.",
    "What does an S3 heart sound suggest?",
    "Which nerve is damaged in wrist drop?",
    "What is the first-line treatment of anaphylaxis?",
    "Describe the typical findings of lobar pneumonia on a chest X-ray.",
    "What is the mechanism of action of metformin?",
]


@dataclass(frozen=True)
class Divergence:
    item: int
    step: int
    margin: float  # fp32 logit of fp32's token minus fp32 logit of bf16's token, at the first divergent step
    scale: float  # largest |fp32 logit| at that step

    @property
    def within_tolerance(self) -> bool:
        return self.margin <= REL_TOL * self.scale


def greedy_with_logits(model: Any, inputs: dict[str, Any], max_new_tokens: int) -> tuple[list[list[int]], Any]:
    """Greedy new tokens per row and the raw logits of each step ((steps, rows, vocab), float32)."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            eos_token_id=None,  # a fixed number of steps: stopping early would hide later divergences
            temperature=None,
            top_p=None,
            top_k=None,
        )
    start = inputs["input_ids"].shape[1]
    tokens = out.sequences[:, start:].tolist()
    return tokens, torch.stack([x.float() for x in out.logits])


def compare(fp32_tokens: list[list[int]], bf16_tokens: list[list[int]], fp32_logits: Any) -> list[Divergence]:
    """The first divergence of each row that differs."""
    found = []
    for i, (a, b) in enumerate(zip(fp32_tokens, bf16_tokens)):
        step = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if step is None:
            continue
        logits = fp32_logits[step, i]
        found.append(Divergence(i, step, float(logits[a[step]] - logits[b[step]]), float(logits.abs().max())))
    return found


def agreement(backend: Any, prompts: list[Any], max_new_tokens: int) -> dict[str, Any]:
    """Run `backend`'s model greedily on `prompts` in fp32, then in bf16 (converted in place; the backend is left
    in bf16), and summarise: identical rows, divergences, their margins against the tolerance."""
    import torch

    inputs = backend._encode(prompts).to(backend.input_device)
    backend.model.to(torch.float32)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.float32)
    fp32_tokens, fp32_logits = greedy_with_logits(backend.model, inputs, max_new_tokens)
    backend.model.to(torch.bfloat16)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    bf16_tokens, _ = greedy_with_logits(backend.model, inputs, max_new_tokens)
    div = compare(fp32_tokens, bf16_tokens, fp32_logits)
    return {
        "items": len(prompts),
        "identical": len(prompts) - len(div),
        "diverged": len(div),
        "within_tolerance": sum(d.within_tolerance for d in div),
        "divergences": [
            {"item": d.item, "step": d.step, "margin": round(d.margin, 4), "scale": round(d.scale, 3)} for d in div
        ],
        "rel_tol": REL_TOL,
    }
