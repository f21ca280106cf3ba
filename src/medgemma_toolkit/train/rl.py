"""`medgemma rl`: GRPO on multiple-choice questions with a reward for a correct, well-formed "Final Answer: X".

The prompt asks the model to end with "Final Answer: X" (MedGemma's evaluation convention), TRL's GRPO trainer
samples a group of completions per question, and the reward below scores each one. LoRA on the language model,
atomic checkpoints, `--resume`, loss/reward log and provenance work exactly as for `finetune`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backends.memory import call_or_oom
from ..backends.placement import restrict_for_training
from ..backends.torch_setup import pick_device_dtype
from ..errors import BadInput
from ..models.resolve import resolve_model
from ..rowfile import read_rows
from . import checkpoints as ck
from .fit import check_fits
from .logs import CURVE_NAME, LOG_NAME, make_callbacks, plot_curve, read_log, truncate_log
from .provenance import read_provenance, write_provenance
from .recipe import get_recipe

INSTRUCTION = "Think step by step if needed, then finish with a line of the form \"Final Answer: X\" where X is the letter."
_FINAL = re.compile(r"final answer\s*:\s*\(?([A-Z])\)?\s*\.?\s*$", re.IGNORECASE)
_ANY_FINAL = re.compile(r"final answer\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class RewardSpec:
    """Reward weights: versioned data, recorded in provenance."""

    version: str = "1"
    correct: float = 1.0  # the final letter equals the gold letter
    well_formed: float = 0.2  # exactly one "Final Answer: X" line, as the last line, X one of the options


REWARD = RewardSpec()


@dataclass(frozen=True)
class MCQ:
    question: str
    options: tuple[tuple[str, str], ...]  # (letter, text)
    answer: str  # letter

    def prompt(self) -> str:
        opts = "\n".join(f"({k}) {v}" for k, v in self.options)
        return f"{self.question}\n{opts}\n{INSTRUCTION}"


def completion_text(c: Any) -> str:
    """TRL passes plain strings, or chat lists [{"role": "assistant", "content": ...}] for conversational data."""
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict):
        content = c[-1].get("content", "")
        if isinstance(content, list):
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)
    return ""


def parse_final(text: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The letter of a well-formed answer: one "Final Answer: X" line, last in the text, X among `letters`."""
    if len(_ANY_FINAL.findall(text)) != 1:
        return None
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    m = _FINAL.search(lines[-1]) if lines else None
    if not m or m.group(1).upper() not in letters.upper():
        return None
    return m.group(1).upper()


def final_answer_reward(completions: list[Any], answer: list[str], letters: list[str] | None = None,
                        **_: Any) -> list[float]:
    """GRPO reward function: `well_formed` for a parseable final line, plus `correct` when it is the gold letter."""
    out = []
    for i, (c, gold) in enumerate(zip(completions, answer)):
        got = parse_final(completion_text(c), letters[i] if letters else "ABCDEFGHIJ")
        out.append(0.0 if got is None else REWARD.well_formed + (REWARD.correct if got == str(gold).upper() else 0.0))
    return out


def load_mcq(path: str | Path) -> list[MCQ]:
    """JSONL: {"question", "options": {"A": ..} or [..], "answer": "B"}; bad lines reported with their numbers."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BadInput(f"{path}: not found")
    items, bad = [], []
    for r in read_rows(p, "jsonl"):
        try:
            if r.error is not None:
                raise ValueError(r.error)
            row = r.row
            opts = row["options"]
            pairs = [(str(k).upper(), str(v)) for k, v in (opts.items() if isinstance(opts, dict) else
                     zip("ABCDEFGHIJ", opts))]
            ans = str(row["answer"]).strip().upper()
            if not str(row["question"]).strip() or len(pairs) < 2 or ans not in {k for k, _ in pairs}:
                raise ValueError
            items.append(MCQ(str(row["question"]).strip(), tuple(pairs), ans))
        except (ValueError, KeyError, TypeError, AttributeError):
            bad.append(r.line)
    if bad:
        raise BadInput(f"{p}: {len(bad)} bad line(s) (need question, options with >= 2 entries, answer among them): "
                       f"lines {', '.join(map(str, bad[:10]))}")
    if not items:
        raise BadInput(f"{p}: no questions")
    return items


@dataclass
class RLSettings:
    model: str
    data: str
    out: str
    max_steps: int = 20
    num_generations: int = 4
    max_completion_length: int = 256
    learning_rate: float | None = None
    lora_r: int | None = None
    save_steps: int = 10
    temperature: float = 1.0
    device: str = "auto"
    resume: bool = False
    quiet: bool = False
    seed: int = 42
    extra: dict[str, Any] = field(default_factory=dict)


def run_rl(s: RLSettings) -> dict[str, Any]:
    from . import require_train_dependencies

    require_train_dependencies()
    from .model import add_lora, load_for_training, one_device, trainable_summary

    run = Path(s.out).expanduser()
    prov = read_provenance(run) if run.exists() else None
    if s.resume:
        if prov is None or "settings" not in prov:
            raise BadInput(f"--resume: {run} holds no run to resume (no provenance.json)")
        s = RLSettings(**{**prov["settings"], "out": str(run), "resume": True, "quiet": s.quiet})
    elif prov is not None or (run.exists() and any(run.iterdir())):
        raise BadInput(f"{run}: already exists and is not empty; pass --resume to continue it or choose another --out")
    if s.num_generations < 2:
        raise BadInput("--num-generations must be at least 2 (GRPO compares completions within a group)")
    items = load_mcq(s.data)
    resolved = resolve_model(s.model)
    if resolved.format != "hf":
        raise BadInput(f"{s.model}: RL needs a Hugging Face checkpoint directory, not a .gguf file")
    device, dtype = pick_device_dtype(restrict_for_training(s.device), "auto")  # one GPU: see backends.placement
    dev = str(device)
    recipe = get_recipe("notebook").with_overrides(learning_rate=s.learning_rate, lora_r=s.lora_r, seed=s.seed,
                                                   gradient_checkpointing=False)
    fit = check_fits(resolved.path, dev, str(dtype).replace("torch.", ""), "lora")
    run.mkdir(parents=True, exist_ok=True)
    write_provenance(run, settings={**asdict(s), "resume": False}, recipe=recipe, reward=REWARD,
                     model={"spec": s.model, "path": resolved.path}, device=dev, fit=fit,
                     data={"path": str(Path(s.data).resolve()), "questions": len(items)})

    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from transformers import set_seed

    set_seed(s.seed)  # LoRA's random init happens below, before the trainer seeds anything
    model, processor, tokenizer, _ = load_for_training(resolved.path, dev, dtype, "lora")
    model = add_lora(model, recipe, "lora", False)
    ds = datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": q.prompt()}] for q in items],
        "answer": [q.answer for q in items],
        "letters": ["".join(k for k, _ in q.options) for q in items],
    })
    cuda = dev.startswith("cuda")
    args = GRPOConfig(
        output_dir=str(run / "checkpoints"), max_steps=s.max_steps, learning_rate=recipe.learning_rate,
        per_device_train_batch_size=s.num_generations, num_generations=s.num_generations,
        max_completion_length=s.max_completion_length, temperature=s.temperature, max_grad_norm=recipe.max_grad_norm,
        warmup_steps=recipe.warmup_ratio, logging_steps=1, save_strategy="steps", save_steps=s.save_steps,
        save_total_limit=None, seed=s.seed, data_seed=s.seed, report_to="none", disable_tqdm=True, use_cpu=dev == "cpu",
        bf16=cuda, gradient_checkpointing=False, remove_unused_columns=False,
    )

    class AtomicGRPOTrainer(ck.AtomicCheckpointMixin, GRPOTrainer):
        """TRL's GRPO trainer whose checkpoints are written atomically."""

    trainer = AtomicGRPOTrainer(model=model, reward_funcs=[final_answer_reward], args=one_device(args), train_dataset=ds,
                                processing_class=processor or tokenizer, callbacks=make_callbacks(run, s.quiet, desc="rl"))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    ckpt_root = run / "checkpoints"
    ckpt_root.mkdir(exist_ok=True)
    resume_from, step0 = ck.resume_point(ckpt_root, s.resume)
    truncate_log(run / LOG_NAME, step0)
    write_provenance(run, lora=trainable_summary(model), resumed_from_step=step0 or None)
    steps = call_or_oom(lambda: ck.train_or_reuse(trainer, resume_from, step0, s.max_steps),
                        f"out of memory on {dev} while training (--num-generations {s.num_generations}, "
                        f"--max-completion-length {s.max_completion_length}): lower either")
    from .sft import _save_adapter

    adapter = run / "adapter"
    _save_adapter(trainer.model, processor, tokenizer, adapter)
    rows = read_log(run / LOG_NAME)
    plot_curve(rows, run / CURVE_NAME, title="GRPO loss")
    rewards = [r["reward"] for r in rows if "reward" in r]
    result = {"steps": steps, "adapter": str(adapter), "resumed_from": step0 or None,
              "first_reward": rewards[0] if rewards else None, "last_reward": rewards[-1] if rewards else None}
    write_provenance(run, result=result)
    return result
