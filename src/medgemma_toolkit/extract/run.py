"""Structured extraction: each document's pages go to the model with the schema, the answer is decoded under the
schema (constrained decoding, `backends/constrain.py`) and validated again with `jsonschema` before it is returned.

Validation after decoding is not redundant: a row cut at its token limit is valid JSON's prefix, not JSON, and an
upstream server may ignore `response_format`. Each document succeeds or fails on its own (`Extraction.error`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..api import MedGemma
from ..backends.constrain import validate_answer
from ..errors import BadInput, MedGemmaError
from ..eval.records import RecordLog, read_records
from ..imaging import ImageOptions
from ..imaging.manifest import prompt_manifest
from ..jsondepth import loads_bounded
from ..prompts.thinking import split_thought
from .documents import Document

DEFAULT_INSTRUCTION = "Extract the information in this document as one JSON object that follows this JSON schema:"
MAX_SCHEMA_BYTES = 256 * 1024


@dataclass
class Extraction:
    """One document's result: `object` (valid under the schema) or `error`; `raw` is the model's answer text."""

    source: str
    object: Any = None
    error: str | None = None
    raw: str | None = None
    finish_reason: str | None = None
    pages: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_schema(path: str | Path, flag: str = "--schema") -> dict[str, Any]:
    """A JSON schema file, checked as a schema (jsonschema's meta-schema) and for constrained decoding; errors
    name `flag`."""
    import jsonschema

    from ..backends.constrain import check_schema

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise BadInput(f"{flag} {p}: cannot read ({e.strerror})") from None
    if len(data) > MAX_SCHEMA_BYTES:
        raise BadInput(f"{flag} {p}: over {MAX_SCHEMA_BYTES:,} bytes")
    try:
        schema = loads_bounded(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"{flag} {p}: not JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(schema, dict):
        raise BadInput(f"{flag} {p}: a JSON schema is an object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise BadInput(f"{flag} {p}: not a valid JSON schema ({e.message[:160]})") from None
    try:
        return check_schema(schema)
    except BadInput as e:
        raise BadInput(f"{flag} {p}: {e}") from None


@dataclass(frozen=True)
class ExtractSettings:
    """How each document is asked: the text before the schema, the answer's token limit, how files are read
    (`image_options.pdf_text`: PDFs' text layer instead of page images), and thinking (`think`: a free thought
    before the constrained answer, closed after `max_thought_tokens` where given)."""

    instruction: str = DEFAULT_INSTRUCTION
    max_new_tokens: int = 1024
    image_options: ImageOptions = ImageOptions()
    think: bool = False
    max_thought_tokens: int | None = None


def extract_documents(
    model: MedGemma,
    schema: dict[str, Any],
    documents: Sequence[str | Document],
    settings: ExtractSettings = ExtractSettings(),
) -> Iterator[Extraction]:
    """One `Extraction` per document, in order; a document that fails yields its error and the run goes on."""
    instruction = settings.instruction
    question = f"{instruction}\n{json.dumps(schema, separators=(',', ':'))}"
    for item in documents:
        doc = item if isinstance(item, Document) else Document(item, item)
        result = Extraction(source=doc.source)
        if doc.error is not None:
            result.error = doc.error
            yield result
            continue
        try:
            req = model.request(
                question,
                [doc.source],
                max_new_tokens=settings.max_new_tokens,
                image_options=settings.image_options,
                json_schema=schema,
                think=settings.think,
                max_thought_tokens=settings.max_thought_tokens,
            )
            result.pages = prompt_manifest(req.prompt)
            answer = model.backend.generate([req])[0]
        except MedGemmaError as e:
            result.error = str(e)
            yield result
            continue
        result.raw, result.finish_reason = answer.text, answer.finish_reason
        reply = split_thought(answer.text).answer  # `raw` keeps the thought; the answer alone is the JSON
        result.object, result.error = validate_answer(reply, schema, answer.finish_reason)
        yield result


def extract_to_file(
    model: MedGemma,
    schema: dict[str, Any],
    documents: Sequence[Document],
    out: Path,
    settings: ExtractSettings = ExtractSettings(),
    *,
    resume: bool = False,
) -> Iterator[Extraction]:
    """`extract_documents` over the documents `out` does not hold yet, each result appended to `out` as one JSON
    line ({"key", "source", "object", "error", "raw", "finish_reason", "pages"}) and fsync'd before the next
    document starts: `batch`'s record log, so a kill leaves at most a torn last line, which `--resume` drops. A
    failed document is a result too: a re-run does not retry it (delete its line to)."""
    if out.exists() and out.stat().st_size > 0 and not resume:
        raise BadInput(f"{out}: exists; pass --resume to continue it, or choose another --out")
    log = RecordLog(out, resume=resume)
    try:
        pending = [d for d in documents if d.key not in log.done]
        keys = iter(pending)
        for result in extract_documents(model, schema, pending, settings):
            log.append([{"key": next(keys).key, **result.to_dict()}])
            yield result
    finally:
        log.close()


def failed_keys(out: Path, documents: Sequence[Document]) -> list[str]:
    """The keys of `documents` whose recorded result in `out` is an error (this run's and earlier runs')."""
    wanted = {d.key for d in documents}
    return [r["key"] for r in read_records(out)[0] if r.get("key") in wanted and r.get("error") is not None]
