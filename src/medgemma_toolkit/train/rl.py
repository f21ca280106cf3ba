"""`medgemma rl`: GRPO on multiple-choice questions, rewarding a correct "Final Answer".

Two recipes, as data (`RL_RECIPES`). `notebook` (the default) is Google's RL notebook
(google-health/medgemma notebooks/reinforcement_learning_with_hugging_face.ipynb): its prompt (the `google-rl`
MCQ protocol, with the thinking system instruction), reward 1 when the letter its patterns extract is the gold one
else 0, lr 5e-6, LoRA r = alpha = 64 on all linear layers, completions up to 1024 tokens, 4 per question, batch 3 x
accumulation 4, gradient checkpointing, TRL's defaults otherwise (grad-norm clip 1.0, no warm-up). `toolkit` is the
earlier recipe: our prompt, reward 1 + 0.2 for one well-formed last "Final Answer: X" line, lr 2e-4, LoRA r 16 on
the language model, 256 tokens. TRL's GRPO trainer samples a group of completions per question and the reward scores
each one; atomic checkpoints, `--resume`, loss/reward log and provenance work exactly as for `finetune`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput, lookup
from ..models.resolve import resolve_model
from ..prompts.mcq import get_mcq_protocol, google_rl_answer
from ..rowfile import read_rows
from ..runtime.placement import restrict_for_training
from ..runtime.torch_setup import pick_device_dtype
from .fit import check_fits
from .logs import make_callbacks
from .provenance import write_provenance
from .recipe import get_recipe
from .run import atomic_trainer, finish, open_run_dir, recorded_settings, train

_FINAL = re.compile(r"final answer\s*:\s*\(?([A-Z])\)?\s*\.?\s*$", re.IGNORECASE)
_ANY_FINAL = re.compile(r"final answer\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class RewardSpec:
    """Reward weights: versioned data, recorded in provenance."""

    version: str = "1"
    correct: float = 1.0  # the final letter equals the gold letter
    well_formed: float = 0.2  # exactly one "Final Answer: X" line, as the last line, X one of the options


REWARD = RewardSpec()
GOOGLE_REWARD = RewardSpec(version="google-rl-1", correct=1.0, well_formed=0.0)


@dataclass(frozen=True)
class RLRecipe:
    """How a GRPO adapter is trained; CLI flags override single fields, the resolved recipe goes to provenance."""

    name: str
    version: str
    description: str
    prompt: str  # MCQ protocol name (prompts/mcq.py)
    reward: str  # "google-rl" (1/0 on the notebook's extracted letter) or "toolkit" (correct + format bonus)
    learning_rate: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: str  # "all-linear" or "language"
    max_completion_length: int
    num_generations: int
    batch_size: int
    grad_accum: int
    max_steps: int
    save_steps: int
    max_grad_norm: float
    warmup_ratio: float
    gradient_checkpointing: bool
    temperature: float = 1.0
    references: tuple[str, ...] = ()


RL_RECIPES: dict[str, RLRecipe] = {
    r.name: r
    for r in [
        RLRecipe(
            "notebook",
            "1",
            "Google's RL notebook: google-rl prompt, 1/0 reward, lr 5e-6, all-linear LoRA "
            "r=alpha=64, 1024-token completions, 4 per question, batch 3 x accumulation 4",
            prompt="google-rl",
            reward="google-rl",
            learning_rate=5e-6,
            lora_r=64,
            lora_alpha=64,
            lora_dropout=0.0,
            lora_targets="all-linear",
            max_completion_length=1024,
            num_generations=4,
            batch_size=3,
            grad_accum=4,
            max_steps=1700,
            save_steps=100,
            max_grad_norm=1.0,
            warmup_ratio=0.0,
            gradient_checkpointing=True,
            references=("google-health/medgemma notebooks/reinforcement_learning_with_hugging_face.ipynb",),
        ),
        RLRecipe(
            "toolkit",
            "1",
            "The toolkit's earlier recipe: our prompt, reward 1 + 0.2 format bonus, lr 2e-4, "
            "language-model LoRA r16, 256-token completions",
            prompt="toolkit",
            reward="toolkit",
            learning_rate=2e-4,
            lora_r=16,
            lora_alpha=16,
            lora_dropout=0.05,
            lora_targets="language",
            max_completion_length=256,
            num_generations=4,
            batch_size=4,
            grad_accum=1,
            max_steps=20,
            save_steps=10,
            max_grad_norm=0.3,
            warmup_ratio=0.03,
            gradient_checkpointing=False,
        ),
    ]
}


def get_rl_recipe(name: str) -> RLRecipe:
    return lookup(RL_RECIPES, name, "RL recipe")


def google_rl_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """Google's RL notebook's reward: 1.0 when its patterns extract the gold letter, else 0.0."""
    return [1.0 if google_rl_answer(completion_text(c)) == str(gold) else 0.0 for c, gold in zip(completions, answer)]


@dataclass(frozen=True)
class MCQ:
    question: str
    options: tuple[tuple[str, str], ...]  # (letter, text)
    answer: str  # letter


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


def final_answer_reward(
    completions: list[Any], answer: list[str], letters: list[str] | None = None, **_: Any
) -> list[float]:
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
            pairs = [
                (str(k).upper(), str(v))
                for k, v in (opts.items() if isinstance(opts, dict) else zip("ABCDEFGHIJ", opts))
            ]
            ans = str(row["answer"]).strip().upper()
            if not str(row["question"]).strip() or len(pairs) < 2 or ans not in {k for k, _ in pairs}:
                raise ValueError
            items.append(MCQ(str(row["question"]).strip(), tuple(pairs), ans))
        except (ValueError, KeyError, TypeError, AttributeError):
            bad.append(r.line)
    if bad:
        raise BadInput(
            f"{p}: {len(bad)} bad line(s) (need question, options with >= 2 entries, answer among them): "
            f"lines {', '.join(map(str, bad[:10]))}"
        )
    if not items:
        raise BadInput(f"{p}: no questions")
    return items


@dataclass
class RLSettings:
    """What the user asked for; None fields take the recipe's value."""

    model: str
    data: str
    out: str
    recipe: str = "notebook"
    max_steps: int | None = None
    num_generations: int | None = None
    max_completion_length: int | None = None
    learning_rate: float | None = None
    lora_r: int | None = None
    save_steps: int | None = None
    temperature: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    device: str = "auto"
    resume: bool = False
    quiet: bool = False
    seed: int = 42
    extra: dict[str, Any] = field(default_factory=dict)


# A recipe's reward names both what provenance records and the function TRL calls: one entry, never mixed.
REWARDS: dict[str, tuple[RewardSpec, Callable[..., list[float]]]] = {
    "google-rl": (GOOGLE_REWARD, google_rl_reward),
    "toolkit": (REWARD, final_answer_reward),
}


def run_rl(s: RLSettings) -> dict[str, Any]:
    from . import require_train_dependencies

    require_train_dependencies()
    from .model import add_lora, load_for_training, one_device

    run, s = open_run_dir(s)
    rr = get_rl_recipe(s.recipe)
    picked = {
        k: getattr(s, k)
        for k in (
            "max_steps",
            "num_generations",
            "max_completion_length",
            "learning_rate",
            "lora_r",
            "save_steps",
            "temperature",
            "batch_size",
            "grad_accum",
        )
    }
    from dataclasses import replace

    rr = replace(rr, **{k: v for k, v in picked.items() if v is not None})
    if rr.num_generations < 2:
        raise BadInput("--num-generations must be at least 2 (GRPO compares completions within a group)")
    if (
        rr.max_steps <= 0
        or rr.save_steps <= 0
        or rr.max_completion_length <= 0
        or rr.batch_size <= 0
        or rr.grad_accum <= 0
    ):
        raise BadInput(
            "--max-steps, --save-steps, --max-completion-length, --batch-size and --grad-accum must be positive"
        )
    if (rr.batch_size * rr.grad_accum) % rr.num_generations:
        raise BadInput(
            f"--batch-size x --grad-accum ({rr.batch_size * rr.grad_accum}) must be a multiple of "
            f"--num-generations ({rr.num_generations})"
        )
    items = load_mcq(s.data)
    per_step = rr.batch_size * rr.grad_accum // rr.num_generations  # distinct questions in one optimizer step
    if len(items) < per_step:
        raise BadInput(
            f"{len(items)} question(s), but recipe {rr.name!r} takes {per_step} per step (--batch-size "
            f"{rr.batch_size} x --grad-accum {rr.grad_accum} / --num-generations {rr.num_generations}); "
            "give more questions or lower --batch-size / --grad-accum"
        )
    resolved = resolve_model(s.model)
    if resolved.format != "hf":
        raise BadInput(f"{s.model}: RL needs a Hugging Face checkpoint directory, not a .gguf file")
    device, dtype = pick_device_dtype(restrict_for_training(s.device), "auto")  # one GPU: see runtime.placement
    dev = str(device)
    # The LoRA part as a fine-tuning Recipe, which `add_lora` takes.
    recipe = get_recipe("notebook").with_overrides(
        learning_rate=rr.learning_rate,
        lora_r=rr.lora_r,
        lora_alpha=rr.lora_alpha,
        lora_dropout=rr.lora_dropout,
        lora_targets=rr.lora_targets,
        modules_to_save=(),
        seed=s.seed,
        max_grad_norm=rr.max_grad_norm,
        warmup_ratio=rr.warmup_ratio,
        gradient_checkpointing=rr.gradient_checkpointing,
    )
    reward_spec, reward_fn = lookup(REWARDS, rr.reward, "RL reward")
    protocol = get_mcq_protocol(rr.prompt)
    fit = check_fits(resolved.path, dev, str(dtype).replace("torch.", ""), "lora")
    run.mkdir(parents=True, exist_ok=True)
    write_provenance(
        run,
        settings=recorded_settings(s),
        recipe=recipe,
        rl_recipe=rr,
        reward=reward_spec,
        mcq_prompt=f"{protocol.name}@{protocol.version}",
        model={"spec": s.model, "path": resolved.path},
        device=dev,
        fit=fit,
        data={"path": str(Path(s.data).resolve()), "questions": len(items)},
    )

    import datasets
    from transformers import set_seed
    from trl import GRPOConfig, GRPOTrainer

    set_seed(s.seed)  # LoRA's random init happens below, before the trainer seeds anything
    model, processor, tokenizer, _ = load_for_training(resolved.path, dev, dtype, "lora")
    model = add_lora(model, recipe, "lora", rr.gradient_checkpointing)
    ds = datasets.Dataset.from_dict(
        {
            "prompt": [protocol.messages(q.question, list(q.options)) for q in items],
            "answer": [q.answer for q in items],
            "letters": ["".join(k for k, _ in q.options) for q in items],
        }
    )
    cuda = dev.startswith("cuda")
    args = GRPOConfig(
        output_dir=str(run / "checkpoints"),
        max_steps=rr.max_steps,
        learning_rate=rr.learning_rate,
        per_device_train_batch_size=rr.batch_size,
        gradient_accumulation_steps=rr.grad_accum,
        num_generations=rr.num_generations,
        max_completion_length=rr.max_completion_length,
        temperature=rr.temperature,
        max_grad_norm=rr.max_grad_norm,
        warmup_steps=rr.warmup_ratio,
        logging_steps=1,
        save_strategy="steps",
        save_steps=rr.save_steps,
        save_total_limit=None,
        seed=s.seed,
        data_seed=s.seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=dev == "cpu",
        bf16=cuda,
        gradient_checkpointing=rr.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False,
    )

    trainer = atomic_trainer(GRPOTrainer)(
        model=model,
        reward_funcs=[reward_fn],
        args=one_device(args),
        train_dataset=ds,
        processing_class=processor or tokenizer,
        callbacks=make_callbacks(run, s.quiet, desc="rl"),
    )
    steps, resumed = train(
        trainer,
        model,
        run,
        s.resume,
        rr.max_steps,
        f"out of memory on {dev} while training (--num-generations {rr.num_generations}, "
        f"--max-completion-length {rr.max_completion_length}): lower either",
    )
    adapter, rows = finish(run, trainer, processor, tokenizer, "GRPO loss")
    rewards = [r["reward"] for r in rows if "reward" in r]
    result = {
        "steps": steps,
        "adapter": str(adapter),
        "resumed_from": resumed,
        "first_reward": rewards[0] if rewards else None,
        "last_reward": rewards[-1] if rewards else None,
    }
    write_provenance(run, result=result)
    return result
