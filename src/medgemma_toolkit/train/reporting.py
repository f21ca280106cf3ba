"""Where the trainer also reports: TensorBoard and/or Weights & Biases, when the user asks and they are installed.

`--report-to none` (the default) keeps the run folder's own loss log and curve only. `auto` takes every installed
one; a named one that is not installed is one line before any model loads. W&B runs offline (`WANDB_MODE=offline`,
files under the run folder; `wandb sync` uploads them later) unless the user set `WANDB_MODE` themselves: nothing
the toolkit starts phones home unasked. TensorBoard event files go to RUN/tensorboard.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import BadInput

INTEGRATIONS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def installed(name: str) -> bool:
    return any(importlib.util.find_spec(mod) is not None for mod in INTEGRATIONS[name])


def resolve_report_to(value: str) -> list[str]:
    """`none`, `auto`, or a comma-separated list of integrations -> the trainer's `report_to` list."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["auto"]:
        return [n for n in INTEGRATIONS if installed(n)]
    unknown = [n for n in names if n not in INTEGRATIONS]
    if unknown:
        raise BadInput(
            f"--report-to: one of none, auto, {', '.join(INTEGRATIONS)} (comma-separated); got {unknown[0]!r}"
        )
    missing = [n for n in names if not installed(n)]
    if missing:
        raise BadInput(f"--report-to {missing[0]}: not installed (pip install {missing[0]})")
    return names


def prepare_reporting(report_to: list[str], run_dir: Path) -> None:
    """Point each integration at the run folder (and keep W&B offline unless the user chose otherwise)."""
    if "tensorboard" in report_to:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    if "wandb" in report_to:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(run_dir))
