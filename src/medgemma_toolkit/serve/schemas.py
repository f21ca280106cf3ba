"""The subset of OpenAI's Chat Completions request the server accepts, validated by pydantic.

Unknown top-level fields that change nothing (e.g. `user`, `store`, `logprobs: false`) are ignored as
OpenAI-compatible servers do; anything we would have to silently get wrong (n > 1, an unknown content part, a wrong
type, a sampling parameter we do not implement such as a non-zero `presence_penalty`) is a 400
with the field named.
MedGemma's extension lives under `medgemma` (the `openai` client sends it via `extra_body`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..imaging.options import WindowName
from ..jsondepth import MAX_DEPTH, too_deep
from .errors import APIError
from .tool_schemas import ToolCallIn, ToolChoice, ToolDef


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextContent(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: str | None = None  # accepted for compatibility; MedGemma always sees the full 896 px square


class ImageContent(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextContent, ImageContent], Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `name`, `refusal` echoed back by clients

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant turns that called tools (serve/tools.py)
    tool_call_id: str | None = None  # tool turns: the call answered


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class MedGemmaOptions(_Strict):
    """The extension: `{"medgemma": {"think": true}}` asks thinking-capable models to reason first; the thought
    comes back apart (`message.reasoning_content`, `delta.reasoning_content` when streaming)."""

    think: bool = False
    # Closes a thought that reached this many tokens, so the answer (constrained by `response_format`) still comes
    max_thought_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    window: tuple[float, float] | WindowName | None = None  # DICOM window; None: "container"
    ct_windows: Literal["notebook", "server"] | None = None  # CT volumes' RGB window preset; None: "notebook"
    # Google's longitudinal notebook: the last message's two images are the prior then the current (in that order);
    # preset cxr-longitudinal, and an empty text asks the notebook's own instruction.
    longitudinal: bool = False
    # 2D images padded to a square (True) or stretched (False); None: the preset's choice (longitudinal: unpadded,
    # as the notebook sends them; everything else padded)
    pad: bool | None = None
    # The answer also as a DICOM Comprehensive SR citing the request's DICOM instances (`serve/sr.py`)
    sr: bool = False


class LocalizeOptions(_Strict):
    """`/v1/medgemma/localize`'s extension: `{"sr": true}` adds the boxes as a TID 1500 DICOM SR."""

    sr: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `description`

    name: str = Field(default="answer", max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None  # the answer is always held to the schema (constrained decoding)


class ResponseFormat(_Strict):
    """`{"type": "json_object"}`: any JSON object; `{"type": "json_schema", "json_schema": {...}}`: valid under it."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


# Parameters that would change the answer if honoured: a request that sets them (to anything but their neutral
# value) is refused with the parameter named, never silently answered without them.
UNSUPPORTED_PARAMETERS: dict[str, object] = {
    "logit_bias": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "functions": None,
    "function_call": None,
    "audio": None,
    "prediction": None,
    "web_search_options": None,
    "reasoning_effort": None,
}


def refuse_unsupported(data: Any) -> Any:
    """A 400 naming the first parameter in `UNSUPPORTED_PARAMETERS` set to a non-neutral value."""
    if isinstance(data, dict):
        for name, neutral in UNSUPPORTED_PARAMETERS.items():
            value = data.get(name)
            if value is not None and value != neutral and value != {}:
                raise APIError(400, f"{name}: not supported by this server", "unsupported_parameter", name)
        modalities = data.get("modalities")
        if modalities is not None and modalities != ["text"]:
            raise APIError(400, "modalities: only text output is supported", "unsupported_parameter", "modalities")
    return data


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def refuse_unsupported_parameters(cls, data: Any) -> Any:
        return refuse_unsupported(data)

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    medgemma: MedGemmaOptions | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False  # per generated token, on backends that can compute them (transformers)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]  # an empty stop string would end every answer before it began


class PreviewRequest(_Strict):
    """Body of `POST /v1/medgemma/preview`: one image URL, answered with the exact model input as a PNG."""

    image_url: ImageURL
    window: tuple[float, float] | WindowName | None = None


class LocalizeRequest(_Strict):
    """Body of `POST /v1/medgemma/localize`: one 2D image (any URL chat accepts for it) and the objects to find."""

    model: str | None = None
    image: str = Field(min_length=1)
    objects: list[str] = Field(min_length=1, max_length=16)
    window: tuple[float, float] | WindowName | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    medgemma: LocalizeOptions | None = None


def count_parts(data: dict) -> int:
    """Messages plus list content parts: what validation's cost grows with."""
    msgs = data.get("messages")
    if not isinstance(msgs, list):
        return 0
    return len(msgs) + sum(
        len(m["content"]) for m in msgs if isinstance(m, dict) and isinstance(m.get("content"), list)
    )


def parse_body(raw: bytes, model: type[BaseModel], max_parts: int | None = None) -> Any:
    """JSON bytes to a validated request, or a 400 that names the offending field. With `max_parts`, a body of
    more messages and content parts than that is refused before validation (1 M empty parts take seconds)."""
    # Every content part names its "type": counting the key in the raw bytes bounds the parts before json.loads
    # builds a million dicts (seconds holding the GIL, which stalls the event loop even from a worker thread).
    if max_parts is not None and raw.count(b'"type"') > max_parts:
        raise APIError(
            400,
            f"messages: more than {max_parts:,} content parts; this server takes at most {max_parts:,} per request",
            "too_many_parts",
            "messages",
        )
    try:
        data = json.loads(raw)
    except RecursionError:
        raise APIError(400, f"request body is nested more than {MAX_DEPTH} levels deep", "invalid_json") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(
            400,
            f"request body is not valid JSON ({type(e).__name__} at position {getattr(e, 'pos', 0)})",
            "invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", "invalid_json")
    if too_deep(data):  # no request needs it; deep values crash whatever walks them recursively later
        raise APIError(400, f"request body is nested more than {MAX_DEPTH} levels deep", "invalid_json")
    if max_parts is not None and (n := count_parts(data)) > max_parts:
        raise APIError(
            400,
            f"messages: {n:,} messages and content parts; this server takes at most {max_parts:,} per request",
            "too_many_parts",
            "messages",
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        # pydantic lists every union branch it tried; the first is the one that matters to the client
        raise APIError(400, f"{loc}: {msg}" if loc else msg, "invalid_value", loc or None) from None


class RawBody(BaseModel):
    """A body a route takes as bytes (e.g. a multipart upload): the gate counts, caps and times it like any other,
    and hands it over unparsed, with the request's Content-Type."""

    data: bytes
    content_type: str
