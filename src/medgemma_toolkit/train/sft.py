"""`medgemma finetune`: supervised LoRA/QLoRA fine-tuning with TRL's SFT trainer, crash-safe and with provenance.

The run folder (`--out DIR`) is laid out as `train/run.py` says, plus `report.json`: before/after scores when
--eval-task is given.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..models.checkpoint import info_hint
from ..models.resolve import resolve_model
from ..prompts.presets import PromptPreset, get_preset
from ..runtime.placement import restrict_for_training
from ..runtime.torch_setup import pick_device_dtype
from . import checkpoints as ck
from .data import Dataset, load_dataset
from .fit import check_fits
from .logs import make_callbacks
from .provenance import data_hash, read_provenance, write_provenance
from .recipe import METHODS, TASK_SPECS, TASKS, Recipe, check_choice, get_recipe
from .reporting import prepare_reporting, resolve_report_to
from .run import atomic_trainer, finish, open_run_dir, recorded_settings, train

log = logging.getLogger(__name__)


@dataclass
class FinetuneSettings:
    """What the user asked for; `recipe` + `overrides` resolve to the `Recipe` that is recorded."""

    model: str
    data: str
    out: str
    task: str = "classification"
    method: str = "lora"
    recipe: str = "notebook"
    overrides: dict[str, Any] = field(default_factory=dict)
    val_data: str | None = None
    val_fraction: float = 0.1
    eval_task: str | None = None  # "val" (built-in scorer on the validation split) or a harness task name
    eval_data: str | None = None  # data for a harness task (default: the task's shipped sample)
    eval_max_new_tokens: int | None = None  # harness task: cap on generated tokens (default: the task's protocol)
    preset: str | None = None
    device: str = "auto"
    resume: bool = False
    quiet: bool = False
    report_to: str = "none"  # none, auto, tensorboard, wandb (comma-separated): see train/reporting.py


@dataclass
class FinetuneResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    first_loss: float | None
    last_loss: float | None
    resumed_from: int | None
    report: dict[str, Any] | None


def _choose_preset(resolved: Any, has_template: bool, name: str | None, layout: str | None = None) -> PromptPreset:
    """The user's preset, else the recipe's layout (chat models only: base models keep completion prompts), else
    the model's own."""
    if name:
        return get_preset(name)
    own = get_preset(info_hint(resolved).preset(has_template))
    return get_preset(layout) if layout and own.mode == "chat" else own


def _has_template(path: Path) -> bool:
    """Whether the checkpoint ships a chat template (decides the default preset before any weights load)."""
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    cfg = path / "tokenizer_config.json"
    return cfg.is_file() and '"chat_template"' in cfg.read_text(errors="ignore")


def _sft_config(recipe: Recipe, ckpt_root: Path, device: str, method: str, report_to: list[str] | None = None) -> Any:
    from trl import SFTConfig

    cuda = device.startswith("cuda")
    return SFTConfig(
        output_dir=str(ckpt_root),
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        learning_rate=recipe.learning_rate,
        warmup_steps=recipe.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=recipe.lr_scheduler,
        max_grad_norm=recipe.max_grad_norm,
        weight_decay=recipe.weight_decay,
        gradient_checkpointing=recipe.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        bf16=cuda,
        use_cpu=device == "cpu",
        logging_steps=1,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=None,  # rotation is done by `checkpoints.publish`, after a save is complete
        seed=recipe.seed,
        data_seed=recipe.seed,
        report_to=report_to or "none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},  # our collator builds inputs and labels
        max_length=None,
        label_names=["labels"],
        dataloader_num_workers=0,
        eval_strategy="no",
    )


def _score(
    s: FinetuneSettings,
    model_dir: Path,
    adapter: Path | None,
    preset: PromptPreset,
    ds: Dataset,
    metric: str,
    device: str,
    run: Path,
) -> dict[str, Any]:
    """Before (adapter None) or after score: the built-in validation scorer, or the evaluation harness's task."""
    from .evaluate import evaluate, evaluate_with_harness

    if s.eval_task == "val":
        return evaluate(model_dir, adapter, preset, ds.val, metric, device, s.method)
    out = run / f"eval-{'after' if adapter else 'before'}"
    return evaluate_with_harness(
        str(s.eval_task), s.eval_data, model_dir, adapter, device, out, s.eval_max_new_tokens, s.method
    )


def run_finetune(settings: FinetuneSettings) -> FinetuneResult:
    """Train (or resume) one adapter; see the module docstring for what lands in the run folder."""
    from . import require_train_dependencies

    require_train_dependencies()
    from .model import add_lora, load_for_training, one_device, oom_message

    check_choice(settings.task, TASKS, "--task")
    check_choice(settings.method, METHODS, "--method")
    if settings.eval_task not in (None, "val"):
        from .evaluate import harness_task_exists

        harness_task_exists(settings.eval_task)  # one of `medgemma eval list`, else a one-line error
    report_to = resolve_report_to(settings.report_to)  # a missing integration fails before any model loads
    recipe = get_recipe(settings.recipe).with_overrides(**settings.overrides)
    run, s = open_run_dir(settings)
    run.mkdir(parents=True, exist_ok=True)
    if s.resume:
        recipe = get_recipe(s.recipe).with_overrides(**s.overrides)
    resolved = resolve_model(s.model)
    if resolved.format != "hf":
        raise BadInput(f"{s.model}: fine-tuning needs a Hugging Face checkpoint directory, not a .gguf file")
    model_dir = resolved.path
    ds: Dataset = load_dataset(s.data, s.task, s.val_data, s.val_fraction, recipe.seed)
    digest = data_hash(ds.train)
    prov = read_provenance(run) or {}
    if s.resume and prov.get("data", {}).get("train_sha256") not in (None, digest):
        raise BadInput(f"--resume: the training data changed since {run} was started (hash differs)")
    # One GPU, made the only visible one before CUDA starts (the Trainer trains on cuda:0, data-parallel otherwise).
    device, dtype = pick_device_dtype(restrict_for_training(s.device), "auto")
    dev = str(device)
    fit = check_fits(model_dir, dev, str(dtype).replace("torch.", ""), s.method)
    if s.eval_task == "val" and not ds.val:
        raise BadInput("--eval-task needs validation examples: give --val-data or a --val-fraction above 0")

    write_provenance(
        run,
        settings=recorded_settings(s),
        recipe=recipe,
        model={"spec": s.model, "path": model_dir, "variant": resolved.variant.name if resolved.variant else None},
        device=dev,
        dtype=str(dtype),
        fit=fit,
        data={
            "path": str(Path(s.data).expanduser().resolve()),
            "kind": ds.kind,
            "train": len(ds.train),
            "val": len(ds.val),
            "classes": list(ds.classes),
            "train_sha256": digest,
            "val_sha256": data_hash(ds.val),
        },
    )
    preset = _choose_preset(resolved, _has_template(model_dir), s.preset, recipe.layout_preset)
    metric = TASK_SPECS["classification" if ds.classes else s.task].metric
    report: dict[str, Any] | None = None
    report_path = run / "report.json"
    if s.eval_task:
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        if "before" not in report:  # a resumed run keeps the score measured before any training
            report = {"eval_task": s.eval_task, "before": _score(s, model_dir, None, preset, ds, metric, dev, run)}
            ck.write_atomic(report_path, json.dumps(report, indent=2))

    import datasets
    from transformers import set_seed

    set_seed(recipe.seed)  # LoRA's random init happens below, before the trainer seeds anything
    model, processor, tokenizer, image_size = load_for_training(model_dir, dev, dtype, s.method)
    model = add_lora(model, recipe, s.method, recipe.gradient_checkpointing)
    from .collator import SFTCollator

    collator = SFTCollator(
        ds.train, processor, tokenizer, preset, image_size, recipe.max_length, loss_on=recipe.loss_on
    )
    ckpt_root = run / "checkpoints"
    ckpt_root.mkdir(exist_ok=True)
    prepare_reporting(report_to, run)
    from trl import SFTTrainer

    trainer = atomic_trainer(SFTTrainer)(
        model=model,
        args=one_device(_sft_config(recipe, ckpt_root, dev, s.method, report_to)),
        data_collator=collator,
        train_dataset=datasets.Dataset.from_dict({"index": list(range(len(ds.train)))}),
        processing_class=processor or tokenizer,
        callbacks=make_callbacks(run, quiet=s.quiet),
    )
    trainer.keep_checkpoints = recipe.keep_checkpoints
    steps, resumed_step = train(
        trainer,
        model,
        run,
        s.resume,
        recipe.max_steps,
        oom_message(dev, s.method, recipe.batch_size, recipe.grad_accum, recipe.max_length),
        preset=f"{preset.name}@{preset.version}",
    )
    adapter_dir, rows = finish(
        run, trainer, processor, tokenizer, f"training loss ({s.method}, {len(ds.train)} examples)"
    )
    losses = [r["loss"] for r in rows if "loss" in r]
    del trainer, model
    gc.collect()

    if s.eval_task:
        assert report is not None
        report["after"] = _score(s, model_dir, adapter_dir, preset, ds, metric, dev, run)
        before, after = report["before"]["value"], report["after"]["value"]
        report["delta"] = round(after - before, 4) if before is not None and after is not None else None
        ck.write_atomic(report_path, json.dumps(report, indent=2))
    write_provenance(
        run,
        result={
            "steps": steps,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "adapter": str(adapter_dir),
            "report": report and {k: report[k] for k in ("before", "after", "delta") if k in report},
        },
    )
    return FinetuneResult(
        run, adapter_dir, steps, losses[0] if losses else None, losses[-1] if losses else None, resumed_step, report
    )
