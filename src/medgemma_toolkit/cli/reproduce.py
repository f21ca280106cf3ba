"""`reproduce`: the model card's published benchmark table beside this model's run on your copies of the releases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .common import MODEL_DEFAULTS, ModelOptions, option_groups


@app.command()
@option_groups(mo=ModelOptions)
def reproduce(
    mo: ModelOptions = MODEL_DEFAULTS,
    data_dir: Annotated[
        Optional[Path],
        typer.Option(help="Folder holding your copies of the benchmark releases (searched recursively)"),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Folder for reproduce.json, report.md, report.html and each task's run"),
    ] = None,
    compare_to: Annotated[
        Optional[str],
        typer.Option(help="The card's variant to compare with (default: the model's own variant)"),
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N items of each benchmark")] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option(help="Override each protocol's token budget (demo default: 32)")
    ] = None,
    card: Annotated[
        Optional[Path], typer.Option(help="A card table YAML of the shipped one's shape (default: the shipped card)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print reproduce.json instead of the table")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but the table (or JSON)")] = False,
) -> None:
    """Run the model card's benchmarks on the release files found in --data-dir and print published vs ours.

    Example: medgemma reproduce -m medgemma-1.5-4b-it --data-dir ~/benchmarks -o runs/card
    Example: medgemma reproduce -m demo --limit 2
    """
    import sys

    from ..errors import BadInput
    from ..eval.reproduce import load_card, run_reproduce
    from ..eval.reproduce_report import render_text

    if data_dir is not None and not data_dir.is_dir():
        raise BadInput(f"{data_dir}: --data-dir is not a folder")
    if limit is not None and limit <= 0:
        raise BadInput("--limit must be positive")
    if max_new_tokens is not None and max_new_tokens <= 0:
        raise BadInput("--max-new-tokens must be positive")
    table = load_card(str(card) if card else None)  # a bad card fails before the model loads
    if compare_to is not None and compare_to not in table.variants():
        raise BadInput(f"unknown --compare-to {compare_to!r}; the card has: {', '.join(table.variants())}")
    mg = mo.load(quiet=quiet, workload="throughput")
    target = out or Path("reproduce-runs") / mg.backend.info.name
    report = run_reproduce(
        mg,
        data_dir,
        target,
        compare_to,
        limit,
        progress=not quiet,
        max_new_tokens=max_new_tokens,
        card_path=str(card) if card else None,
    )
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return
    print(render_text(report))
    if not quiet:
        print(f"wrote {target}/reproduce.json, report.md, report.html", file=sys.stderr)
