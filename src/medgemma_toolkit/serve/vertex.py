"""Google's MedGemma serving container's API: Vertex AI `predict` requests in, its envelope out. Pure translation.

Apps written against the container (google-health/medgemma python/serving at a60a660: `predictor.py`,
`vertex_schemata/request.yaml` and `response.yaml`) post `{"instances": [<chat request>, ...]}` (or one chat request
bare) to the predict route. Each instance is an OpenAI-style chat request with the container's extra content parts:
`image_url` whose `url` may be a list, `image` (a bare URL, MedGemma's own chat format), `image_bytes` (base64),
`image_dicom` (DICOMweb instance or series URIs) and `image_gcs`. Answers come back as `{"predictions": X}`, X one
`chat.completion` object for one instance and a list for several, and errors as
`{"error": {"message", "object": "error", "type"}}`.

Here an instance becomes our `ChatCompletionRequest`, so it runs through the chat route's own pipeline: the same
image rules (host allow-list, DICOMweb reader, decode budgets), the same limits. What this server cannot do is a
400 naming the field: `image_gcs` (no cloud access here), per-request credentials, patch coordinates, OpenSlide
levels, sampling parameters the backends do not take. The container's default `max_tokens` (500) applies when
an instance gives none, as there.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import ValidationError

from ..backends.base import Completion
from ..prompts.thinking import split_thought
from .errors import APIError
from .schemas import ChatCompletionRequest

SOURCE = "google-health/medgemma a60a66024f6153496dfa9490dba12d4f1fbd092e python/serving"
DEFAULT_MAX_TOKENS = 500  # the container's default when an instance gives no max_tokens
REQUEST_FORMAT = "chatCompletions"
IMAGE_TYPES = ("image_url", "image", "image_bytes", "image_dicom", "image_gcs")
# Parameters the container passes to vLLM: accepted at their schema defaults (or null), else a 400 naming them.
_DEFAULTS: dict[str, Any] = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "best_of": 1,
    "top_k": -1,
    "min_p": 0,
    "repetition_penalty": 1,
    "include_stop_str_in_output": False,
    "ignore_eos": False,
    "min_tokens": 0,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "truncate_prompt_tokens": None,
    "add_generation_prompt": True,
}
_PASSED = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n", "model", "messages")
_TYPES: dict[str, tuple[type, ...]] = {  # the schema's types, checked strictly ("20" is not 20)
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "n": (int,),
    "seed": (int,),
    "temperature": (float, int),
    "top_p": (float, int),
    "stop": (str,),
    "model": (str,),
}
_UNSUPPORTED_IMAGE_KEYS = ("patch_coordinates_list", "openslide_pyramid_level", "extensions")


def error_type(status: int) -> str:
    """The container's error categories (response.yaml): the client's fault, worth a retry, or neither."""
    if status in (408, 429, 503, 504):
        return "TransientServerError"
    return "BadRequestError" if status < 500 else "PermanentServerError"


def error_body(message: str, status: int) -> dict[str, Any]:
    """`{"error": {...}}` as the container writes it (messages cut at its 1,024 characters)."""
    return {"error": {"message": " ".join(message.split())[:1024], "object": "error", "type": error_type(status)}}


def split_instances(data: Any) -> tuple[list[Any], bool]:
    """The instances of a predict body and whether they came in the `instances` envelope (else: one bare request,
    which the container also takes)."""
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    if "instances" not in data:
        return [data], False
    instances = data["instances"]
    if not isinstance(instances, list) or not instances:
        raise APIError(400, "instances: expected a non-empty list of chat completion requests", param="instances")
    extra = sorted(k for k in data if k not in ("instances", "parameters"))
    if extra:
        raise APIError(400, f"unknown top-level field {extra[0][:40]!r} beside instances", param=extra[0][:40])
    if data.get("parameters") not in (None, {}):
        raise APIError(400, "parameters: not used by this API; give sampling settings inside each instance")
    return instances, True


def _where(k: int, enveloped: bool) -> str:
    return f"instances[{k}]" if enveloped else "request"


def _urls(value: Any, field: str) -> list[str]:
    """One URL or a non-empty list of them (the container's `url` and `dicom_source` take both)."""
    if isinstance(value, str) and value.strip():
        return [value.strip()]
    if isinstance(value, list) and value and all(isinstance(u, str) and u.strip() for u in value):
        return [u.strip() for u in value]
    raise APIError(400, f"{field}: expected a URL or a non-empty list of URLs", param=field)


def _check_image_record(record: dict[str, Any], field: str) -> None:
    cred = record.get("access_credential")
    if cred not in (None, "application_default"):
        raise APIError(
            400,
            f"{field}.access_credential: per-request credentials are not accepted; this server's DICOMweb "
            "credentials come from its environment (MEDGEMMA_DICOMWEB_TOKEN or _USER/_PASSWORD)",
            param=f"{field}.access_credential",
        )
    for key in _UNSUPPORTED_IMAGE_KEYS:
        if record.get(key) is not None:
            raise APIError(400, f"{field}.{key}: not supported by this server", param=f"{field}.{key}")


def join_instances(urls: list[str]) -> list[str]:
    """A list of instance URIs of one series -> one URI naming them all (`instances/I1,I2`), which the DICOMweb
    reader retrieves as one series (a CT/MR set becomes a volume, as in the container); URIs of different series,
    or series URIs, stay apart, in order."""
    out: list[str] = []
    prefix_of_last = None
    for u in urls:
        head, sep, sop = u.rstrip("/").rpartition("/instances/")
        if sep and sop and "/" not in sop and prefix_of_last == head:
            out[-1] += "," + sop
            continue
        out.append(u)
        prefix_of_last = head if sep and sop and "/" not in sop else None
    return out


def _part(part: Any, field: str) -> list[dict[str, Any]]:
    """One container content part -> OpenAI content parts (an image part with a list of URLs becomes several)."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise APIError(400, f"{field}: expected a content part object with a 'type'", param=field)
    kind = part["type"]
    if kind == "text":
        return [part]
    if kind not in IMAGE_TYPES:
        raise APIError(400, f"{field}.type: unsupported content type {kind[:40]!r}", param=f"{field}.type")
    if kind == "image_gcs":
        raise APIError(
            400,
            f"{field}: image_gcs (Google Cloud Storage) is not supported by this server, which has no cloud "
            "access; send image_url, image_bytes or image_dicom",
            "unsupported_image_source",
            f"{field}.image_gcs",
        )
    record: dict[str, Any]
    if kind == "image":  # MedGemma's own chat format: the URL is the value, the record the part itself
        record, urls = part, _urls(part.get("image"), f"{field}.image")
    else:
        value = part.get(kind)
        if not isinstance(value, dict):
            raise APIError(400, f"{field}.{kind}: expected an object", param=f"{field}.{kind}")
        record = value
        if kind == "image_url":
            urls = _urls(record.get("url"), f"{field}.image_url.url")
        elif kind == "image_dicom":
            urls = _urls(record.get("dicom_source"), f"{field}.image_dicom.dicom_source")
            if not all("/studies/" in u and "/series/" in u for u in urls):
                raise APIError(
                    400,
                    f"{field}.image_dicom.dicom_source: expected DICOMweb URIs (.../studies/S/series/R[/instances/I])",
                    param=f"{field}.image_dicom.dicom_source",
                )
            urls = join_instances(urls)
        else:  # image_bytes
            data = record.get("input_bytes")
            if not isinstance(data, str) or not data:
                raise APIError(400, f"{field}.image_bytes.input_bytes: expected base64 text", param=field)
            urls = ["data:application/octet-stream;base64," + data]
    _check_image_record(record, f"{field}.{kind}" if kind != "image" else field)
    return [{"type": "image_url", "image_url": {"url": u}} for u in urls]


def _message(msg: Any, field: str) -> dict[str, Any]:
    if not isinstance(msg, dict):
        raise APIError(400, f"{field}: expected a message object", param=field)
    content = msg.get("content")
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for j, p in enumerate(content):
            if isinstance(p, dict) and p.get("type") == "refusal":
                continue  # an assistant's refusal part carries nothing for the model
            parts.extend(_part(p, f"{field}.content[{j}]"))
        content = parts
    out = {k: v for k, v in msg.items() if k in ("role", "name")}
    out["content"] = content
    return out


def to_chat_request(
    instance: Any, model: str, field: str = "request", default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> ChatCompletionRequest:
    """One container instance -> our chat request (served by `model`), or a 400 naming the field.
    `default_max_tokens`: for an instance that gives none (the container's 500, capped by the server's limit)."""
    if not isinstance(instance, dict):
        raise APIError(400, f"{field}: expected a chat completion request object", param=field)
    fmt = instance.get("@requestFormat")
    if fmt is not None and fmt != REQUEST_FORMAT:
        raise APIError(400, f"{field}.@requestFormat: must be {REQUEST_FORMAT!r}", param=f"{field}.@requestFormat")
    for key, value in instance.items():
        if key in ("@requestFormat", *_PASSED):
            continue
        if key not in _DEFAULTS:
            raise APIError(400, f"{field}: unknown field {key[:40]!r}", param=f"{field}.{key[:40]}")
        if value is not None and value != _DEFAULTS[key]:
            raise APIError(400, f"{field}.{key}: only the default ({_DEFAULTS[key]!r}) is supported", param=key)
    for key, kinds in _TYPES.items():
        value = instance.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise APIError(400, f"{field}.{key}: expected {kinds[0].__name__}", param=f"{field}.{key}")
    messages = instance.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, f"{field}.messages: expected a non-empty list", param=f"{field}.messages")
    body: dict[str, Any] = {k: instance[k] for k in _PASSED[:-2] if instance.get(k) is not None}
    body["model"] = model  # the container ignores `model`: the endpoint is the model
    body["messages"] = [_message(m, f"{field}.messages[{i}]") for i, m in enumerate(messages)]
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = default_max_tokens
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        raise APIError(400, f"{field}.{loc}: {err.get('msg', 'invalid value')}", param=f"{field}.{loc}") from None


def prediction(c: Completion, model: str) -> dict[str, Any]:
    """One `chat.completion` in the container's shape (response.yaml): the answer only (a thought is split off)."""
    finish = c.finish_reason if c.finish_reason in ("stop", "length", "content_filter") else "stop"
    return {
        "id": str(uuid.uuid4()),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": split_thought(c.text).answer},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens,
        },
    }


def envelope(results: list[dict[str, Any]], enveloped: bool) -> dict[str, Any]:
    """`{"predictions": ...}` as the container answers: one object for one instance, a list for several; a bare
    request gets its answer bare."""
    if not enveloped:
        return results[0]
    return {"predictions": results[0] if len(results) == 1 else results}
