"""Report plots as base64 PNG strings (matplotlib, headless), so the HTML report is one self-contained file."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any


def _fig() -> Any:
    try:
        import matplotlib
    except ImportError:
        from ..errors import BackendUnavailable

        raise BackendUnavailable("eval reports need matplotlib: pip install 'medgemma-toolkit[eval]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _fig().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _bars_with_ci(
    ax: Any,
    labels: Sequence[str],
    values: Sequence[float | None],
    lows: Sequence[float | None],
    highs: Sequence[float | None],
    colors: Sequence[str] | None = None,
) -> None:
    vals = [v or 0.0 for v in values]
    err_lo = [max(0.0, v - (lo if lo is not None else v)) for v, lo in zip(vals, lows)]
    err_hi = [max(0.0, (hi if hi is not None else v) - v) for v, hi in zip(vals, highs)]
    ax.bar(range(len(vals)), vals, yerr=[err_lo, err_hi], capsize=4, color=colors)
    ax.set_xticks(range(len(vals)), labels, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)


def metric_plot(metrics: dict[str, dict[str, Any]]) -> str:
    """Every metric's value with its 95% interval, each labelled with the method that made it (as in the table)."""
    plt = _fig()
    shown = {k: v for k, v in metrics.items() if v["value"] is not None}
    fig, ax = plt.subplots(figsize=(1.4 * max(3, len(shown)), 3))
    _bars_with_ci(
        ax,
        [f"{k}\n({_method(v)})" for k, v in shown.items()],
        [v["value"] for v in shown.values()],
        [v["ci_low"] for v in shown.values()],
        [v["ci_high"] for v in shown.values()],
    )
    methods = sorted({_method(v) for v in shown.values()})
    ax.set_title(f"score with 95% CI ({', '.join(methods)})" if len(methods) == 1 else "score with 95% CI")
    return _png(fig)


def _method(metric: dict[str, Any]) -> str:
    """The CI method's name as the report's table writes it (summary.json's `ci_method`)."""
    return str(metric.get("ci_method") or "no CI")


def condition_plot(f1: dict[str, float]) -> str:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(1.2 * max(4, len(f1)), 3))
    _bars_with_ci(ax, list(f1), list(f1.values()), [None] * len(f1), [None] * len(f1), colors="tab:green")
    ax.set_title("F1 per condition")
    return _png(fig)


def confusion_plot(labels: list[str], matrix: list[list[int]]) -> str:
    """Gold option (rows) against parsed answer (columns, last = unparseable)."""
    plt = _fig()
    cols = labels + ["(unparseable)"]
    fig, ax = plt.subplots(figsize=(0.5 * len(cols) + 2, 0.5 * len(labels) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("parsed answer")
    ax.set_ylabel("gold")
    top = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black")
    ax.set_title("confusion matrix")
    return _png(fig)


def parse_plot(rate: float) -> str:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(4, 1.2))
    ax.barh([0], [1 - rate], color="tab:blue", label="parsed")
    ax.barh([0], [rate], left=[1 - rate], color="tab:red", label="unparseable")
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, fontsize=8)
    ax.set_title(f"parse failures: {rate:.1%}")
    return _png(fig)


def compare_plot(names: tuple[str, str], rows: list[dict[str, Any]]) -> str:
    """Side-by-side metric bars (with CIs) for two runs."""
    plt = _fig()
    import numpy as np

    fig, ax = plt.subplots(figsize=(1.8 * max(3, len(rows)), 3))
    x = np.arange(len(rows))
    for k, (name, off) in enumerate(zip(names, (-0.2, 0.2))):
        vals = [r[f"v{k}"] or 0.0 for r in rows]
        lo = [max(0.0, v - (r[f"lo{k}"] if r[f"lo{k}"] is not None else v)) for v, r in zip(vals, rows)]
        hi = [max(0.0, (r[f"hi{k}"] if r[f"hi{k}"] is not None else v) - v) for v, r in zip(vals, rows)]
        ax.bar(x + off, vals, width=0.4, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(x, [r["metric"] for r in rows])
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(f"{names[0]} vs {names[1]} (95% CI)")
    return _png(fig)
