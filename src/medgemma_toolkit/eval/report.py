"""summary.json (scores with intervals and full provenance), report.md and a self-contained report.html."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from pathlib import Path
from typing import Any

from ..provenance import toolkit_version
from .metrics import compute_metrics
from .parsers import PARSER_VERSION
from .provenance import now_utc, package_versions
from .spec import TaskSpec

SUMMARY_VERSION = "1"


def summarize(spec: TaskSpec, records: list[dict[str, Any]], run_info: dict[str, Any], n_boot: int) -> dict[str, Any]:
    scored = [r for r in records if r.get("error") is None]
    unparsed = sum(r["parsed"] is None for r in scored)
    notes = []
    summary: dict[str, Any] = {
        "summary_version": SUMMARY_VERSION,
        "task": {
            "name": spec.name,
            "version": spec.version,
            "protocol": spec.protocol,
            "kind": spec.kind,
            "parser": spec.parser,
            "parser_version": PARSER_VERSION,
            "primary_metric": spec.primary_metric,
            "prompt_sha256": hashlib.sha256(spec.prompt.encode()).hexdigest()[:16],
        },
        **run_info,
        "counts": {
            "questions": run_info["dataset"]["questions"],
            "answered": len(scored),
            "errors": len(records) - len(scored),
            "complete": len(records) == run_info["dataset"]["questions"],
        },
        "metrics": compute_metrics(scored, spec.metrics, n_boot=n_boot),
        "parse_failures": {"count": unparsed, "rate": unparsed / len(scored) if scored else 0.0},
        "package": {"medgemma_toolkit": toolkit_version(), **package_versions()},
        "created": now_utc(),
    }
    summary.update(spec.task_kind.summary(scored))
    for m in summary["metrics"].values():
        if m.get("note"):
            notes.append(m["note"])
    notes.extend(run_info["dataset"].get("warnings") or [])
    if run_info["model"].get("demo"):
        notes.append("demo model (Gemma 3 270M base): not MedGemma; scores show the pipeline works, nothing more")
    summary["notes"] = notes
    return summary


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _plots(summary: dict[str, Any]) -> dict[str, str]:
    from .plots import condition_plot, confusion_plot, metric_plot, parse_plot

    out = {"score": metric_plot(summary["metrics"]), "parse_failures": parse_plot(summary["parse_failures"]["rate"])}
    if summary.get("per_condition_f1"):
        out["per_condition_f1"] = condition_plot(summary["per_condition_f1"])
    if summary.get("confusion"):
        out["confusion"] = confusion_plot(summary["confusion"]["labels"], summary["confusion"]["matrix"])
    return out


def _metric_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [
        (
            k,
            _fmt(m["value"]),
            f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]" + (f" {m['ci_method']}" if m.get("ci_method") else ""),
            str(m["n"]),
        )
        for k, m in summary["metrics"].items()
    ]


def _provenance_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    m, g, d = summary["model"], summary["generation"], summary["dataset"]
    return [
        ("task", f"{summary['task']['name']}@{summary['task']['version']} ({summary['task']['protocol']})"),
        ("model", f"{m['name']} ({m['backend']}) config sha256 {str(m['config_sha256'])[:16]}"),
        ("generation", ", ".join(f"{k}={v}" for k, v in g.items())),
        (
            "answers",
            f"parser {summary['task']['parser']} protocol {summary['task'].get('parser_version', '1')}"
            + (
                f", metrics by the {summary['metric_convention']['name']}@{summary['metric_convention']['version']}"
                " convention"
                if summary.get("metric_convention")
                else ""
            ),
        ),
        (
            "dataset",
            f"{Path(d['path']).name} sha256 {d['sha256'][:16]}, {d['items']} items, {d['questions']} questions",
        ),
        ("package", f"medgemma-toolkit {summary['package']['medgemma_toolkit']}"),
        ("created", summary["created"]),
    ]


def _skipped(summary: dict[str, Any]) -> str:
    """Rows the task could not score, by reason (e.g. "3 unlabelled; 1 not English (q_lang)")."""
    return "; ".join(f"{n} {why}" for why, n in (summary["dataset"].get("rows_skipped") or {}).items())


def markdown(summary: dict[str, Any], plot_files: dict[str, str]) -> str:
    t = summary["task"]
    lines = [f"# {t['name']}@{t['version']} - {summary['model']['name']}", ""]
    lines += [f"> {n}" for n in summary["notes"]] + ([""] if summary["notes"] else [])
    lines += ["| metric | value | 95% CI | n |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _metric_rows(summary)]
    pf = summary["parse_failures"]
    lines += ["", f"Unparseable answers (counted wrong): {pf['count']} ({pf['rate']:.1%}).", ""]
    if _skipped(summary):
        lines += [f"Rows not scored: {_skipped(summary)}.", ""]
    if summary.get("per_condition_f1"):
        lines += ["| condition | F1 |", "|---|---|"]
        lines += [f"| {c} | {v:.3f} |" for c, v in summary["per_condition_f1"].items()] + [""]
    lines += ["## Provenance", ""] + [f"- **{k}**: {v}" for k, v in _provenance_rows(summary)] + [""]
    lines += [f"![{name}]({path})" for name, path in plot_files.items()]
    return "\n".join(lines) + "\n"


def html_report(summary: dict[str, Any], plots: dict[str, str]) -> str:
    e = html.escape
    t = summary["task"]
    rows = "".join(
        f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td><td>{e(d)}</td></tr>" for a, b, c, d in _metric_rows(summary)
    )
    prov = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _provenance_rows(summary))
    notes = "".join(f"<p class=note>{e(n)}</p>" for n in summary["notes"])
    imgs = "".join(
        f'<figure><img alt="{e(k)}" src="data:image/png;base64,{v}"><figcaption>{e(k)}</figcaption></figure>'
        for k, v in plots.items()
    )
    skipped = f"<p>Rows not scored: {e(_skipped(summary))}</p>" if _skipped(summary) else ""
    pf = summary["parse_failures"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(t["name"])} report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}.note{{background:#fff3cd;padding:.5em}}
figure{{display:inline-block;margin:1em}}</style></head><body>
<h1>{e(t["name"])}@{e(t["version"])} &middot; {e(summary["model"]["name"])}</h1>{notes}
<table><tr><th>metric</th><th>value</th><th>95% CI</th><th>n</th></tr>{rows}</table>
<p>Unparseable answers (counted wrong): {pf["count"]} ({pf["rate"]:.1%})</p>{skipped}
<h2>Plots</h2>{imgs}<h2>Provenance</h2><table>{prov}</table></body></html>
"""


def write_reports(
    spec: TaskSpec, records: list[dict[str, Any]], run_info: dict[str, Any], out: Path, n_boot: int = 1000
) -> dict[str, Any]:
    summary = summarize(spec, records, run_info, n_boot)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    plots = _plots(summary)
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    files = {}
    for name, b64 in plots.items():
        (plot_dir / f"{name}.png").write_bytes(base64.b64decode(b64))
        files[name] = f"plots/{name}.png"
    (out / "report.md").write_text(markdown(summary, files))
    (out / "report.html").write_text(html_report(summary, plots))
    return summary
