"""`POST /v1/completions`: OpenAI's legacy text completions (text in, text out, whole or streamed), for base
checkpoints and clients that render their own prompt. The prompt is sent as is, no chat template."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...backends.base import GenerationRequest
from ...core.messages import Prompt
from ...core.options import SamplingParams
from ..batcher import Cancelled, Delta, Done, Failed, Job
from ..errors import APIError, from_exception
from ..jobs import ClientGone, EventStream, collect, timeout_error
from ..responses import finish_reason, sse, usage
from ..schemas import refuse_unsupported
from ..state import ServerState
from . import gated_post

router = APIRouter()


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1)  # OpenAI's default for this endpoint
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    echo: bool = False

    @model_validator(mode="before")
    @classmethod
    def refuse_unsupported_parameters(cls, data: Any) -> Any:
        data = refuse_unsupported(data)
        if isinstance(data, dict):
            for name, neutral in (("suffix", None), ("best_of", 1), ("logprobs", None)):
                if data.get(name) is not None and data.get(name) != neutral:
                    raise APIError(400, f"{name}: not supported by this server", "unsupported_parameter", name)
        return data

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise APIError(400, "prompt: one prompt per request", "unsupported_value", "prompt")
        return self.prompt[0]


def _request(body: CompletionRequest, state: ServerState) -> GenerationRequest:
    if body.echo:
        raise APIError(400, "echo: not supported by this server", "unsupported_parameter", "echo")
    if body.max_tokens > state.config.max_tokens_limit:
        raise APIError(400, f"max_tokens: at most {state.config.max_tokens_limit}", "invalid_value", "max_tokens")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    params = SamplingParams(
        max_new_tokens=body.max_tokens,
        temperature=body.temperature if body.temperature is not None else 0.0,
        top_p=body.top_p if body.top_p is not None else 1.0,
        seed=body.seed,
        stop=tuple(s for s in stops if s),
    )
    return GenerationRequest(Prompt(text=body.text()), params)


@gated_post(router, "/v1/completions", CompletionRequest)
async def completions(request: Request, body: CompletionRequest, state: ServerState) -> Response:
    state.check_model(body.model)
    req = _request(body, state)
    job = state.batcher.submit(req, state.config.request_timeout_s, announced=False, stream=body.stream)
    meta = {"id": "cmpl-" + uuid.uuid4().hex, "created": int(time.time()), "model": state.served}
    if body.stream:
        release = request.state.ticket.hand_off()
        progress = {"finished": False}

        def close() -> None:
            if not progress["finished"]:
                progress["finished"] = True
                job.cancel()
            release()

        return EventStream(
            _events(job, state, meta, progress),
            on_close=close,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    try:
        c = await collect(job, request, state)
    except ClientGone:
        request.state.status_override = 499
        return Response(status_code=499)
    choice = {"index": 0, "text": c.text, "finish_reason": finish_reason(c), "logprobs": None}
    return JSONResponse({**_head(meta), "choices": [choice], "usage": usage(c)})


def _head(meta: dict[str, Any]) -> dict[str, Any]:
    return {"id": meta["id"], "object": "text_completion", "created": meta["created"], "model": meta["model"]}


def _chunk(meta: dict[str, Any], text: str, finish: str | None) -> dict[str, Any]:
    return {**_head(meta), "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


async def _events(job: Job, state: ServerState, meta: dict[str, Any], progress: dict[str, bool]) -> AsyncIterator[str]:
    """`text_completion` chunks as text decodes, then the finish reason; an error event if decoding fails."""
    while True:
        try:
            event = await asyncio.wait_for(job.events.get(), timeout=max(0.1, job.deadline - time.monotonic() + 1.0))
        except asyncio.TimeoutError:
            event = Cancelled()
        if isinstance(event, Delta):
            yield sse(_chunk(meta, event.text, None))
            continue
        progress["finished"] = True
        if isinstance(event, Done) and event.completion.finish_reason != "cancelled":
            yield sse(_chunk(meta, "", finish_reason(event.completion)))
        else:
            if not isinstance(event, Failed):
                job.cancel()
            err = from_exception(event.error) if isinstance(event, Failed) else timeout_error(state)
            yield sse({"error": {"message": err.message, "type": "server_error", "code": err.code}})
        break
    yield "data: [DONE]\n\n"
