"""Training recipes and task conventions as named, versioned data.

The default recipe, `notebook`, is exactly Google's MedGemma fine-tuning notebook
(google-health/medgemma notebooks/fine_tune_with_hugging_face.ipynb): LoRA r=16, alpha=16, dropout 0.05 on every
linear layer (`all-linear`, vision tower included), `lm_head` and `embed_tokens` trained in full (modules_to_save),
the notebook's message layout (user: image(s) then the question, assistant: the answer, no system prompt), and the
loss on the whole rendered conversation except padding and image tokens; lr 2e-4, 3% warm-up, gradient-norm clip
0.3, gradient checkpointing, bf16 on GPU, QLoRA = NF4 double quant. `answer-only` is the toolkit's earlier recipe,
useful for classification: language-model-only LoRA, the model's own prompt preset, loss on the answer only.
Command-line flags override single fields; the resolved recipe is written to the run's provenance file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from ..errors import BadInput, lookup

Task = Literal["classification", "vqa", "report", "chat"]
LossOn = Literal["conversation", "answer"]
Method = Literal["lora", "qlora"]
TASKS: tuple[str, ...] = ("classification", "vqa", "report", "chat")
METHODS: tuple[str, ...] = ("lora", "qlora")

# The language model's linear layers only: SigLIP's tower has q/k/v/o projections too, which stay frozen, and so
# does the multimodal projector. PEFT full-matches this against module names.
LANGUAGE_LINEAR_REGEX = (
    r"^(?!.*(?:vision_tower|vision_model|multi_modal_projector)).*"
    r"\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how an adapter is trained (not what on)."""

    name: str
    version: str
    description: str
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.03
    max_grad_norm: float = 0.3
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4
    grad_accum: int = 4
    gradient_checkpointing: bool = True
    save_steps: int = 50
    keep_checkpoints: int = 2
    max_length: int | None = None  # tokens; None = no truncation (the notebook's choice for images)
    seed: int = 42
    lora_targets: str = "all-linear"  # PEFT's "all-linear", or "language" (the language model's linear layers)
    modules_to_save: tuple[str, ...] = ("lm_head", "embed_tokens")  # trained in full beside the LoRA
    loss_on: LossOn = "conversation"  # whole rendered conversation (minus padding/image tokens), or the answer
    layout_preset: str | None = "finetune-notebook"  # prompt preset that lays out messages; None = the model's
    references: tuple[str, ...] = field(default_factory=tuple)

    def with_overrides(self, **overrides: Any) -> Recipe:
        """This recipe with the non-None `overrides` applied (unknown names are a programming error)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown recipe fields: {sorted(unknown)}")
        r = replace(self, **{k: v for k, v in overrides.items() if v is not None})
        r.validate()
        return r

    def validate(self) -> None:
        if self.lora_r <= 0 or self.lora_alpha <= 0:
            raise BadInput("--lora-r and --lora-alpha must be positive")
        if not 0 <= self.lora_dropout < 1:
            raise BadInput("--lora-dropout must be in [0, 1)")
        if self.learning_rate <= 0:
            raise BadInput("--lr must be positive")
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise BadInput("--batch-size and --grad-accum must be positive")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise BadInput("give --epochs > 0 or --max-steps > 0")
        if self.save_steps <= 0:
            raise BadInput("--save-steps must be positive")
        if self.keep_checkpoints <= 0:
            raise BadInput("--keep-checkpoints must be at least 1")
        if self.lora_targets not in ("all-linear", "language"):
            raise BadInput(f"lora_targets must be 'all-linear' or 'language', got {self.lora_targets!r}")
        if self.loss_on not in ("conversation", "answer"):
            raise BadInput(f"loss_on must be 'conversation' or 'answer', got {self.loss_on!r}")

    @property
    def target_modules(self) -> str:
        """PEFT's `target_modules` for this recipe."""
        return "all-linear" if self.lora_targets == "all-linear" else LANGUAGE_LINEAR_REGEX


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            name="notebook",
            version="2",
            description="Google's MedGemma fine-tuning notebook: all-linear LoRA r16/a16/d0.05 with lm_head and "
            "embed_tokens trained in full, the notebook's message layout, loss on the whole conversation except "
            "padding and image tokens; lr 2e-4, warm-up 3%, clip 0.3, batch 4 x accumulation 4, gradient checkpointing",
            references=("google-health/medgemma notebooks/fine_tune_with_hugging_face.ipynb",),
        ),
        Recipe(
            name="answer-only",
            version="1",
            description="LoRA on the language model only, the model's own prompt preset, loss on the answer only "
            "(classification, where the prompt is the same for every example); otherwise the notebook's settings",
            lora_targets="language",
            modules_to_save=(),
            loss_on="answer",
            layout_preset=None,
        ),
        Recipe(
            name="cpu-small",
            version="2",
            description="The notebook recipe with batch 4, no accumulation and no gradient checkpointing: small models "
            "and data on a CPU, where recomputation costs more than the memory it saves",
            grad_accum=1,
            gradient_checkpointing=False,
            save_steps=10,
        ),
    ]
}


def get_recipe(name: str) -> Recipe:
    return lookup(RECIPES, name, "recipe")


@dataclass(frozen=True)
class TaskSpec:
    """How rows of one task become a question when the data gives none."""

    name: str
    default_question: str
    metric: Literal["accuracy", "token_f1"]


TASK_SPECS: dict[str, TaskSpec] = {
    "classification": TaskSpec(
        "classification", "What does this image show? Answer with exactly one of: {classes}.", "accuracy"
    ),
    "vqa": TaskSpec("vqa", "", "accuracy"),
    "report": TaskSpec("report", "Describe the findings in this image.", "token_f1"),
    "chat": TaskSpec("chat", "", "token_f1"),
}


def check_choice(value: str, choices: tuple[str, ...], flag: str) -> str:
    if value not in choices:
        raise BadInput(f"{flag} must be one of {', '.join(choices)}; got {value!r}")
    return value
