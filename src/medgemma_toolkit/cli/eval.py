"""`eval` (run a benchmark task), `eval list`, `eval compare`, and `batch` (plain batch inference)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, cast

import typer

from ..errors import BadInput
from . import app
from .common import MODEL_DEFAULTS, SCALE_DEFAULTS, ModelOptions, ScaleArgs, option_groups
from .sr import StowOpt

if TYPE_CHECKING:
    from ..batch.sr import Evidence

eval_app = typer.Typer(invoke_without_command=True)  # help: eval_run's docstring
app.add_typer(eval_app, name="eval")


def _batch_size(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        raise BadInput("--batch-size must be a positive integer or 'auto'") from None
    if n <= 0:
        raise BadInput("--batch-size must be a positive integer or 'auto'")
    return n


@eval_app.callback()
@option_groups(mo=ModelOptions, sc=ScaleArgs)
def eval_run(
    ctx: typer.Context,
    mo: ModelOptions = MODEL_DEFAULTS,
    sc: ScaleArgs = SCALE_DEFAULTS,
    task: Annotated[
        Optional[str], typer.Option("--task", help="Task name (see `medgemma eval list`) or a task .yaml file")
    ] = None,
    data: Annotated[
        Optional[str],
        typer.Option(
            help="Data file as its release publishes it (see `medgemma eval list`), a parquet file or save_to_disk folder, or `hf:NAME[:CONFIG][:SPLIT]` from the local datasets cache (never downloaded). Default: the task's shipped sample"
        ),
    ] = None,
    split: Annotated[
        Optional[str],
        typer.Option(
            help="The release's official split (e.g. PubMedQA test, VQA-RAD test, MedXpertQA text/mm), or a Hugging Face split name"
        ),
    ] = None,
    ids: Annotated[
        Optional[Path],
        typer.Option(
            help="Keep only these item ids: one per line, a JSON list, or a JSON object's keys (e.g. PubMedQA's test_ground_truth.json)"
        ),
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N items")] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Run directory (records.jsonl, summary.json, report.md/html), used as given. Default: a new eval-runs/TASK-YYYYmmdd-HHMMSS (with --resume: the latest one)",
        ),
    ] = None,
    batch_size: Annotated[
        str,
        typer.Option(
            help="Prompts per batch, or 'auto' (a GPU: 32; a CPU: 64 text rows where memory allows, else 32, and 8 with images; llama.cpp: 4 x --parallel)"
        ),
    ] = "auto",
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the run in --out (default: the task's latest run), skipping finished items"
        ),
    ] = False,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Override the protocol's token budget")] = None,
    temperature: Annotated[float, typer.Option(help="Override the protocol's greedy decoding (0)")] = 0.0,
    think: Annotated[bool, typer.Option("--think", help="Ask thinking-capable models to reason first")] = False,
    mode: Annotated[
        str, typer.Option(help="generate (MedGemma's protocol) or loglikelihood (lm-eval style MCQ scoring)")
    ] = "generate",
    on_error: Annotated[str, typer.Option(help="skip or fail on a malformed row")] = "fail",
    conditions: Annotated[
        Optional[str], typer.Option(help="CXR: condition set (mimic, cxr14) or a comma-separated list")
    ] = None,
    images: Annotated[
        Optional[str],
        typer.Option(help="Folder that relative image paths are read from (default: beside the data file)"),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not reuse or store answers in the result cache")
    ] = False,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals")] = 1000,
    metric_convention: Annotated[
        str,
        typer.Option(
            help="VQA scoring rules: toolkit (ours) or multimedeval (MultiMedEval's tokenisation, closed questions "
            "and closed scoring); recorded in the summary"
        ),
    ] = "toolkit",
) -> None:
    """Evaluate a model on a benchmark task with MedGemma's protocol: records, summary.json, a report with plots.

    Example: medgemma eval --task medqa --limit 5
    Example: medgemma eval --model medgemma-4b-it --task medqa --data medqa_test.jsonl --out runs/medqa
    Example: medgemma eval --model medgemma-4b-it --task medqa --data medqa_test.jsonl --workers 2
    Example: medgemma eval list
    """
    if ctx.invoked_subcommand is not None:
        return
    plan = sc.plan()
    from ..eval.conventions import get_convention
    from ..eval.generation import AUTO_BATCH
    from ..eval.runner import EvalOptions, default_run_dir, load_task_data, run_eval, scoring_model_options
    from ..eval.spec import get_task
    from .scaling import model_loader, scatter_for

    if task is None:
        raise BadInput("--task is required (see `medgemma eval list`)")
    if mode not in ("generate", "loglikelihood"):
        raise BadInput("--mode must be 'generate' or 'loglikelihood'")
    if on_error not in ("skip", "fail"):
        raise BadInput("--on-error must be 'skip' or 'fail'")
    if limit is not None and limit <= 0:
        raise BadInput("--limit must be positive")
    spec = get_task(task)  # fail on an unknown task before loading a model
    get_convention(metric_convention, spec.task_kind)
    opts = EvalOptions(
        task=task,
        data=data,
        out=out or default_run_dir(spec.name, resume),
        limit=limit,
        batch_size=_batch_size(batch_size),
        resume=resume,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        think=think,
        mode=mode,  # type: ignore[arg-type]
        on_error=cast(Literal["skip", "fail"], on_error),  # checked above
        conditions=conditions,
        image_root=images,
        use_cache=not no_cache,  # type: ignore[arg-type]
        n_boot=bootstrap,
        split=split,
        ids=str(ids) if ids else None,
        metric_convention=metric_convention,
    )
    load_task_data(opts, quiet=True)  # a bad data file fails before the model loads
    if mode == "loglikelihood":
        mo = scoring_model_options(mo)
    load_extra: dict[str, Any] = {"max_batch_size": opts.batch_size or AUTO_BATCH, "workload": "throughput"}
    scatter = scatter_for(plan, mo.device, quiet=False, what="batches")
    if scatter is not None:  # the workers load the model and send back what the run records: none here
        summary = run_eval(None, opts, scatter, model_loader(mo, **load_extra))
    else:
        summary = run_eval(mo.load(**load_extra), opts)
    m = summary["metrics"][spec.primary_metric]
    ci = (
        ""
        if m["ci_low"] is None
        else f" (95% CI {m['ci_low']:.3f}-{m['ci_high']:.3f}, {m.get('ci_method', 'bootstrap')})"
    )
    value = "n/a" if m["value"] is None else f"{m['value']:.3f}"
    t = summary["timing"]
    print(
        f"{spec.label} {spec.primary_metric} = {value}{ci} on {summary['counts']['answered']} questions; "
        f"unparseable {summary['parse_failures']['rate']:.1%}; generated {t['generated']}, resumed {t['resumed']}, "
        f"cached {t['from_cache']}"
    )
    skipped = summary["dataset"].get("rows_skipped") or {}
    if skipped:
        print("rows skipped: " + "; ".join(f"{n} {why}" for why, n in skipped.items()))
    print(f"wrote {opts.out}/summary.json, report.md, report.html")
    for note in summary["notes"]:  # e.g. RadGraph F1 skipped, demo model
        print(f"note: {note}", file=sys.stderr)


@eval_app.command("list")
def eval_list(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False) -> None:
    """List built-in tasks with their protocol versions, metrics and data formats.

    Example: medgemma eval list
    """
    from ..eval.formats import READERS
    from ..eval.spec import builtin_tasks

    rows: list[dict[str, Any]] = [
        {
            "task": s.name,
            "version": s.version,
            "protocol": s.protocol,
            "kind": s.kind,
            "metrics": list(s.metrics),
            "max_new_tokens": s.max_new_tokens,
            "format": s.description,
            "reads": READERS[s.reader].releases,
            "splits": list(s.splits),
        }
        for s in builtin_tasks().values()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        splits = f"  splits: {', '.join(r['splits'])}" if r["splits"] else ""
        print(
            f"{r['task'] + '@' + r['version']:<22}{r['kind']:<12}{','.join(r['metrics'])}{splits}\n"
            f"{'':<22}reads: {r['reads']}"
        )


@eval_app.command("compare")
def eval_compare(
    run_a: Annotated[Path, typer.Argument(help="First run directory")],
    run_b: Annotated[Path, typer.Argument(help="Second run directory")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where compare.json/.md/.png go")] = Path("eval-compare"),
    bootstrap: Annotated[int, typer.Option(help="Paired bootstrap resamples")] = 1000,
) -> None:
    """Side-by-side metrics of two runs of a task, with a paired bootstrap and McNemar's test, and a plot.

    Example: medgemma eval compare runs/base runs/finetuned
    """
    from ..eval.compare import compare_runs, format_table, write_comparison

    result = compare_runs(run_a, run_b, n_boot=bootstrap)
    print(format_table(result))
    for warning in result["warnings"]:  # also on stderr, so a script that keeps only stdout's table still hears
        print(f"warning: {warning}: the scores may not be comparable", file=sys.stderr)
    write_comparison(result, out)
    print(f"wrote {out}/compare.json, compare.md, compare.png")


@app.command()
@option_groups(mo=ModelOptions, sc=ScaleArgs)
def batch(
    input: Annotated[Path, typer.Option("--input", help="JSONL rows: {id, question, images?, system?}")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results JSONL (appended per batch)")],
    mo: ModelOptions = MODEL_DEFAULTS,
    sc: ScaleArgs = SCALE_DEFAULTS,
    resume: Annotated[bool, typer.Option("--resume", help="Skip rows already in --out")] = False,
    batch_size: Annotated[str, typer.Option(help="Prompts per batch, or 'auto'")] = "auto",
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Default: the preset's")] = None,
    think: Annotated[bool, typer.Option("--think", help="Ask thinking-capable models to reason first")] = False,
    on_error: Annotated[str, typer.Option(help="skip or fail on a malformed row")] = "fail",
    sr: Annotated[
        Optional[Path],
        typer.Option(
            "--sr", help="Also write one DICOM SR per study into this folder (rows over DICOM images; resumable)"
        ),
    ] = None,
    stow: StowOpt = None,
    schema: Annotated[
        Optional[Path],
        typer.Option("--schema", help="JSON schema every answer must follow (decoded under it, validated, 'object')"),
    ] = None,
) -> None:
    """Answer every row of a JSONL file (no scoring), resumable, batched.

    With --schema each answer is decoded under the JSON schema and validated again: a valid one is also written as
    "object", one that is not (cut at the token limit) gets an "error" and the run goes on.

    Example: medgemma batch --model medgemma-4b-it --input rows.jsonl --out answers.jsonl
    Example: medgemma batch -m medgemma-1.5-4b-it --input ct_rows.jsonl -o answers.jsonl --sr srs/ --stow https://pacs/dicom-web
    Example: medgemma batch -m medgemma-4b-it --input rows.jsonl -o answers.jsonl --schema lab.json
    Example: medgemma batch --upstream http://gpu:8000/v1 --input rows.jsonl --out answers.jsonl --workers 4
    """
    from ..batch.run import read_batch_rows, run_batch
    from ..eval.generation import AUTO_BATCH
    from ..extract import read_schema

    if on_error not in ("skip", "fail"):
        raise BadInput("--on-error must be 'skip' or 'fail'")
    plan = sc.plan()
    parsed = read_schema(schema) if schema is not None else None
    rows = read_batch_rows(input, on_error)  # report a bad file before loading a model
    evidence = _check_batch_sr(rows, sr, stow) if sr is not None or stow is not None else None
    load_extra: dict[str, Any] = {
        "max_batch_size": _batch_size(batch_size) or AUTO_BATCH,
        "workload": "throughput",
    }
    run_args: dict[str, Any] = {
        "resume": resume,
        "batch_size": _batch_size(batch_size),
        "max_new_tokens": max_new_tokens,
        "think": think,
        "on_error": on_error,
        "schema": parsed,
    }
    if plan.parallel:  # the workers answer and send back what the SRs cite: no model here
        from ..batch.scaled import run_batch_scattered
        from .scaling import model_loader, scatter_for

        scatter = scatter_for(plan, mo.device, quiet=False, what="batches")
        assert scatter is not None
        stats = run_batch_scattered(scatter, model_loader(mo, **load_extra), input, out, evidence=evidence, **run_args)
    else:
        mg = mo.load(**load_extra)
        stats = run_batch(mg, input, out, seen=evidence.seen if evidence else None, **run_args)
        if evidence is not None:  # rows answered by an earlier run, in a study whose SR is written again
            from ..batch.sr import describe_rows
            from ..sr import algorithm_of

            evidence.seen.update(describe_rows(mg, evidence.to_describe(out), think, max_new_tokens))
            evidence.algorithm = algorithm_of(mg)
    print(f"{stats['generated']} rows answered, {stats['resumed']} already done; wrote {out}")
    if evidence is not None:
        _write_batch_srs(evidence, out, stow)


def _check_batch_sr(rows: list, sr: Path | None, stow_url: str | None) -> Evidence:
    """Before the model loads: the folder, the STOW URL, and which rows cannot have an SR (said, not fatal)."""
    from ..batch.sr import Evidence, group_rows
    from .sr import require_highdicom

    if sr is None:
        raise BadInput("--stow stores what --sr writes; give --sr DIR too")
    if sr.exists() and not sr.is_dir():
        raise BadInput(f"--sr {sr}: is a file; give a folder (one SR per study is written into it)")
    if stow_url is not None:
        from ..sr.stow import parse_stow_url

        parse_stow_url(stow_url)
    require_highdicom()
    groups, errors = group_rows(rows)
    for line in errors:
        print(f"note: {line}", file=sys.stderr)
    if not groups:
        raise BadInput("--sr: no row has DICOM images; an SR needs a DICOM source")
    return Evidence(groups, sr, errors=errors)


def _write_batch_srs(evidence: Evidence, out: Path, stow_url: str | None) -> None:
    from ..batch.sr import write_study_reports
    from .sr import store

    done = write_study_reports(evidence, out)
    for line in done.errors:
        print(f"note: {line}", file=sys.stderr)
    print(f"wrote {len(done.written)} SRs into {evidence.sr_dir} ({done.skipped} studies already complete)")
    if stow_url is not None and done.written:
        store(done.written, stow_url)
