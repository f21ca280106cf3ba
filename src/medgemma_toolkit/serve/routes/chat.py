"""`POST /v1/chat/completions`: OpenAI's chat completions, whole or streamed (SSE), with tools and images."""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ...backends.base import Completion
from ..batcher import Job
from ..convert import Converted, choices, to_generation_request
from ..jobs import ClientGone, EventStream, collect, sse_events
from ..responses import usage_of
from ..schemas import ChatCompletionRequest, ImageContent
from ..state import ServerState
from ..tools import body as tool_body
from ..tools import prepare as prepare_tools
from . import gated_post

log = logging.getLogger("medgemma_toolkit.serve")
router = APIRouter()


def has_images(body: ChatCompletionRequest) -> bool:
    return any(isinstance(c, ImageContent) for m in body.messages if isinstance(m.content, list) for c in m.content)


@gated_post(router, "/v1/chat/completions", ChatCompletionRequest)
async def chat(request: Request, body: ChatCompletionRequest, state: ServerState) -> Response:
    body, tool_ctx = prepare_tools(body)  # `tools` and tool turns as plain messages (serve/tools.py)
    rid = request.state.request_id
    mg, config, batcher = state.mg, state.config, state.batcher
    batcher.expect()
    announced = True
    try:
        state.check_model(body.model)
        work = state.gate.decode if has_images(body) else state.gate.offload  # images take a decoder turn
        conv = await work(to_generation_request, mg, body, config)
        if tool_ctx is not None:
            conv.request.tools = tool_ctx.spec
        if config.log_prompts:  # operator opt-in; never images or DICOM headers
            msgs = conv.request.prompt.messages
            log.info("request_id=%s prompt_text=%r", rid, msgs[-1].text if msgs else conv.request.prompt.text)
        if body.n > 1:  # each extra choice holds an admission slot, as a request of its own would
            request.state.ticket.extend(body.n - 1, state.gate.busy)
        reqs = choices(conv.request, body.n)
        jobs = [batcher.submit(conv.request, config.request_timeout_s, stream=body.stream)]
        announced = False
        # The other choices join the same queue at once, so the batcher decodes them with the first (n rows).
        jobs += [batcher.submit(r, config.request_timeout_s, announced=False, stream=body.stream) for r in reqs[1:]]
    finally:
        if announced:
            batcher.unexpect()
    meta = {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "created": int(time.time()),
        "model": state.served,
        "preset": conv.preset or f"{mg.preset.name}@{mg.preset.version}",
        "demo_model": mg.is_demo,
    }
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        release = request.state.ticket.hand_off()
        progress = {"finished": False}

        def close() -> None:  # runs however the response ends, even if the stream never started
            if not progress["finished"]:  # client went away: stop decoding for it
                progress["finished"] = True
                for job in jobs:
                    job.cancel()
                state.metrics.count_cancelled()
            release()

        def done(cs: list[Completion]) -> None:
            for job, c in zip(jobs, cs):
                log_done(state, rid, conv, job, c)

        return EventStream(
            sse_events(jobs, state, meta, include_usage, done, progress, tool_ctx),
            on_close=close,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    try:
        cs = [await collect(job, request, state) for job in jobs]
    except ClientGone:
        request.state.status_override = 499
        return Response(status_code=499)
    finally:
        for job in jobs:  # after a failure or a client gone, the other choices stop too (no-op once finished)
            job.cancel()
    for job, c in zip(jobs, cs):
        log_done(state, rid, conv, job, c)
    out = tool_body(tool_ctx, meta, cs[0])
    for i, c in enumerate(cs[1:], start=1):
        out["choices"].append({**tool_body(tool_ctx, meta, c)["choices"][0], "index": i})
    out["usage"] = usage_of(cs)
    if conv.sr is not None:  # `medgemma.sr`: built in memory, returned, never stored or logged (n is 1 here)
        out["medgemma"]["sr"] = await state.gate.offload(conv.sr.field, mg, cs[0], meta["preset"])
    return JSONResponse(out)


def log_done(state: ServerState, rid: str, conv: Converted, job: Job, c: Completion) -> None:
    started = job.started_at or job.enqueued_at
    state.metrics.tokens(c.prompt_tokens, c.completion_tokens, started - job.enqueued_at)
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
