"""One training run, shared by `finetune` (SFT) and `rl` (GRPO): its folder, resume, the training loop, the adapter.

Run directory layout (`--out DIR`):
    provenance.json     resolved settings, model, data hash, package versions, results
    checkpoints/        checkpoint-N folders, each complete or absent (see `checkpoints.py`)
    loss_log.jsonl      one line per step;  loss_curve.png  the same, drawn
    adapter/            the final PEFT adapter (+ processor files), loadable on the base model by plain transformers

A run folder is new and empty, or reopened with `--resume` under the settings it was started with (from its
provenance), so a resumed run cannot silently train something else.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BadInput
from ..runtime.memory import call_or_oom
from . import checkpoints as ck
from .logs import CURVE_NAME, LOG_NAME, plot_curve, read_log, truncate_log
from .provenance import read_provenance, write_provenance

S = TypeVar("S")  # a settings dataclass with `out`, `resume` and `quiet` fields


def open_run_dir(settings: S) -> tuple[Path, S]:
    """The run folder (not yet created) and the settings to train with: for --resume, those it was started with."""
    s: Any = settings
    run = Path(s.out).expanduser()
    prov = read_provenance(run) if run.exists() else None
    if s.resume:
        if prov is None or "settings" not in prov:
            raise BadInput(f"--resume: {run} holds no run to resume (no provenance.json)")
        return run, type(settings)(**{**prov["settings"], "out": str(run), "resume": True, "quiet": s.quiet})
    if prov is not None or (run.exists() and any(run.iterdir())):
        raise BadInput(f"{run}: already exists and is not empty; pass --resume to continue it or choose another --out")
    return run, settings


def recorded_settings(settings: Any) -> dict[str, Any]:
    """The settings as provenance keeps them: a later --resume reopens the run from these."""
    return {**asdict(settings), "resume": False}


def atomic_trainer(trainer_cls: type) -> type:
    """`trainer_cls` (TRL's SFT or GRPO trainer) with checkpoints that are complete or absent."""
    return type(
        f"Atomic{trainer_cls.__name__}",
        (ck.AtomicCheckpointMixin, trainer_cls),
        {"__doc__": f"TRL's {trainer_cls.__name__} whose checkpoints are written atomically."},
    )


def train(
    trainer: Any, model: Any, run: Path, resume: bool, max_steps: int, oom_message: str, **provenance: Any
) -> tuple[int, int | None]:
    """Train from the newest complete checkpoint (when resuming) to `max_steps`: (steps done, step resumed from).

    The loss log is cut back to the checkpoint resumed from; the trainable-parameter summary and `provenance`
    are recorded first."""
    from transformers.trainer_callback import PrinterCallback

    from .model import trainable_summary

    trainer.remove_callback(PrinterCallback)  # our logger and progress bar replace the dict printing
    ckpt_root = run / "checkpoints"
    ckpt_root.mkdir(exist_ok=True)
    resume_from, step0 = ck.resume_point(ckpt_root, resume)
    truncate_log(run / LOG_NAME, step0)
    write_provenance(run, lora=trainable_summary(model), **provenance, resumed_from_step=step0 or None)
    steps = call_or_oom(lambda: ck.train_or_reuse(trainer, resume_from, step0, max_steps), oom_message)
    return steps, step0 or None


def save_adapter(model: Any, processor: Any, tokenizer: Any, dest: Path) -> None:
    """Write the adapter (+ processor files) beside `dest`, fsync it, then rename it into place: complete or absent."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    (processor or tokenizer).save_pretrained(str(tmp))
    ck.fsync_tree(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
    ck.fsync_dir(dest.parent)


def finish(run: Path, trainer: Any, processor: Any, tokenizer: Any, title: str) -> tuple[Path, list[dict[str, Any]]]:
    """Save the final adapter and draw the loss curve: (adapter folder, the log's rows)."""
    adapter_dir = run / "adapter"
    save_adapter(trainer.model, processor, tokenizer, adapter_dir)
    rows = read_log(run / LOG_NAME)
    plot_curve(rows, run / CURVE_NAME, title=title)
    return adapter_dir, rows
