"""Eval runs like lm-eval's (issue 28): a new timestamped folder per run, --resume continues the latest, compare
warns when protocol or settings differ and names runs by their folders, plots name the same CI method as tables."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli_inproc


@pytest.fixture
def evals(tmp_path, tiny_model_dir):
    def run(*extra: str):
        return run_cli_inproc(
            "eval", "-m", str(tiny_model_dir), "--task", "medqa", "--limit", "2", "--no-cache", *extra, cwd=tmp_path
        )

    return run


def test_default_run_folders_are_new_and_resume_takes_the_latest(evals, tmp_path):
    first = evals("--max-new-tokens", "2")
    second = evals("--max-new-tokens", "2")  # used to be refused: "already holds records; pass --resume"
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    runs = sorted(p.name for p in (tmp_path / "eval-runs").iterdir())
    assert len(runs) == 2 and all(r.startswith("medqa-20") for r in runs), runs
    resumed = evals("--max-new-tokens", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"eval-runs/{runs[-1]}/summary.json" in resumed.stdout and "resumed 2" in resumed.stdout
    assert len(list((tmp_path / "eval-runs").iterdir())) == 2


def test_resume_with_nothing_to_resume_is_one_line(evals):
    r = evals("--resume")
    assert (
        r.returncode == 2
        and r.stderr.strip() == "error: --resume: no earlier run of medqa under eval-runs/; give --out RUN_DIR"
    )


def test_out_is_used_exactly(evals, tmp_path):
    r = evals("-o", "mine", "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "mine" / "summary.json").is_file() and not (tmp_path / "eval-runs").exists()


def test_compare_warns_on_different_settings_and_names_runs(evals, tmp_path):
    assert evals("-o", "short", "--max-new-tokens", "2").returncode == 0
    assert evals("-o", "long", "--max-new-tokens", "4").returncode == 0
    r = run_cli_inproc("eval", "compare", "short", "long", "-o", "cmp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: max new tokens differs (2 vs 4): the scores may not be comparable" in r.stdout
    assert "max new tokens differs" in r.stderr
    assert "short [95% CI]" in r.stdout and "long [95% CI]" in r.stdout
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["names"] == ["short", "long"] and result["warnings"] == ["max new tokens differs (2 vs 4)"]
    same = run_cli_inproc("eval", "compare", "short", "short", "-o", "cmp2", cwd=tmp_path)
    assert same.returncode == 0 and "warning" not in same.stdout + same.stderr


def test_plots_name_the_tables_ci_method(monkeypatch):
    from medgemma_toolkit.eval import plots

    monkeypatch.setattr(plots, "_png", lambda fig: fig)  # keep the figure to read its text
    metrics = {
        "accuracy": {"value": 0.5, "ci_low": 0.2, "ci_high": 0.8, "ci_method": "wilson"},
        "f1": {"value": 0.4, "ci_low": 0.3, "ci_high": 0.5, "ci_method": "bootstrap"},
    }
    fig = plots.metric_plot(metrics)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["accuracy\n(wilson)", "f1\n(bootstrap)"]
    assert "bootstrap CI" not in ax.get_title()
    one = plots.metric_plot({"accuracy": metrics["accuracy"]}).axes[0].get_title()
    assert one == "score with 95% CI (wilson)"
    rows = [{"metric": "accuracy", "v0": 0.5, "lo0": 0.2, "hi0": 0.8, "v1": 0.6, "lo1": 0.3, "hi1": 0.9}]
    cmp = plots.compare_plot(("base", "finetuned"), rows).axes[0]
    assert [t.get_text() for t in cmp.get_legend().get_texts()] == ["base", "finetuned"]
    assert cmp.get_title() == "base vs finetuned (95% CI)"
