"""Waiting for a batcher job from a route: the whole answer (`collect`) or SSE events (`sse_events`), and the
streaming response that always cleans up (`EventStream`).

A client that leaves stops its work: `collect` polls for the disconnect; a stream's `on_close` cancels the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..backends.base import Completion
from .batcher import Cancelled, Delta, Done, Failed, Job, JobEvent
from .errors import APIError, from_exception
from .responses import delta_chunk, final_chunks, sse
from .state import ServerState
from .tools import ToolContext, stream_state

log = logging.getLogger("medgemma_toolkit.serve")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class EventStream(StreamingResponse):
    """A streaming response that always runs `on_close` once it ends, normally or not."""

    def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def timeout_error(state: ServerState) -> APIError:
    return APIError(
        504,
        f"generation did not finish within the server's {state.config.request_timeout_s:g} s request timeout",
        "timeout",
    )


async def collect(job: Job, request: Request, state: ServerState) -> Completion:
    """The finished completion; raises `ClientGone` when the client left (its job cancelled), 504 on timeout."""
    while True:
        try:
            event: JobEvent = await asyncio.wait_for(job.events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                state.metrics.count_cancelled()
                raise ClientGone() from None
            if job.timed_out and job.started_at is None:
                job.cancel()  # still queued: the worker will skip it
                raise timeout_error(state) from None
            continue
        if isinstance(event, Delta):
            continue
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, Cancelled) or event.completion.finish_reason == "cancelled":
            state.metrics.count_cancelled()
            raise timeout_error(state)
        return event.completion


async def sse_events(
    job: Job,
    state: ServerState,
    meta: dict[str, Any],
    include_usage: bool,
    on_done: Callable[[Completion], None],
    progress: dict[str, bool],
    tool_ctx: ToolContext | None = None,
) -> AsyncIterator[str]:
    """SSE events for one job, always ending with `data: [DONE]`. Cleanup (cancel, admission) lives in the
    response's `on_close`, which also runs when the client leaves before this generator starts."""
    stream = stream_state(tool_ctx, meta)
    yield sse(delta_chunk(meta, {"role": "assistant", "content": ""}))
    while True:
        left = job.deadline - time.monotonic() + 1.0
        event: JobEvent
        try:
            event = await asyncio.wait_for(job.events.get(), timeout=max(0.1, left))
        except asyncio.TimeoutError:
            event = Cancelled()
        if isinstance(event, Delta):
            for chunk in stream.feed(event.text):
                yield sse(chunk)
            continue
        progress["finished"] = True
        try:
            if isinstance(event, Done) and event.completion.finish_reason != "cancelled":
                for chunk in final_chunks(stream, event.completion, include_usage):
                    yield sse(chunk)
                on_done(event.completion)
                break
            if not isinstance(event, Failed):
                job.cancel()
                state.metrics.count_cancelled()
            err = from_exception(event.error) if isinstance(event, Failed) else timeout_error(state)
        except Exception as e:
            log.error("stream failed while writing its answer: %s", type(e).__name__)
            err = from_exception(e)
        yield sse({"error": {"message": err.message, "type": "server_error", "code": err.code}})
        break
    yield "data: [DONE]\n\n"
