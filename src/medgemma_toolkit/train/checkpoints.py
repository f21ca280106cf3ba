"""Crash-safe checkpoints: a checkpoint either exists complete or not at all.

A checkpoint counts only once it carries a completion marker, written after every file of it is fsynced. The
Trainer saves through its public callbacks (`AtomicCheckpoints`): before a save, an older folder of the same step
loses its marker; after it, the new folder is fsynced, marked, and old ones rotated. `--resume` picks the newest
marked folder; unmarked folders and staging leftovers from a kill during a save are deleted, never read.
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
        unmark_and_remove(final, root)
    os.replace(staged, final)
    fsync_dir(root)
    if staged.parent.name.startswith(STAGING_PREFIX):
        shutil.rmtree(staged.parent, ignore_errors=True)
    rotate(root, keep)
    return final


def seal(folder: Path, root: Path, step: int, keep: int) -> Path:
    """Mark a checkpoint the Trainer has just written in place as complete (after fsyncing it), then rotate."""
    fsync_tree(folder)
    write_atomic(folder / MARKER, json.dumps({"step": step, "time": time.time()}))
    fsync_dir(root)
    rotate(root, keep)
    return folder


def unmark_and_remove(folder: Path, root: Path) -> None:
    """Delete a checkpoint folder so that a kill halfway never leaves it looking complete."""
    (folder / MARKER).unlink(missing_ok=True)
    trash = root / f"{STAGING_PREFIX}old-{folder.name}"
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def rotate(root: Path, keep: int) -> None:
    for _, old in complete_checkpoints(root)[:-keep]:
        # Unmark first: a kill during the deletion must not leave a half-deleted folder that looks complete.
        (old / MARKER).unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)


def _checkpoint_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class AtomicCheckpointMixin:
    """Mix into a transformers `Trainer` subclass (SFT or GRPO): checkpoints become complete-or-absent through the
    Trainer's public callback API (see the module docstring). Set `self.keep_checkpoints` after construction."""

    keep_checkpoints: int = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(atomic_checkpoints(self))  # type: ignore[attr-defined]


def atomic_checkpoints(trainer: Any) -> Any:
    """A `TrainerCallback`: unmark a same-step folder before the save, fsync and mark after it, rotate old ones."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    def folder(args: Any, state: Any) -> Path:
        return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"

    class AtomicCheckpoints(_checkpoint_callback_base()):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # The default flow callback (registered first) has decided whether this step saves.
            target = folder(args, state)
            if control.should_save and target.exists():  # a re-run of a step after resuming from an earlier one
                unmark_and_remove(target, Path(args.output_dir))

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            target = folder(args, state)
            if target.is_dir() and state.is_world_process_zero:
                seal(target, Path(args.output_dir), int(state.global_step), trainer.keep_checkpoints)

    return AtomicCheckpoints()
