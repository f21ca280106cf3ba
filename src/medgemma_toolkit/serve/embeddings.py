"""MedSigLIP routes: `POST /v1/embeddings` (OpenAI's embeddings shape) and `POST /v1/medgemma/zero-shot`.

Served when `medgemma serve --embed-model M` loaded a SigLIP checkpoint beside the generative model (it sits on
`app.state.embedder`); without one both routes answer 404 `model_not_found`. Same middleware as chat: API key,
Host check, request ids, and an access log of paths, statuses and counts (never texts or images).

Extension to OpenAI's request: an `input` item may be an image content part, as in chat,
`{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` (PNG/JPEG/DICOM data URIs; http(s),
DICOMweb and local paths only as the operator allowed for chat). Plain strings are texts. Each response item is
one model input image or text: `index` is its place in `data`, `input` the request item it came from (a series
under the image root gives one item per sampled slice), `medgemma` its manifest entry (slice label, patch).
`encoding_format` "float" or "base64" (little-endian float32, what the `openai` client asks for by default).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Any, Literal, Union

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..core.messages import ImagePart
from ..imaging import decode_image_bytes
from ..imaging.manifest import image_manifest
from .config import ServeConfig
from .errors import APIError
from .images import ImageResolver, decode_data_uri
from .middleware import JSON_PATHS, KNOWN_PATHS
from .schemas import ImageContent, parse_body

log = logging.getLogger("medgemma_toolkit.serve")
EMBEDDINGS, ZERO_SHOT = "/v1/embeddings", "/v1/medgemma/zero-shot"
# Declared here so the middleware counts these paths by name and checks their JSON content type.
KNOWN_PATHS.update({EMBEDDINGS, ZERO_SHOT})
JSON_PATHS.update({EMBEDDINGS, ZERO_SHOT})

InputItem = Union[str, ImageContent]
MAX_INPUTS = 2048  # OpenAI's own limit per embeddings request; one request must not hold the model for minutes


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `user`

    model: str
    input: Union[str, list[InputItem]] = Field(min_length=1, max_length=MAX_INPUTS)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class ZeroShotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    images: list[str] = Field(min_length=1)  # image URLs (data URIs), as in chat's image_url.url
    labels: list[str] = Field(min_length=1)
    template: str = "{}"
    scoring: Literal["softmax", "sigmoid"] = "softmax"


class _Slots:
    def __init__(self, cap: int) -> None:
        self.cap, self.active = cap, 0

    def enter(self) -> None:
        if self.active >= self.cap:
            raise APIError(429, "server is busy: too many embedding requests; retry shortly", "rate_limit_exceeded")
        self.active += 1

    def leave(self) -> None:
        self.active -= 1


def embedder_id(ms: Any) -> str:
    from pathlib import Path

    return Path(ms.name).name if "/" in ms.name and Path(ms.name).exists() else str(ms.name)


def embedding_router(config: ServeConfig) -> APIRouter:
    """The two routes, bound to the operator's limits; the model is looked up per request on `app.state`."""
    router = APIRouter()
    slots = _Slots(config.max_batch_size + config.max_queue)
    lock = threading.Lock()  # one forward pass at a time: the CPU (or GPU) is saturated by one batch already

    def embedder(request: Request, model: str | None) -> Any:
        ms = getattr(request.app.state, "embedder", None)
        if ms is None:
            raise APIError(
                404, "this server has no embedding model; start it with --embed-model M", "model_not_found", "model"
            )
        if model is not None and model not in (embedder_id(ms), ms.name):
            raise APIError(
                404, f"model {model[:100]!r} not found; embeddings come from {embedder_id(ms)!r}", "model_not_found"
            )
        return ms

    async def body_of(request: Request, schema: type) -> Any:
        from .app import read_body  # here, not at import: app.py includes this router

        raw = await read_body(request, config.max_body_bytes, config.body_timeout_s)
        return await run_in_threadpool(parse_body, raw, schema, config.max_content_parts)

    def images_of(ms: Any, urls: list[tuple[int, str]]) -> list[tuple[Any, dict[str, Any]]]:
        """(image, entry) per model input image. Data URIs are decoded whole (MedSigLIP's own resize follows);
        other URLs go through chat's resolver and its rules (they arrive at the model's size)."""
        resolver = ImageResolver(config, ms.pre.size[0])
        out: list[tuple[Any, dict[str, Any]]] = []
        for k, url in urls:
            if len(out) >= config.max_images:
                raise APIError(400, f"too many images: at most {config.max_images} per request", "too_many_images")
            if url.startswith("data:"):
                data, name = decode_data_uri(url, f"input {k}")
                out.append(
                    (decode_image_bytes(data, name, resolver.options), {"input": k, "label": None, "patch": None})
                )
                continue
            parts = resolver.parts(url)
            images = [p.image for p in parts if isinstance(p, ImagePart)]
            for img, e in zip(images, image_manifest(parts)):
                out.append((img, {"input": k, "label": e.get("label"), "patch": e.get("patch")}))
        if len(out) > config.max_images:
            raise APIError(400, f"too many images: at most {config.max_images} per request", "too_many_images")
        return out

    def run(fn: Any) -> Any:
        with lock:
            return fn()

    @router.post(EMBEDDINGS)
    async def embeddings(request: Request) -> dict[str, Any]:
        body: EmbeddingsRequest = await body_of(request, EmbeddingsRequest)
        ms = embedder(request, body.model)
        if body.dimensions is not None and body.dimensions != ms.dim:
            raise APIError(
                400, f"dimensions: this model gives {ms.dim}-d embeddings only", "invalid_value", "dimensions"
            )
        items = [body.input] if isinstance(body.input, str) else list(body.input)
        texts = [(k, it) for k, it in enumerate(items) if isinstance(it, str)]
        urls = [(k, it.image_url.url) for k, it in enumerate(items) if not isinstance(it, str)]
        if any(not t.strip() for _, t in texts):
            raise APIError(400, "input: texts must not be empty", "invalid_value", "input")
        slots.enter()
        t0 = time.monotonic()
        try:

            def work() -> tuple[list[dict[str, Any]], int, int]:
                pics = images_of(ms, urls)
                iv = run(lambda: ms.embed_images([p for p, _ in pics])).vectors if pics else None
                tv = run(lambda: ms.embed_texts([t for _, t in texts])).vectors if texts else None
                tokens = sum(
                    len(ms.processor.tokenizer(t, truncation=True, max_length=ms.max_text_tokens)["input_ids"])
                    for _, t in texts
                )
                rows: list[tuple[int, np.ndarray, dict[str, Any]]] = []
                rows += [(e["input"], iv[i], e) for i, (_, e) in enumerate(pics)] if iv is not None else []
                rows += [(k, tv[i], {"input": k}) for i, (k, _) in enumerate(texts)] if tv is not None else []
                rows.sort(key=lambda r: r[0])  # stable: a series' slices stay in order
                return [_item(i, v, e, body.encoding_format) for i, (_, v, e) in enumerate(rows)], tokens, len(pics)

            data, tokens, n_images = await run_in_threadpool(work)
        finally:
            slots.leave()
        log.info(
            "request_id=%s embeddings texts=%d images=%d ms=%.1f",
            request.state.request_id,
            len(texts),
            n_images,
            (time.monotonic() - t0) * 1000,
        )
        return {
            "object": "list",
            "data": data,
            "model": embedder_id(ms),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @router.post(ZERO_SHOT)
    async def zero_shot(request: Request) -> dict[str, Any]:
        body: ZeroShotRequest = await body_of(request, ZeroShotRequest)
        ms = embedder(request, body.model)
        if len(body.labels) > 1000 or len(set(body.labels)) != len(body.labels):
            raise APIError(400, "labels: at most 1000, all distinct", "invalid_value", "labels")
        slots.enter()
        t0 = time.monotonic()
        try:

            def work() -> list[dict[str, Any]]:
                from ..embed.model import zero_shot_row

                pics = images_of(ms, list(enumerate(body.images)))
                tv = run(lambda: ms.embed_texts(ms.label_texts(body.labels, body.template))).vectors
                iv = run(lambda: ms.embed_images([p for p, _ in pics])).vectors
                logits, scores = ms.scores(iv, tv, body.scoring)
                return [
                    {"index": i, **zero_shot_row(e, list(body.labels), logits[i], scores[i])}
                    for i, (_, e) in enumerate(pics)
                ]

            results = await run_in_threadpool(work)
        finally:
            slots.leave()
        log.info(
            "request_id=%s zero_shot images=%d labels=%d ms=%.1f",
            request.state.request_id,
            len(results),
            len(body.labels),
            (time.monotonic() - t0) * 1000,
        )
        return {
            "object": "medgemma.zero_shot",
            "model": embedder_id(ms),
            "labels": body.labels,
            "scoring": body.scoring,
            "template": body.template,
            "results": results,
        }

    return router


def _item(index: int, vec: np.ndarray, entry: dict[str, Any], fmt: str) -> dict[str, Any]:
    v = np.asarray(vec, dtype="<f4")
    emb: Any = base64.b64encode(v.tobytes()).decode() if fmt == "base64" else [float(x) for x in v]
    out: dict[str, Any] = {"object": "embedding", "index": index, "embedding": emb, "input": entry["input"]}
    if "label" in entry:  # an image: what it is within its source (slice label, slide patch)
        out["medgemma"] = {"label": entry["label"], "patch": entry["patch"]}
    return out
