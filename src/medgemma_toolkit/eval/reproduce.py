"""`medgemma reproduce`: the model card's benchmark table beside our run of the same benchmarks on the user's own
copies of the release files.

The published numbers are data (`published/medgemma_card.yaml`, with their source and the date they were read);
each row names our task and metric and where its release file is usually found. A row is run when its file is found
under `--data-dir`, and judged by whether the published value lies inside our 95% interval (consistent), above it
(we score below) or below it (we score above). Rows without local data, or without a public dataset, say so. The
demo model is not MedGemma: it runs the tasks' shipped samples, so the pipeline shows, and every verdict reads "does
not apply".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..errors import BadInput, MedGemmaError
from .spec import get_task

CARD = "medgemma_card.yaml"
NOT_APPLICABLE = "does not apply"


@dataclass(frozen=True)
class PublishedRow:
    benchmark: str
    metric: str
    published: dict[str, float]  # variant -> percent
    task: str | None = None  # None: no public dataset
    conditions: str | None = None
    files: tuple[dict[str, Any], ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class Card:
    source: dict[str, str]
    rows: tuple[PublishedRow, ...]

    def variants(self) -> list[str]:
        return sorted({v for r in self.rows for v in r.published})


@lru_cache(maxsize=4)
def load_card(path: str | None = None) -> Card:
    """The published table: the one shipped with the package, or a YAML file of the same shape (`--card`), e.g. a
    newer card's numbers. Validated: every task and metric named exists."""
    name = path or CARD
    try:
        text = Path(path).read_text() if path else files(__package__).joinpath("published").joinpath(CARD).read_text()
        raw = yaml.safe_load(text)
        return _card(raw, name)
    except (OSError, yaml.YAMLError) as e:
        raise BadInput(f"{name}: cannot read the card ({type(e).__name__})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BadInput(f"{name}: not a card table ({type(e).__name__}: {e})") from None


def _card(raw: dict[str, Any], name: str) -> Card:
    rows = []
    for r in raw["rows"]:
        row = PublishedRow(
            benchmark=r["benchmark"],
            metric=r["metric"],
            published={str(k): float(v) for k, v in r["published"].items()},
            task=r.get("task"),
            conditions=r.get("conditions"),
            files=tuple(r.get("files") or ()),
            note=r.get("note"),
        )
        if row.task is not None and row.metric not in get_task(row.task).metrics:
            raise BadInput(f"{name}: {row.benchmark}: task {row.task} has no metric {row.metric}")
        rows.append(row)
    return Card(dict(raw["source"]), tuple(rows))


def find_release(row: PublishedRow, data_dir: Path | None) -> tuple[Path, str | None] | None:
    """(file, split) of the first of the row's patterns that matches under `data_dir`, else None."""
    if data_dir is None:
        return None
    for pattern in row.files:
        hits = sorted(p for p in data_dir.glob(pattern["glob"]) if p.is_dir() == bool(pattern.get("dir")))
        if hits:
            return hits[0], pattern.get("split")
    return None


def verdict(published: float, low: float | None, high: float | None) -> str:
    """Where the published value lies against our 95% interval (all in percent)."""
    if low is None or high is None:
        return "no interval"
    if published > high:
        return "below"  # we score below the card
    if published < low:
        return "above"
    return "consistent"


@dataclass
class RowResult:
    benchmark: str
    metric: str
    published: float | None
    ours: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    verdict: str = ""
    status: str = ""  # what happened: "ran", "no local data (...)", "internal dataset", ...
    data: str | None = None
    protocol: str | None = None
    dtype: str | None = None
    run_dir: str | None = None
    notes: list[str] = field(default_factory=list)


# The demo's answers are a letter or a few words after "Answer:" (completion prompts); left to the protocols' 1024
# tokens, a base model that loops ("Answer: B\nAnswer: C...") spends minutes per item on two CPU cores.
DEMO_MAX_NEW_TOKENS = 32


def run_reproduce(
    mg: Any,
    data_dir: Path | None,
    out: Path,
    compare_to: str | None,
    limit: int | None = None,
    progress: bool = False,
    max_new_tokens: int | None = None,
    card_path: str | None = None,
) -> dict[str, Any]:
    """Run every row that has data and write `reproduce.json`, `report.md` and `report.html` under `out`."""
    from .runner import EvalOptions, run_eval

    card = load_card(card_path)
    demo = bool(mg.is_demo)
    variant = compare_to or mg.backend.info.name
    if not demo and not any(variant in r.published for r in card.rows):
        raise BadInput(
            f"the card publishes nothing for {variant!r}; pass --compare-to one of: {', '.join(card.variants())}"
        )
    summaries: dict[tuple[str, str | None], dict[str, Any] | str] = {}  # one run per (task, conditions)
    run_dirs: dict[tuple[str, str | None], Path] = {}
    results = []
    for row in card.rows:
        published = row.published.get(variant)
        res = RowResult(row.benchmark, row.metric, published, notes=[row.note] if row.note else [])
        results.append(res)
        if row.task is None:
            res.status = row.note or "no public dataset"
            continue
        found = None if demo else find_release(row, data_dir)
        if not demo and found is None:
            tried = ", ".join(p["glob"] for p in row.files)
            where = f"under {data_dir}" if data_dir else "(no --data-dir)"
            res.status = f"no local data {where}" + (f"; looked for {tried}" if tried else "")
            continue
        spec = get_task(row.task)
        key = (row.task, row.conditions)
        if key not in summaries:
            data, split = found if found else (None, None)
            run_dirs[key] = out / "runs" / f"{row.task}{'-' + row.conditions if row.conditions else ''}"
            opts = EvalOptions(
                task=row.task,
                data=str(data) if data else None,
                out=run_dirs[key],
                limit=limit,
                conditions=row.conditions,
                split=split,
                progress=progress,
                max_new_tokens=max_new_tokens or (DEMO_MAX_NEW_TOKENS if demo else None),
            )
            try:
                summaries[key] = run_eval(mg, opts)
            except MedGemmaError as e:  # an image task on a text-only model, a malformed file: this row only
                summaries[key] = f"not run: {e}"
        s = summaries[key]
        if isinstance(s, str):
            res.status = s
            continue
        m = s["metrics"][row.metric]
        scale = lambda v: None if v is None else round(100 * v, 2)  # noqa: E731 - percent, as the card
        res.ours, res.ci_low, res.ci_high, res.n = scale(m["value"]), scale(m["ci_low"]), scale(m["ci_high"]), m["n"]
        res.status = "ran on the shipped sample" if demo else "ran"
        res.data = s["dataset"]["path"]
        res.protocol = (
            f"{spec.label} {s['task']['protocol']}, parser {s['task']['parser']}@{s['task']['parser_version']}"
            + (f", {s['metric_convention']['name']} metrics" if spec.task_kind.conventions else "")
        )
        res.dtype = s["model"].get("dtype")
        res.run_dir = str(run_dirs[key])
        if demo:
            res.verdict = NOT_APPLICABLE
        elif published is None:
            res.verdict = "not published for this variant"
        else:
            res.verdict = verdict(published, res.ci_low, res.ci_high)
    report = {
        "model": mg.backend.info.name,
        "compared_to": None if demo else variant,
        "demo": demo,
        "card_source": card.source,
        "data_dir": str(data_dir) if data_dir else None,
        "rows": [asdict(r) for r in results],
    }
    if demo:
        report["note"] = (
            "demo model (Gemma 3 270M base, not MedGemma): the tasks' shipped samples were run; "
            "the comparison with the model card does not apply"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    from .reproduce_report import write_markdown_html

    write_markdown_html(report, out)
    return report
