"""OpenAI's `POST /v1/audio/transcriptions`, as pure functions for the server to wire: parse the multipart body,
transcribe, shape the answer. Nothing here logs; the transcript is PHI and goes only into the response.

Request (OpenAI's shape, what `client.audio.transcriptions.create(model=..., file=...)` sends): multipart/form-data
with `file` (the recording) and `model`, optional `response_format` (`json` default, `text`, `verbose_json`),
`language`, `prompt`, `temperature` and `timestamp_granularities[]` (`segment`, `word`). MedASR is English-only
greedy CTC: `language` other than English, a `prompt` or a non-zero `temperature` are refused rather than ignored.
Every refusal is `BadInput`, which the server's handlers turn into an OpenAI-format 400.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import BadInput
from .transcribe import Transcriber, Transcript

ResponseFormat = Literal["json", "text", "verbose_json"]
FORMATS: tuple[str, ...] = ("json", "text", "verbose_json")
MAX_FIELD_BYTES = 4096  # any non-file form field
MAX_PARTS = 16


@dataclass
class TranscriptionRequest:
    audio: bytes
    model: str
    response_format: ResponseFormat = "json"
    granularities: list[str] = field(default_factory=lambda: ["segment"])


def _parts(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """(Content-Disposition parameters, data) of each part, with python-multipart's parser (Starlette's own)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise BadInput("send the recording as multipart/form-data (a `file` field), as OpenAI's API takes it")
    parts: list[tuple[dict[str, str], bytes]] = []
    state: dict[str, Any] = {}

    def begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise BadInput(f"more than {MAX_PARTS} form fields")
        state.update(headers={}, field=b"", value=b"", data=[])

    def header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def part_end() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        names = {k.decode("latin-1"): v.decode("utf-8", "replace") for k, v in disp.items()}
        parts.append((names, b"".join(state["data"])))

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": header_field,
        "on_header_value": header_value,
        "on_header_end": header_end,
        "on_part_data": part_data,
        "on_part_end": part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except BadInput:
        raise
    except Exception as e:  # python-multipart raises its own error types (and ValueError) on malformed bodies
        raise BadInput(f"malformed multipart body ({type(e).__name__})") from None
    return parts


def parse_request(body: bytes, content_type: str) -> TranscriptionRequest:
    """Read OpenAI's transcription form; `BadInput` (a 400) for anything this server does not do."""
    fields: dict[str, list[str]] = {}
    audio: bytes | None = None
    for disp, data in _parts(body, content_type):
        name = disp.get("name", "")
        if name == "file":
            audio = data
            continue
        if len(data) > MAX_FIELD_BYTES:
            raise BadInput(f"form field {name[:40]!r} is longer than {MAX_FIELD_BYTES} bytes")
        fields.setdefault(name, []).append(data.decode("utf-8", "replace").strip())
    if audio is None:
        raise BadInput("the form has no `file` field (the recording)")
    if not audio:
        raise BadInput("the uploaded file is empty")
    fmt = (fields.get("response_format") or ["json"])[-1]
    if fmt not in FORMATS:
        raise BadInput(f"response_format must be one of {', '.join(FORMATS)} (srt and vtt are not offered)")
    language = (fields.get("language") or ["en"])[-1].lower()
    if language not in ("", "en", "english"):
        raise BadInput("MedASR transcribes English only; omit `language` or send `en`")
    if any(p for p in fields.get("prompt", [])):
        raise BadInput("`prompt` is not supported: MedASR is a CTC model and takes no text context")
    try:
        temperature = float((fields.get("temperature") or ["0"])[-1] or 0)
    except ValueError:
        raise BadInput("temperature must be a number") from None
    if temperature != 0:
        raise BadInput("only temperature 0 (greedy CTC decoding) is offered")
    grans = fields.get("timestamp_granularities[]", []) + fields.get("timestamp_granularities", [])
    bad = [g for g in grans if g not in ("segment", "word")]
    if bad:
        raise BadInput("timestamp_granularities must be `segment` and/or `word`")
    return TranscriptionRequest(
        audio=audio,
        model=(fields.get("model") or [""])[-1],
        response_format=fmt,  # type: ignore[arg-type]
        granularities=grans or ["segment"],
    )


def transcribe_request(transcriber: Transcriber, req: TranscriptionRequest) -> Transcript:
    """Decode the upload (its bytes, never a name: uploads carry no trusted file name) and transcribe it."""
    from .audio import load_audio

    audio = load_audio(req.audio, name="the uploaded file")
    return next(transcriber.transcribe_audio([audio], ["upload"]))


def response_body(t: Transcript, req: TranscriptionRequest) -> tuple[str | dict[str, Any], str]:
    """(body, media type) in OpenAI's shapes: `{"text"}`, plain text, or `verbose_json` with segments (and words
    when asked for). Fields we cannot compute honestly (log-probabilities, token ids) are left out."""
    if req.response_format == "text":
        return t.text + "\n", "text/plain; charset=utf-8"
    if req.response_format == "json":
        return {"text": t.text}, "application/json"
    d = t.to_dict()
    body: dict[str, Any] = {"task": "transcribe", "language": "english", "duration": d["duration"], "text": t.text}
    if "segment" in req.granularities:
        body["segments"] = [{**s, "seek": 0, "temperature": 0.0} for s in d["segments"]]
    if "word" in req.granularities:
        body["words"] = [{"word": w["text"], "start": w["start"], "end": w["end"]} for w in d["words"]]
    return body, "application/json"
