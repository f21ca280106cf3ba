"""The loss log (one JSON line per logged step), its PNG curve, and the progress bar.

The log survives kill -9 (each line is flushed as written); on `--resume` the lines after the checkpoint's step are
dropped, since those steps are trained again, so the curve continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoints import write_atomic

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

LOG_NAME = "loss_log.jsonl"
CURVE_NAME = "loss_curve.png"


def read_log(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut by a kill mid-write
                continue
    return rows


def truncate_log(path: Path, last_step: int) -> None:
    """Keep only entries up to `last_step` (the checkpoint being resumed from)."""
    rows = [r for r in read_log(path) if int(r.get("step", 0)) <= last_step]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def y_range(values: list[float]) -> tuple[float, float]:
    """The loss axis: the data's own range with a 5% margin, not from 0 (a drop from 6.04 to 5.98 must be visible)."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 if hi > lo else max(abs(hi) * 0.05, 1e-3)
    return lo - pad, hi + pad


def _points(rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r["loss"])) for r in rows if "loss" in r and math.isfinite(float(r["loss"]))]


def plot_curve(rows: list[dict[str, Any]], out: Path, title: str = "training loss") -> Path:
    """Loss against step as a PNG: matplotlib when installed (axes, ticks, grid), else a plain Pillow drawing; the
    loss axis spans the data (`y_range`)."""
    pts = _points(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_curve_pil(pts, out, title)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    if pts:
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o" if len(pts) < 40 else None, markersize=3)
        ax.set_ylim(*y_range([y for _, y in pts]))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _plot_curve_pil(pts: list[tuple[int, float]], out: Path, title: str) -> Path:
    from PIL import Image, ImageDraw

    w, h, m = 640, 400, 50
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    d.text((m, 12), title, fill="black")
    d.rectangle([m, m, w - m // 2, h - m], outline="black")
    if pts:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = y_range([p[1] for p in pts])
        x1 = x1 if x1 > x0 else x0 + 1
        sx = lambda x: m + (x - x0) / (x1 - x0) * (w - m * 1.5)  # noqa: E731
        sy = lambda y: h - m - (y - y0) / (y1 - y0) * (h - 2 * m)  # noqa: E731
        xy = [(sx(x), sy(y)) for x, y in pts]
        if len(xy) > 1:
            d.line(xy, fill=(31, 119, 180), width=2)
        for x, y in xy:
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(31, 119, 180))
        d.text((m, h - m + 8), f"step {x0}", fill="black")
        d.text((w - m * 2, h - m + 8), f"step {x1}", fill="black")
        d.text((4, m), f"{y1:.4g}", fill="black")
        d.text((4, h - m - 10), f"{y0:.4g}", fill="black")
    im.save(out)
    return out


def make_callbacks(run_dir: Path, quiet: bool = False, desc: str = "finetune") -> list[Any]:
    """Trainer callbacks: the loss log writer and (unless `quiet`) a progress bar with loss, step time and ETA."""
    from transformers import TrainerCallback

    class LossLogger(TrainerCallback):
        def __init__(self) -> None:
            self.path = run_dir / LOG_NAME
            self.t_last = time.perf_counter()
            self.step_last = 0

        def on_train_begin(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
        ) -> None:
            self.t_last, self.step_last = time.perf_counter(), state.global_step
            self.cpu_last = time.process_time()

        def on_log(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            logs: dict[str, float] | None = None,
            **kw: Any,
        ) -> None:
            logs = logs or {}
            if "loss" not in logs and "reward" not in logs:
                return
            now, cpu = time.perf_counter(), time.process_time()
            steps = max(1, state.global_step - self.step_last)
            # CPU seconds beside wall seconds: on a shared machine the difference is time spent waiting for a core.
            row = {
                "step": state.global_step,
                "epoch": round(float(state.epoch or 0), 4),
                "step_time_s": round((now - self.t_last) / steps, 4),
                "step_cpu_s": round((cpu - self.cpu_last) / steps, 4),
            }
            self.cpu_last = cpu
            for k in ("loss", "grad_norm", "learning_rate", "reward"):
                if k in logs:
                    row[k] = float(logs[k])
            self.t_last, self.step_last = now, state.global_step
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()

    class Progress(TrainerCallback):
        """A rich progress bar on stderr (the same library as `eval`'s): steps, ETA, seconds per step, loss."""

        def __init__(self) -> None:
            self.bar: Any = None
            self.task: Any = None
            self.t0 = 0.0
            self.first = 0

        def on_train_begin(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
        ) -> None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.first = state.global_step
            self.bar = Progress(
                TextColumn(desc),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[post]}"),
                console=Console(stderr=True),
            )
            self.task = self.bar.add_task(desc, total=state.max_steps, completed=state.global_step, post="")
            self.bar.start()
            self.t0 = time.perf_counter()

        def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step)

        def on_log(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            logs: dict[str, float] | None = None,
            **kw: Any,
        ) -> None:
            if self.bar is not None and logs:
                done = max(1, state.global_step - self.first)
                post = [f"{(time.perf_counter() - self.t0) / done:.2f} s/step"]
                post += [f"{k} {float(logs[k]):.4f}" for k in ("loss", "reward") if k in logs]
                self.bar.update(self.task, post=", ".join(post))

        def on_train_end(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
        ) -> None:
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return [LossLogger()] + ([] if quiet else [Progress()])
