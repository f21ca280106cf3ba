"""The `reproduce` table as text (terminal), Markdown and self-contained HTML."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

HEADER = ("benchmark", "published", "ours", "95% CI", "verdict", "protocol", "dtype", "status")


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """One tuple of cells per row of the card, in HEADER order (percent, one decimal as the card prints them)."""
    out: list[tuple[str, ...]] = []
    for r in report["rows"]:
        ci = "-" if r["ci_low"] is None else f"{r['ci_low']:.1f}-{r['ci_high']:.1f}"
        out.append(
            (
                f"{r['benchmark']} [{r['metric']}]",
                _num(r["published"]),
                _num(r["ours"]),
                ci,
                r["verdict"] or "-",
                r["protocol"] or "-",
                r["dtype"] or "-",
                r["status"],
            )
        )
    return out


def _heading(report: dict[str, Any]) -> list[str]:
    src = report["card_source"]
    lines = [
        f"model: {report['model']}"
        + (f" compared with the card's {report['compared_to']}" if report["compared_to"] else ""),
        f"published: {src['title']} ({src['url']}, read {src['read']})",
        "verdict: consistent = the published value lies inside our 95% interval; below / above = ours is below /"
        " above it",
    ]
    if report.get("note"):
        lines.append(f"note: {report['note']}")
    return lines


def render_text(report: dict[str, Any]) -> str:
    rows = [HEADER, *table_rows(report)]
    keep = range(len(HEADER) - 1)  # the status column goes last, unpadded
    widths = [max(len(r[i]) for r in rows) for i in keep]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in keep) + "  " + r[-1] for r in rows]
    return "\n".join([*_heading(report), "", *lines])


def render_markdown(report: dict[str, Any]) -> str:
    md = ["# Model card vs this run", "", *[f"- {x}" for x in _heading(report)], ""]
    md.append("| " + " | ".join(HEADER) + " |")
    md.append("|" + "---|" * len(HEADER))
    for r in table_rows(report):
        md.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
    notes = [(r["benchmark"], n) for r in report["rows"] for n in r["notes"]]
    if notes:
        md += ["", "## Notes", ""] + [f"- {b}: {n}" for b, n in notes]
    return "\n".join(md) + "\n"


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in table_rows(report))
    items = "".join(f"<li>{esc(x)}</li>" for x in _heading(report))
    notes = "".join(f"<li>{esc(r['benchmark'])}: {esc(n)}</li>" for r in report["rows"] for n in r["notes"])
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Model card vs this run</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table{border-collapse:collapse}</style></head><body><h1>Model card vs this run</h1>"
        f"<ul>{items}</ul><table><tr>{head}</tr>{body}</table><h2>Notes</h2><ul>{notes}</ul></body></html>\n"
    )


def write_markdown_html(report: dict[str, Any], out: Path) -> None:
    (out / "report.md").write_text(render_markdown(report))
    (out / "report.html").write_text(render_html(report))
