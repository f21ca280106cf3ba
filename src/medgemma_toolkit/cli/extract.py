"""`medgemma extract`: structured fields from documents (PDF lab reports, scanned pages, images)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from . import app
from .common import MODEL_DEFAULTS, ModelOptions, check_sources, option_groups


@app.command()
@option_groups(mo=ModelOptions)
def extract(
    schema: Annotated[str, typer.Option("--schema", help="JSON schema file every answer must follow")],
    image: Annotated[
        list[str],
        typer.Option("--image", "-i", help="Document: a PDF (one image per page) or an image file; repeat for several"),
    ],
    mo: ModelOptions = MODEL_DEFAULTS,
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
    any document failed. Thinking is not combined with a schema.

    Example: medgemma extract --model medgemma-1.5-4b-it --schema lab.json -i report.pdf
    Example: medgemma extract -m medgemma-4b-it --schema lab.json -i a.pdf -i b.png --json
    """
    from ..errors import BadInput
    from ..extract import DEFAULT_INSTRUCTION, extract_documents, read_schema

    if max_new_tokens <= 0:
        raise BadInput("--max-new-tokens must be positive")
    check_sources(image)
    parsed = read_schema(schema)  # both before the model loads
    mg = mo.load()
    failed = 0
    for result in extract_documents(
        mg, parsed, image, instruction=instruction or DEFAULT_INSTRUCTION, max_new_tokens=max_new_tokens
    ):
        failed += result.error is not None
        if as_json:
            print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
        elif result.error is None:
            print(json.dumps(result.object, ensure_ascii=False), flush=True)
        else:
            print(f"{result.source}: {result.error}", file=sys.stderr, flush=True)
    if failed:
        raise typer.Exit(1)
