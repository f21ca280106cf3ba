"""Crash-safe checkpoints: a checkpoint either exists complete or not at all.

The trainer writes each checkpoint into a staging folder; we fsync every file, write a completion marker, fsync
again and only then rename the folder into place (a rename is atomic on POSIX). `--resume` picks the newest folder
that carries the marker, and staging leftovers from a kill during a save are deleted, never read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

MARKER = "CHECKPOINT_COMPLETE.json"
STAGING_PREFIX = ".staging-"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def fsync_tree(root: Path) -> None:
    """Flush every file under `root` (and the folders themselves) to disk."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under `root`, oldest first."""
    out = []
    if root.is_dir():
        for d in root.iterdir():
            m = _NAME.match(d.name)
            if m and d.is_dir() and (d / MARKER).is_file():
                try:
                    if int(json.loads((d / MARKER).read_text())["step"]) == int(m.group(1)):
                        out.append((int(m.group(1)), d))
                except (ValueError, KeyError, OSError):
                    continue  # a marker we cannot read is no marker
    return sorted(out)


def latest_checkpoint(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1][1] if done else None


def discard_incomplete(root: Path) -> list[str]:
    """Delete staging leftovers and unmarked checkpoint folders; return their names."""
    removed = []
    if root.is_dir():
        complete = {p for _, p in complete_checkpoints(root)}
        for d in root.iterdir():
            if d.is_dir() and (d.name.startswith(STAGING_PREFIX) or (_NAME.match(d.name) and d not in complete)):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
    return removed


def resume_point(root: Path, resume: bool) -> tuple[Path | None, int]:
    """Clear half-written saves, then the checkpoint to resume from (None unless `resume`) and its step (0 if none)."""
    discard_incomplete(root)
    resume_from = latest_checkpoint(root) if resume else None
    return resume_from, int(resume_from.name.split("-")[1]) if resume_from else 0


def train_or_reuse(trainer: Any, resume_from: Path | None, step: int, max_steps: int) -> int:
    """Train (from `resume_from` if given) and return the final step. A checkpoint that already reached
    `max_steps` is loaded instead: resuming a finished run must not train one more step."""
    if resume_from is not None and 0 < max_steps <= step:
        from .model import load_adapter_weights

        load_adapter_weights(trainer.model, resume_from)
        return step
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return int(trainer.state.global_step)


def publish(staged: Path, root: Path, step: int, keep: int) -> Path:
    """Make a fully written checkpoint folder visible under `root` as checkpoint-STEP, then rotate old ones."""
    fsync_tree(staged)
    write_atomic(staged / MARKER, json.dumps({"step": step, "time": time.time()}))
    final = root / f"checkpoint-{step}"
    if final.exists():  # a re-run of a step after resuming from an earlier checkpoint
        trash = root / f"{STAGING_PREFIX}old-{step}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(staged, final)
    fsync_dir(root)
    if staged.parent.name.startswith(STAGING_PREFIX):
        shutil.rmtree(staged.parent, ignore_errors=True)
    for _, old in complete_checkpoints(root)[:-keep]:
        # Unmark first: a kill during the deletion must not leave a half-deleted folder that looks complete.
        (old / MARKER).unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


class AtomicCheckpointMixin:
    """Mix into a transformers `Trainer` subclass (SFT or GRPO): checkpoints are staged, fsynced and renamed.

    Set `self.keep_checkpoints` after construction (default 2).
    """

    keep_checkpoints: int = 2
    _staging_dir: str | None = None

    def _get_output_dir(self, trial: Any) -> str:  # transformers' hook for where checkpoint-N goes
        if self._staging_dir is not None:
            return self._staging_dir
        return super()._get_output_dir(trial)  # type: ignore[misc]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        root = Path(self.args.output_dir)  # type: ignore[attr-defined]
        step = int(self.state.global_step)  # type: ignore[attr-defined]
        staging = root / f"{STAGING_PREFIX}{step}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self._staging_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            self._staging_dir = None
        publish(staging / f"checkpoint-{step}", root, step, self.keep_checkpoints)
        shutil.rmtree(staging, ignore_errors=True)
