"""`POST /v1/completions`: OpenAI's legacy text completions (text in, text out, whole or streamed), for base
checkpoints and clients that render their own prompt. The prompt is sent as is, no chat template."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...backends.base import GenerationRequest
from ...backends.logprobs import legacy
from ...core.messages import Prompt
from ...core.options import SamplingParams
from ..batcher import Delta, Done, Failed, Job
from ..convert import check_n, choices
from ..errors import APIError, from_exception
from ..jobs import ClientGone, EventStream, collect, merged, timeout_error
from ..responses import finish_reason, sse, usage_of
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
    n: int = Field(default=1, ge=1)
    stream: bool = False
    echo: bool = False
    # The legacy form: how many alternatives per token (0: the chosen token's only); OpenAI allows at most 5.
    logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="before")
    @classmethod
    def refuse_unsupported_parameters(cls, data: Any) -> Any:
        data = refuse_unsupported(data)
        if isinstance(data, dict):
            for name, neutral in (("suffix", None), ("best_of", 1)):
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
    req = GenerationRequest(Prompt(text=body.text()), params)
    if body.logprobs is not None:
        if not state.mg.backend.capabilities.logprobs:
            raise APIError(
                400,
                f"logprobs: not supported by the {state.mg.backend.info.backend} backend",
                "unsupported_parameter",
                "logprobs",
            )
        req.logprobs = body.logprobs
    return req


@gated_post(router, "/v1/completions", CompletionRequest)
async def completions(request: Request, body: CompletionRequest, state: ServerState) -> Response:
    state.check_model(body.model)
    check_n(body.n, state.config)
    reqs = choices(_request(body, state), body.n)
    if body.n > 1:  # each extra choice holds an admission slot, as a request of its own would
        request.state.ticket.extend(body.n - 1, state.gate.busy)
    timeout = state.config.request_timeout_s
    # All choices join the queue at once: the batcher decodes them together (n rows).
    jobs = [state.batcher.submit(r, timeout, announced=False, stream=body.stream) for r in reqs]
    meta = {"id": "cmpl-" + uuid.uuid4().hex, "created": int(time.time()), "model": state.served}
    if body.stream:
        release = request.state.ticket.hand_off()
        progress = {"finished": False}

        def close() -> None:
            if not progress["finished"]:
                progress["finished"] = True
                for job in jobs:
                    job.cancel()
            release()

        return EventStream(
            _events(jobs, state, meta, progress),
            on_close=close,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    try:
        cs = [await collect(job, request, state) for job in jobs]
    except ClientGone:
        request.state.status_override = 499
        return Response(status_code=499)
    finally:
        for job in jobs:  # after a failure or a client gone, the other choices stop too
            job.cancel()
    out = [
        {"index": i, "text": c.text, "finish_reason": finish_reason(c), "logprobs": _legacy(c.logprobs)}
        for i, c in enumerate(cs)
    ]
    return JSONResponse({**_head(meta), "choices": out, "usage": usage_of(cs)})


def _legacy(entries: list[dict[str, Any]] | None, offset: int = 0) -> dict[str, Any] | None:
    return None if entries is None else legacy(entries, offset)


def _head(meta: dict[str, Any]) -> dict[str, Any]:
    return {"id": meta["id"], "object": "text_completion", "created": meta["created"], "model": meta["model"]}


def _chunk(meta: dict[str, Any], i: int, text: str, finish: str | None, lps: Any = None) -> dict[str, Any]:
    return {**_head(meta), "choices": [{"index": i, "text": text, "finish_reason": finish, "logprobs": lps}]}


async def _events(
    jobs: list[Job], state: ServerState, meta: dict[str, Any], progress: dict[str, bool]
) -> AsyncIterator[str]:
    """`text_completion` chunks as text decodes (each with its choice's index and, when asked, the legacy
    log-probabilities of its tokens), then each finish reason; an error event if decoding fails."""
    sent = [0] * len(jobs)  # log-probability entries sent per choice
    chars = [0] * len(jobs)  # text sent per choice: the next entries' `text_offset`
    ended = 0
    events = merged(jobs)
    async for i, event in events:
        if isinstance(event, Delta):
            lps = None
            if event.logprobs is not None:
                lps = legacy(event.logprobs, chars[i])
                sent[i] += len(event.logprobs)
            chars[i] += len(event.text)
            yield sse(_chunk(meta, i, event.text, None, lps))
            continue
        if isinstance(event, Done) and event.completion.finish_reason != "cancelled":
            c = event.completion
            rest = None if c.logprobs is None else legacy(c.logprobs[sent[i] :], chars[i])
            yield sse(_chunk(meta, i, "", finish_reason(c), rest))
            ended += 1
            if ended < len(jobs):
                continue
            break
        for job in jobs:
            job.cancel()
        err = from_exception(event.error) if isinstance(event, Failed) else timeout_error(state)
        yield sse({"error": {"message": err.message, "type": "server_error", "code": err.code}})
        break
    await events.aclose()
    progress["finished"] = True
    yield "data: [DONE]\n\n"
