"""The FastAPI application: OpenAI-compatible chat completions over a `MedGemma`, plus the web page.

>>> from medgemma_toolkit import MedGemma
>>> from medgemma_toolkit.serve import ServeConfig, create_app
>>> app = create_app(MedGemma.load("medgemma-4b-it"), ServeConfig())   # then: uvicorn.run(app)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import time
import uuid
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..api import MedGemma
from ..backends.base import Completion
from ..core.messages import ImagePart
from ..localize.run import assemble
from .batcher import Batcher, Job
from .config import ServeConfig
from .convert import Converted, to_generation_request
from .embeddings import embedding_router
from .errors import APIError, from_exception, install_error_handlers
from .images import ImageResolver
from .localize import plan_localize
from .metrics import Metrics
from .middleware import PAGE_HEADERS, ServeMiddleware
from .model_input import model_input_router
from .responses import delta_chunk, final_chunks, sse
from .schemas import ChatCompletionRequest, ImageContent, LocalizeRequest, PreviewRequest, parse_body
from .tools import ToolContext, stream_state
from .tools import body as tool_body
from .tools import prepare as prepare_tools
from .vertex_route import vertex_router

log = logging.getLogger("medgemma_toolkit.serve")
STATIC_DIR = Path(str(files("medgemma_toolkit.serve").joinpath("static")))


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class _EventStream(StreamingResponse):
    """A streaming response that always runs `on_close` once it ends, normally or not."""

    def __init__(self, *args: Any, on_close: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class Admission:
    """Counts requests admitted (parsing, queued or generating); beyond the cap new ones get 429."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.active = 0

    def try_enter(self) -> bool:
        if self.active >= self.cap:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active = max(0, self.active - 1)


def model_id(mg: MedGemma, config: ServeConfig) -> str:
    if config.served_model_name:
        return config.served_model_name
    name = mg.backend.info.name
    return Path(name).name if ("/" in name and Path(name).exists()) else name


async def read_body(request: Request, limit: int, timeout_s: float = 60.0) -> bytes:
    """The whole body, at most `limit` bytes, arriving within `timeout_s` (a client trickling it in gets 408)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(
            413, f"request body is {int(declared):,} bytes; this server accepts at most {limit:,}", "request_too_large"
        )
    chunks: list[bytes] = []
    total = 0

    async def collect() -> None:
        nonlocal total
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise APIError(413, f"request body exceeds {limit:,} bytes", "request_too_large")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise APIError(
            408,
            f"the request body did not arrive within {timeout_s:g} s",
            "request_timeout",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


def has_images(body: ChatCompletionRequest) -> bool:
    return any(isinstance(c, ImageContent) for m in body.messages if isinstance(m.content, list) for c in m.content)


def create_app(mg: MedGemma, config: ServeConfig = ServeConfig()) -> FastAPI:
    config.check()
    served = model_id(mg, config)
    names = {served, mg.backend.info.name}
    created = int(time.time())
    batcher: Batcher
    metrics = Metrics(lambda: batcher.queue_depth, lambda: batcher.running)
    batcher = Batcher(mg.backend, config.max_batch_size, config.batch_window_ms / 1000.0, on_batch=metrics.batch)
    admission = Admission(config.max_batch_size + config.max_queue)
    readers = Admission(config.max_body_readers)  # bodies being received: slow senders wait here, not in admission
    decoders = asyncio.Semaphore(config.max_decoders)  # requests decoding images at once (CPU and memory)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        batcher.stop()

    app = FastAPI(title="MedGemma toolkit server", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.model_id = batcher, metrics, served
    install_error_handlers(app)
    app.include_router(
        embedding_router(config)
    )  # MedSigLIP: /v1/embeddings, /v1/medgemma/zero-shot (serve/embeddings.py)
    app.add_middleware(ServeMiddleware, api_key=config.api_key, metrics=metrics, allow_hosts=config.allow_hosts)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": served, "queue_depth": batcher.queue_depth, "running": batcher.running}

    def model_card() -> dict[str, Any]:
        info = mg.backend.info
        return {
            "id": served,
            "object": "model",
            "created": created,
            "owned_by": "medgemma-toolkit",
            "medgemma": {
                "multimodal": info.multimodal,
                "image_size": info.image_size,
                "thinking": info.thinking,
                "preset": f"{mg.preset.name}@{mg.preset.version}",
                "backend": info.backend,
                "demo_model": mg.is_demo,
                "auth_required": bool(config.api_key),
            },
        }

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    def model(name: str) -> dict[str, Any]:
        if name not in names:
            raise APIError(404, f"model {name[:100]!r} not found; this server serves {served!r}", "model_not_found")
        return model_card()

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    def busy() -> APIError:
        metrics.count_rejected()
        return APIError(
            429,
            "server is busy: too many requests queued; retry shortly",
            "rate_limit_exceeded",
            headers={"Retry-After": str(batcher.retry_after_s())},
        )

    async def read_json(request: Request, model: type) -> Any:
        """Receive and validate a body. Admission comes after this, so clients that trickle their bodies in
        hold only a reader slot (bounded, and timed out), never a place in the queue."""
        if not readers.try_enter():
            raise busy()
        try:
            raw = await read_body(request, config.max_body_bytes, config.body_timeout_s)
        finally:
            readers.leave()
        # Off the event loop: a large body of tiny parts takes seconds to validate and would stall /health.
        return await run_in_threadpool(parse_body, raw, model, config.max_content_parts)

    @app.post("/v1/medgemma/preview")
    async def preview(request: Request) -> dict[str, Any]:
        """The exact image the model would receive for one image URL (what `medgemma preview` writes)."""
        body: PreviewRequest = await read_json(request, PreviewRequest)

        def render() -> dict[str, Any]:
            parts = ImageResolver(config, mg.image_size, body.window).parts(body.image_url.url)
            img = next(p.image for p in parts if isinstance(p, ImagePart))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            from ..imaging.manifest import for_records, image_manifest

            # What the model saw, in order (slices, slide patches); paths relative to the image root, no data: URIs.
            root = str(config.image_root) if config.image_root else None
            seen = [
                {**e, "source": None if str(e.get("source") or "").startswith(("data:", "/")) else e["source"]}
                for e in for_records(image_manifest(parts), root)
            ]
            return {
                "image": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
                "width": img.width,
                "height": img.height,
                "images": seen,
            }

        if not admission.try_enter():  # previews decode like chats do: the same admission and decoder turns
            raise busy()
        try:
            async with decoders:
                return await run_in_threadpool(render)
        finally:
            admission.leave()

    app.include_router(model_input_router(mg, config, admission, decoders, read_json, busy))

    @app.post("/v1/medgemma/localize")
    async def localize(request: Request) -> Response:
        """Boxes around the named objects in one 2D image (`medgemma localize`); one model call per object."""
        body: LocalizeRequest = await read_json(request, LocalizeRequest)
        if not admission.try_enter():
            raise busy()
        try:
            if body.model is not None and body.model not in names:
                raise APIError(
                    404,
                    f"model {body.model[:100]!r} not found; this server serves {served!r}",
                    "model_not_found",
                    "model",
                )
            async with decoders:
                plan = await run_in_threadpool(plan_localize, mg, body, config)
            jobs = [batcher.submit(r, config.request_timeout_s, announced=False, stream=False) for r in plan.requests]
            try:
                done = [await _collect(job, request) for job in jobs]
            except ClientGone:
                request.state.status_override = 499
                return Response(status_code=499)
            finally:
                for job in jobs:  # after a failure or a client gone, the other objects' work stops too
                    job.cancel()
            result = assemble(plan.size, plan.objects, done, served)
            log.info(
                "request_id=%s localize objects=%d boxes=%d unparsed=%d completion_tokens=%d",
                request.state.request_id,
                len(plan.objects),
                len(result.boxes),
                len(result.unparsed),
                sum(c.completion_tokens for c in done),
            )
            return JSONResponse(result.to_dict())
        finally:
            admission.leave()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body: ChatCompletionRequest = await read_json(request, ChatCompletionRequest)
        body, tool_ctx = prepare_tools(body)  # `tools` and tool turns as plain messages (serve/tools.py)
        if not admission.try_enter():
            raise busy()
        rid = request.state.request_id
        batcher.expect()
        announced, handed_off = True, False
        try:
            if body.model not in names:
                raise APIError(
                    404,
                    f"model {body.model[:100]!r} not found; this server serves {served!r}",
                    "model_not_found",
                    "model",
                )
            async with decoders if has_images(body) else contextlib.nullcontext():  # image decoding is admitted
                conv = await run_in_threadpool(to_generation_request, mg, body, config)
            if tool_ctx is not None:
                conv.request.tools = tool_ctx.spec
            if config.log_prompts:  # operator opt-in; never images or DICOM headers
                log.info(
                    "request_id=%s prompt_text=%r",
                    rid,
                    conv.request.prompt.messages[-1].text if conv.request.prompt.messages else conv.request.prompt.text,
                )
            job = batcher.submit(conv.request, config.request_timeout_s, stream=body.stream)
            announced = False
            meta = {
                "id": "chatcmpl-" + uuid.uuid4().hex,
                "created": int(time.time()),
                "model": served,
                "preset": conv.preset or f"{mg.preset.name}@{mg.preset.version}",
                "demo_model": mg.is_demo,
            }
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                handed_off = True
                progress = {"finished": False}

                def close() -> None:  # runs however the response ends, even if the stream never started
                    if not progress["finished"]:  # client went away: stop decoding for it
                        progress["finished"] = True
                        job.cancel()
                        metrics.count_cancelled()
                    admission.leave()

                return _EventStream(
                    _stream(job, meta, include_usage, conv, rid, progress, tool_ctx),
                    on_close=close,
                    media_type="text/event-stream",
                    headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
                )
            try:
                c = await _collect(job, request)
            except ClientGone:
                request.state.status_override = 499
                return Response(status_code=499)
            _log_done(rid, conv, job, c)
            return JSONResponse(tool_body(tool_ctx, meta, c))
        finally:
            if announced:
                batcher.unexpect()
            if not handed_off:
                admission.leave()

    async def _collect(job: Job, request: Request) -> Completion:
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    metrics.count_cancelled()
                    raise ClientGone() from None
                if job.timed_out and job.started_at is None:
                    job.cancel()  # still queued: the worker will skip it
                    raise _timeout() from None
                continue
            if kind == "delta":
                continue
            if kind == "error":
                raise value  # type: ignore[misc]
            if kind == "cancelled" or (kind == "done" and value.finish_reason == "cancelled"):
                metrics.count_cancelled()
                raise _timeout()
            return value  # type: ignore[return-value]

    def _timeout() -> APIError:
        return APIError(
            504,
            f"generation did not finish within the server's {config.request_timeout_s:g} s request timeout",
            "timeout",
        )

    async def _stream(
        job: Job,
        meta: dict[str, Any],
        include_usage: bool,
        conv: Converted,
        rid: str,
        progress: dict[str, bool],
        tool_ctx: ToolContext | None = None,
    ):
        """SSE events for one job. Cleanup (cancel, admission) lives in the response's `on_close`, which also
        runs when the client leaves before this generator starts."""
        state = stream_state(tool_ctx, meta)
        yield sse(delta_chunk(meta, {"role": "assistant", "content": ""}))
        while True:
            left = job.deadline - time.monotonic() + 1.0
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=max(0.1, left))
            except asyncio.TimeoutError:
                kind, value = "cancelled", None
            if kind == "delta":
                for chunk in state.feed(value):  # type: ignore[arg-type]
                    yield sse(chunk)
                continue
            progress["finished"] = True
            if kind == "done" and value.finish_reason != "cancelled":  # type: ignore[union-attr]
                for chunk in final_chunks(state, value, include_usage):  # type: ignore[arg-type]
                    yield sse(chunk)
                _log_done(rid, conv, job, value)  # type: ignore[arg-type]
            else:
                if kind != "error":
                    job.cancel()
                    metrics.count_cancelled()
                err = _timeout() if kind != "error" else from_exception(value)  # type: ignore[arg-type]
                yield sse({"error": {"message": err.message, "type": "server_error", "code": err.code}})
            break
        yield "data: [DONE]\n\n"

    def _log_done(rid: str, conv: Converted, job: Job, c: Completion) -> None:
        started = job.started_at or job.enqueued_at
        metrics.tokens(c.prompt_tokens, c.completion_tokens, started - job.enqueued_at)
        log.info(
            "request_id=%s images=%d prompt_chars=%d prompt_tokens=%d completion_tokens=%d batch=%d "
            "queue_ms=%.1f generate_ms=%.1f finish=%s",
            rid,
            conv.n_images,
            conv.prompt_text_chars,
            c.prompt_tokens,
            c.completion_tokens,
            job.batch_size,
            (started - job.enqueued_at) * 1000,
            (time.monotonic() - started) * 1000,
            c.finish_reason,
        )

    # Google's container API (Vertex predict): the same reader, gate, decoders, conversion and batcher as chat.
    app.include_router(
        vertex_router(mg, config, served, admission, decoders, batcher, read_json, busy, _collect, ClientGone)
    )
    return app
