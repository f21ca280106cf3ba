"""The container-compatible routes: `POST /predict` (and `$AIP_PREDICT_ROUTE`), `GET $AIP_HEALTH_ROUTE`.

Vertex AI sets AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE for a custom container; Google's MedGemma container serves
both (python/serving/serving_framework/server_gunicorn.py). Here each instance (`serve/vertex.py`) becomes a chat
request and takes the chat route's own path: the body reader (size, time, part-count limits), the admission gate,
the decoder turns, `to_generation_request` (image rules, allow-lists, context check) and the batcher. Every
failure answers in the container's error shape.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from ..api import MedGemma
from ..backends.base import Completion
from .batcher import Batcher, Job
from .config import ServeConfig
from .convert import to_generation_request
from .errors import APIError, from_exception
from .vertex import DEFAULT_MAX_TOKENS, envelope, error_body, prediction, split_instances, to_chat_request

log = logging.getLogger("medgemma_toolkit.serve")
PREDICT_PATH = "/predict"


class _Gate(Protocol):
    def try_enter(self) -> bool: ...
    def leave(self) -> None: ...


class PredictBody(BaseModel):
    """Any JSON object: read through the shared body reader, translated by `serve/vertex.py`."""

    model_config = ConfigDict(extra="allow")


def _error(e: BaseException) -> JSONResponse:
    err = from_exception(e)
    return JSONResponse(error_body(err.message, err.status), status_code=err.status, headers=err.headers)


def vertex_router(
    mg: MedGemma,
    config: ServeConfig,
    served: str,
    admission: _Gate,
    decoders: asyncio.Semaphore,
    batcher: Batcher,
    read_json: Callable[[Request, type], Awaitable[Any]],
    busy: Callable[[], APIError],
    collect: Callable[[Job, Request], Awaitable[Completion]],
    client_gone: type[Exception],
) -> APIRouter:
    router = APIRouter()

    async def run_one(chat: Any, request: Request) -> dict[str, Any]:
        async with decoders:  # image decoding is admitted, as in the chat route
            conv = await run_in_threadpool(to_generation_request, mg, chat, config)
        job = batcher.submit(conv.request, config.request_timeout_s, announced=False, stream=False)
        try:
            return prediction(await collect(job, request), served)
        finally:
            job.cancel()  # a no-op once done; stops the work after a failure or a client gone

    async def predict(request: Request) -> Response:
        try:
            raw: PredictBody = await read_json(request, PredictBody)
            instances, enveloped = split_instances(raw.model_extra or {})
            if len(instances) > config.max_batch_size:
                raise APIError(
                    400, f"instances: at most {config.max_batch_size} per request on this server", param="instances"
                )
            where = [f"instances[{k}]" if enveloped else "request" for k in range(len(instances))]
            cap = min(DEFAULT_MAX_TOKENS, config.max_tokens_limit)  # the container's default, within ours
            chats = [to_chat_request(inst, served, w, cap) for inst, w in zip(instances, where)]  # all checked first
            if not admission.try_enter():
                raise busy()
        except APIError as e:
            return _error(e)
        try:
            outcomes = await asyncio.gather(*(run_one(c, request) for c in chats), return_exceptions=True)
        finally:
            admission.leave()
        if any(isinstance(o, client_gone) for o in outcomes):
            request.state.status_override = 499
            return Response(status_code=499)
        if len(outcomes) == 1 and isinstance(outcomes[0], BaseException):
            return _error(outcomes[0])  # one instance: its failure is the request's, with its status
        results: list[dict[str, Any]] = []
        for o in outcomes:  # several: each failure in its place, the others answered (as the container does)
            if isinstance(o, BaseException):
                err = from_exception(o)
                results.append(error_body(err.message, err.status))
            else:
                results.append(o)
        log.info("request_id=%s vertex_predict instances=%d", request.state.request_id, len(chats))
        return JSONResponse(envelope(results, enveloped))

    def health() -> PlainTextResponse:
        return PlainTextResponse("ok")

    paths = {PREDICT_PATH, os.environ.get("AIP_PREDICT_ROUTE") or PREDICT_PATH}
    for path in sorted(paths):
        router.add_api_route(path, predict, methods=["POST"], include_in_schema=False)
    health_path = os.environ.get("AIP_HEALTH_ROUTE")
    if health_path and health_path != "/health":  # /health is the server's own (JSON, 200 when up)
        router.add_api_route(health_path, health, methods=["GET"], include_in_schema=False)
    return router
