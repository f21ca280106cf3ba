"""Google's container API (`serve/vertex.py`): `POST /predict` (and `$AIP_PREDICT_ROUTE`), `GET $AIP_HEALTH_ROUTE`.

Vertex AI sets AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE for a custom container; Google's MedGemma container serves
both (python/serving/serving_framework/server_gunicorn.py). Each instance becomes a chat request and takes the chat
route's path: the gate (body reader, admission, decoder turns), `to_generation_request` and the batcher. Every
failure, the gate's own refusals included, answers in the container's error shape.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict

from ..convert import to_generation_request
from ..errors import APIError, from_exception
from ..jobs import ClientGone, collect
from ..state import ServerState
from ..vertex import DEFAULT_MAX_TOKENS, envelope, error_body, prediction, split_instances, to_chat_request
from . import gated_post

log = logging.getLogger("medgemma_toolkit.serve")
PREDICT_PATH = "/predict"
router = APIRouter()


class PredictBody(BaseModel):
    """Any JSON object: read through the gate's body reader, translated by `serve/vertex.py`."""

    model_config = ConfigDict(extra="allow")


def _error(e: BaseException) -> JSONResponse:
    err = from_exception(e)
    return JSONResponse(error_body(err.message, err.status), status_code=err.status, headers=err.headers)


async def _one(chat: Any, request: Request, state: ServerState) -> dict[str, Any]:
    if chat.n != 1:  # one prediction per instance: several choices would be silently dropped
        raise APIError(400, "n: one answer per instance on /predict", "unsupported_value", "n")
    conv = await state.gate.decode(to_generation_request, state.mg, chat, state.config)
    job = state.batcher.submit(conv.request, state.config.request_timeout_s, announced=False, stream=False)
    try:
        return prediction(await collect(job, request, state), state.served)
    finally:
        job.cancel()  # a no-op once done; stops the work after a failure or a client gone


async def predict(request: Request, body: PredictBody, state: ServerState) -> Response:
    try:
        instances, enveloped = split_instances(body.model_extra or {})
        if len(instances) > state.config.max_batch_size:
            raise APIError(
                400, f"instances: at most {state.config.max_batch_size} per request on this server", param="instances"
            )
        where = [f"instances[{k}]" if enveloped else "request" for k in range(len(instances))]
        cap = min(DEFAULT_MAX_TOKENS, state.config.max_tokens_limit)  # the container's default, within ours
        chats = [to_chat_request(inst, state.served, w, cap) for inst, w in zip(instances, where)]  # checked first
    except APIError as e:
        return _error(e)
    outcomes = await asyncio.gather(*(_one(c, request, state) for c in chats), return_exceptions=True)
    if any(isinstance(o, ClientGone) for o in outcomes):
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


for _path in sorted({PREDICT_PATH, os.environ.get("AIP_PREDICT_ROUTE") or PREDICT_PATH}):
    gated_post(router, _path, PredictBody, on_error=_error, include_in_schema=False)(predict)

_health_path = os.environ.get("AIP_HEALTH_ROUTE")
if _health_path and _health_path != "/health":  # /health is the server's own (JSON, 200 when up)

    @router.get(_health_path, include_in_schema=False)
    def container_health() -> PlainTextResponse:
        return PlainTextResponse("ok")
