"""`medgemma extract`: structured fields from documents (PDF lab reports, scanned pages, images)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .common import MODEL_DEFAULTS, ModelOptions, check_sources, option_groups


@app.command()
@option_groups(mo=ModelOptions)
def extract(
    schema: Annotated[Optional[str], typer.Option("--schema", help="JSON schema file every answer must follow")] = None,
    image: Annotated[
        Optional[list[str]],
        typer.Option(
            "--image",
            "-i",
            help="Document: a PDF (one image per page), an image file, or a folder of them; repeat for several",
        ),
    ] = None,
    mo: ModelOptions = MODEL_DEFAULTS,
    rows: Annotated[
        Optional[Path],
        typer.Option("--input", help="CSV/TSV/JSONL rows, one document each (see --column); an 'id' column keys it"),
    ] = None,
    column: Annotated[
        str, typer.Option(help="--input's column holding the document's path, relative to the rows file's folder")
    ] = "document",
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Results JSONL, one trace per document, appended and flushed as each ends"),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip documents already in --out")] = False,
    sample: Annotated[
        bool,
        typer.Option("--sample", help="The shipped synthetic lab report and its schema, in place of --schema and -i"),
    ] = False,
    pdf_text: Annotated[
        bool,
        typer.Option(
            "--pdf-text",
            help="Send PDFs' text layer (pages marked) instead of page images; automatic for text-only models",
        ),
    ] = False,
    think: Annotated[
        bool, typer.Option("--think", help="Thinking models reason first, in free text; only the answer is constrained")
    ] = False,
    max_thought_tokens: Annotated[
        Optional[int], typer.Option(help="With --think: close the thought after this many tokens, then answer")
    ] = None,
    instruction: Annotated[
        Optional[str], typer.Option(help="Text before the schema in the prompt; default: a plain extraction request")
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option(help="Tokens per answer; bound strings and arrays in the schema")
    ] = 1024,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON line per document: source, object, error, raw answer, finish_reason, pages (manifest)",
        ),
    ] = False,
) -> None:
    """Extract one JSON object per document, decoded under the schema and validated against it.

    Without --json each document's object is printed as one JSON line (errors go to stderr); the exit code is 1 if
    any document failed. With --out every document's trace is also appended to that file as it finishes, so a
    killed run continues with --resume and never repeats or duplicates a document.

    --pdf-text sends each page's text layer instead of its image: exact characters for born-digital reports. A
    text-only model (27B text) always gets the text layer, since it cannot take the page images at all.

    Example: medgemma extract --model medgemma-1.5-4b-it --sample --pdf-text
    Example: medgemma extract --model medgemma-1.5-4b-it --schema lab.json -i report.pdf
    Example: medgemma extract -m medgemma-4b-it --schema lab.json -i a.pdf -i b.png --json
    Example: medgemma extract -m medgemma-4b-it --schema lab.json -i reports/ -o fields.jsonl --resume
    Example: medgemma extract -m medgemma-4b-it --schema lab.json --input reports.csv --column path -o fields.jsonl
    """
    from ..errors import BadInput
    from ..extract import DEFAULT_INSTRUCTION, extract_documents, read_schema
    from ..extract.documents import collect_documents
    from ..extract.run import ExtractSettings, extract_to_file, failed_keys
    from ..imaging import ImageOptions

    if max_new_tokens <= 0:
        raise BadInput("--max-new-tokens must be positive")
    if max_thought_tokens is not None and (max_thought_tokens <= 0 or not think):
        raise BadInput("--max-thought-tokens must be positive, and needs --think")
    if resume and out is None:
        raise BadInput("--resume continues an --out file; give -o")
    if sample:
        if schema is not None or image or rows is not None:
            raise BadInput("--sample brings its own schema and report; leave out --schema, -i and --input")
        from ..extract.samples import sample_paths

        schema_path, report = sample_paths()
        schema, image = str(schema_path), [str(report)]
    if schema is None:
        raise BadInput("give --schema FILE (or --sample to try the shipped lab report)")
    check_sources(image)
    parsed = read_schema(schema)  # all before the model loads
    docs = collect_documents(list(image or []), rows, column)
    if out is not None and out.exists() and out.stat().st_size > 0 and not resume:
        raise BadInput(f"{out}: exists; pass --resume to continue it, or choose another --out")
    mg = mo.load()
    settings = ExtractSettings(
        instruction=instruction or DEFAULT_INSTRUCTION,
        max_new_tokens=max_new_tokens,
        image_options=ImageOptions(pdf_text=True if pdf_text else None),
        think=think,
        max_thought_tokens=max_thought_tokens,
    )
    results = (
        extract_documents(mg, parsed, docs, settings)
        if out is None
        else extract_to_file(mg, parsed, docs, out, settings, resume=resume)
    )
    failed = 0
    for result in results:
        failed += result.error is not None
        if as_json:
            print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
        elif result.error is None:
            print(json.dumps(result.object, ensure_ascii=False), flush=True)
        else:
            print(f"{result.source}: {result.error}", file=sys.stderr, flush=True)
    if out is not None:
        failed = len(failed_keys(out, docs))
        print(f"{len(docs) - failed} of {len(docs)} documents extracted; wrote {out}", file=sys.stderr)
    if failed:
        raise typer.Exit(1)
