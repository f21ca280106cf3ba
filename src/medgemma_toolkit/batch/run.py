"""`medgemma batch`: plain batch inference (no scoring) over a JSONL of questions, on the resumable runner.

Input rows: {"id": ..., "question": ..., "options": optional, "images": [paths] or "image": path, "system": optional}.
A longitudinal row gives "prior" and "current" instead of images: they are sent in that order with preset
cxr-longitudinal (Google's notebook), and its instruction stands in for a missing question.
Options (a mapping, a list, or a JSON string of either) are listed under the question as `eval` lists them
("A. ..." lines after a blank line), so a row asks the model the same question in both. Output rows are
appended and flushed per batch: {"id", "answer", "thought", "finish_reason", tokens, "seconds"} (or "error").
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends.constrain import validate_answer
from ..errors import BadInput
from ..eval.generation import Outcome, auto_batch_size, run_batches
from ..eval.items import format_options
from ..eval.records import RecordLog
from ..eval.rows import ReadContext, RowError, is_blank, options_of, row_images
from ..imaging.manifest import prompt_manifest
from ..prompts.presets import LONGITUDINAL
from ..prompts.thinking import split_thought
from ..rowfile import read_rows

if TYPE_CHECKING:
    from ..api import MedGemma
    from ..backends.base import GenerationRequest


@dataclass
class BatchRow:
    id: str
    location: str
    question: str
    images: list[str] = field(default_factory=list)
    system: str | None = None
    preset: str | None = None  # the row's own preset (a longitudinal row's), else the model's


def render_question(raw: dict[str, Any], loc: str) -> str:
    """The question, then its options the way `eval` renders them (blank line, "A. ..." lines)."""
    question = str(raw["question"]).strip()
    if is_blank(raw.get("options")) or raw["options"] in ([], {}):
        return question
    return f"{question}\n\n{format_options(options_of(raw['options'], loc))}"


def read_batch_rows(path: Path, on_error: str) -> list[BatchRow]:
    if not path.is_file():
        raise BadInput(f"{path}: input file not found")
    ctx = ReadContext(path, [path.parent])
    rows: list[BatchRow] = []
    seen: set[str] = set()
    for r in read_rows(path, "jsonl"):
        loc, raw = r.where, r.row
        try:
            if r.error is not None:
                raise RowError(f"{loc}: {r.error}")
            if not isinstance(raw, dict):
                raise RowError(f"{loc}: each row needs a non-empty 'question'")
            compare = not is_blank(raw.get("prior")) or not is_blank(raw.get("current"))
            if not compare and not str(raw.get("question") or "").strip():
                raise RowError(f"{loc}: each row needs a non-empty 'question'")
            rid = str(raw.get("id", f"row-{r.line}"))
            if rid in seen:
                raise RowError(f"{loc}: duplicate id {rid!r}")
            images = row_images(raw, loc, ctx, "images", "image")
            if compare:
                question = render_question(raw, loc) if str(raw.get("question") or "").strip() else ""
                row = BatchRow(rid, loc, question, images, raw.get("system"), LONGITUDINAL)
            else:
                row = BatchRow(rid, loc, render_question(raw, loc), images, raw.get("system"))
        except RowError as e:
            if on_error == "fail":
                raise
            print(f"skipped: {e}", file=sys.stderr)
            continue
        seen.add(rid)
        rows.append(row)
    if not rows:
        raise BadInput(f"{path}: no rows to run")
    return rows


def row_request(
    mg: MedGemma, r: BatchRow, think: bool, max_new_tokens: int | None, schema: dict[str, Any] | None = None
) -> GenerationRequest:
    """The request one row makes (in this process, or in a worker of `batch --workers/--ray`)."""
    return mg.request(
        r.question,
        r.images,
        system=r.system,
        think=think,
        max_new_tokens=max_new_tokens,
        preset=r.preset,
        json_schema=schema,
    )


def records_of(
    outs: list[Outcome[BatchRow]], on_error: str, schema: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The output rows of one finished batch (written by the driver, whichever process generated them). `schema`:
    an answer that validates gets its value as "object"; one that does not keeps its text and gets an "error"."""
    recs: list[dict[str, Any]] = []
    for o in outs:
        if o.completion is None:
            if on_error == "fail":
                raise BadInput(f"{o.job.location}: {o.error}")
            recs.append({"key": o.job.id, "id": o.job.id, "error": o.error})
            continue
        s = split_thought(o.completion.text)
        rec: dict[str, Any] = {}
        if schema is not None:
            value, error = validate_answer(s.answer, schema, o.completion.finish_reason)
            rec = {"object": value} if error is None else {"error": error}
        recs.append(
            rec
            | {
                "key": o.job.id,
                "id": o.job.id,
                "answer": s.answer,
                "thought": s.thought,
                "finish_reason": o.completion.finish_reason,
                "prompt_tokens": o.completion.prompt_tokens,
                "completion_tokens": o.completion.completion_tokens,
                "seconds": round(o.seconds, 4),
            }
        )
    return recs


def open_log(input_path: Path, out_path: Path, resume: bool, on_error: str) -> tuple[list[BatchRow], RecordLog]:
    """The rows and the output log (refusing to overwrite a finished file without --resume)."""
    rows = read_batch_rows(input_path, on_error)
    if out_path.exists() and out_path.stat().st_size > 0 and not resume:
        raise BadInput(f"{out_path}: exists; pass --resume to continue it, or choose another --out")
    return rows, RecordLog(out_path, resume=resume)


def run_batch(
    mg: MedGemma,
    input_path: Path,
    out_path: Path,
    *,
    resume: bool = False,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    think: bool = False,
    on_error: str = "fail",
    progress: bool = True,
    schema: dict[str, Any] | None = None,
    seen: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`schema`: every answer is decoded under it and validated again; a row whose answer does not validate keeps
    its answer text and gets an "error" (the run goes on); one that does gets its value as "object". `seen`
    (`batch --sr`): filled with each asked row's manifest (`batch.sr.Seen`), so its SR needs no second decode."""
    rows, log = open_log(input_path, out_path, resume, on_error)
    pending = [r for r in rows if r.id not in log.done]

    def build(r: BatchRow) -> GenerationRequest:
        req = row_request(mg, r, think, max_new_tokens, schema)
        if seen is not None:
            seen[r.id] = prompt_manifest(req.prompt)
        return req

    def on_batch(outs: list[Outcome[BatchRow]]) -> None:
        log.append(records_of(outs, on_error, schema))

    size = batch_size or auto_batch_size(mg.backend, images=any(r.images for r in pending))
    try:
        secs = run_batches(
            mg.backend,
            pending,
            build,
            on_batch,
            size,
            sort_key=lambda r: (len(r.images), len(r.question)),
            label="rows",
            progress=progress,
        )
    finally:
        log.close()
    return {
        "rows": len(rows),
        "generated": len(pending),
        "resumed": len(rows) - len(pending),
        "seconds": round(secs, 3),
    }
