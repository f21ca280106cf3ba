"""Training reports (issue 28): `--report-to` for TensorBoard / W&B when installed, and a loss curve whose axis
shows a small drop (6.04 -> 5.98 used to look flat on an axis from 0)."""

from __future__ import annotations

import pytest
from conftest import run_cli_inproc

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.train.logs import plot_curve, y_range
from medgemma_toolkit.train.reporting import installed, resolve_report_to


def test_loss_axis_spans_the_data_not_zero():
    lo, hi = y_range([6.04, 6.01, 5.98])
    assert 5.9 < lo < 5.98 and 6.04 < hi < 6.1
    lo, hi = y_range([2.0])
    assert lo < 2.0 < hi


def test_loss_curve_is_drawn_with_matplotlib(tmp_path, monkeypatch):
    import matplotlib.axes

    limits = []
    real = matplotlib.axes.Axes.set_ylim
    monkeypatch.setattr(
        matplotlib.axes.Axes, "set_ylim", lambda self, *a, **k: (limits.append(a), real(self, *a, **k))[1]
    )
    rows = [{"step": i, "loss": 6.04 - 0.01 * i} for i in range(7)]
    out = plot_curve(rows, tmp_path / "loss_curve.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert limits and limits[0][0] > 5.9


def test_report_to_choices():
    assert resolve_report_to("none") == []
    assert resolve_report_to("auto") == [n for n in ("tensorboard", "wandb") if installed(n)]
    with pytest.raises(BadInput, match="got 'mlflow'"):
        resolve_report_to("mlflow")
    for name in ("tensorboard", "wandb"):
        if installed(name):
            assert resolve_report_to(name) == [name]
        else:
            with pytest.raises(BadInput, match=f"--report-to {name}: not installed"):
                resolve_report_to(name)


def test_report_to_is_checked_before_the_model_loads(tmp_path):
    missing = next((n for n in ("wandb", "tensorboard") if not installed(n)), None)
    if missing is None:
        pytest.skip("both integrations are installed here")
    r = run_cli_inproc(
        "finetune",
        "-m",
        "medgemma-4b-it",
        "--data",
        str(tmp_path / "none"),
        "-o",
        str(tmp_path / "run"),
        "--report-to",
        missing,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: --report-to {missing}: not installed (pip install {missing})"


@pytest.mark.slow
def test_tensorboard_gets_the_training_loss(tmp_path, monkeypatch):
    """A real two-step fine-tune with --report-to tensorboard writes event files under RUN/tensorboard."""
    from PIL import Image

    from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma
    from medgemma_toolkit.testing.trainable import make_trainable
    from medgemma_toolkit.train.sft import FinetuneSettings, run_finetune

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    model = make_trainable(build_tiny_medgemma(tmp_path / "tiny"))
    for name, colour in (("edema", "red"), ("normal", "blue")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40 + i, 36), colour).save(tmp_path / "data" / name / f"{i}.png")
    out = tmp_path / "run"
    run_finetune(
        FinetuneSettings(
            model=str(model),
            data=str(tmp_path / "data"),
            out=str(out),
            recipe="cpu-small",
            overrides={"max_steps": 2, "save_steps": 2},
            device="cpu",
            quiet=True,
            report_to="tensorboard",
        )
    )
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert any("loss" in tag for tag in acc.Tags()["scalars"]), acc.Tags()
