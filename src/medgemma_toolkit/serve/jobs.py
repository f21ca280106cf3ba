"""Waiting for a batcher job from a route: the whole answer (`collect`) or SSE events (`sse_events`), and the
streaming response that always cleans up (`EventStream`).

A client that leaves stops its work: `collect` polls for the disconnect; a stream's `on_close` cancels the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..backends.base import Completion
from .batcher import Cancelled, Delta, Done, Failed, Job, JobEvent
from .errors import APIError, from_exception
from .responses import delta_chunk, final_chunks, sse, usage_of
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


async def merged(jobs: list[Job]) -> AsyncGenerator[tuple[int, JobEvent], None]:
    """(choice index, event) from several jobs as they come, until each has ended (`Done`/`Failed`/`Cancelled`); a
    job that outlives its deadline ends as `Cancelled`."""
    getters: dict[asyncio.Future[JobEvent], int] = {
        asyncio.ensure_future(j.events.get()): i for i, j in enumerate(jobs)
    }
    try:
        while getters:
            left = min(jobs[i].deadline for i in getters.values()) - time.monotonic() + 1.0
            ready, _ = await asyncio.wait(getters, timeout=max(0.1, left), return_when=asyncio.FIRST_COMPLETED)
            if not ready:
                i = min(getters.values(), key=lambda k: jobs[k].deadline)
                for f, k in list(getters.items()):
                    if k == i:
                        f.cancel()
                        del getters[f]
                yield i, Cancelled()
                continue
            for f in ready:
                i = getters.pop(f)
                event = f.result()
                if isinstance(event, Delta):
                    getters[asyncio.ensure_future(jobs[i].events.get())] = i
                yield i, event
    finally:
        for f in getters:
            f.cancel()


def at(index: int, chunk: dict[str, Any], logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`chunk` as choice `index`'s, carrying `logprobs` entries (OpenAI: `choices[].logprobs.content`)."""
    for choice in chunk.get("choices", []):
        choice["index"] = index
        if logprobs is not None:
            choice["logprobs"] = {"content": logprobs}
    return chunk


async def sse_events(
    jobs: list[Job],
    state: ServerState,
    meta: dict[str, Any],
    include_usage: bool,
    on_done: Callable[[list[Completion]], None],
    progress: dict[str, bool],
    tool_ctx: ToolContext | None = None,
) -> AsyncIterator[str]:
    """SSE events for one request's jobs (one per choice, `n`), chunks carrying their choice's index and, when asked,
    the log-probabilities of the tokens they hold; always ending with `data: [DONE]`. Cleanup (cancel, admission)
    lives in the response's `on_close`, which also runs when the client leaves before this generator starts."""
    streams = [stream_state(tool_ctx, meta) for _ in jobs]
    for i in range(len(jobs)):
        yield sse(at(i, delta_chunk(meta, {"role": "assistant", "content": ""})))
    pending: list[list[dict[str, Any]]] = [[] for _ in jobs]  # entries whose text is still held back
    sent = [0] * len(jobs)
    done: dict[int, Completion] = {}
    err: APIError | None = None
    events = merged(jobs)
    async for i, event in events:
        if isinstance(event, Delta):
            pending[i] += event.logprobs or []
            for chunk in streams[i].feed(event.text):
                lps, pending[i] = (pending[i] or None), []
                sent[i] += len(lps or [])
                yield sse(at(i, chunk, lps))
            continue
        try:
            if isinstance(event, Done) and event.completion.finish_reason != "cancelled":
                c = event.completion
                rest = None if c.logprobs is None else c.logprobs[sent[i] :]
                for chunk in final_chunks(streams[i], c, False):
                    yield sse(at(i, chunk, rest))
                    rest = None
                done[i] = c
                continue
            if not isinstance(event, Failed):
                state.metrics.count_cancelled()
            err = from_exception(event.error) if isinstance(event, Failed) else timeout_error(state)
        except Exception as e:
            log.error("stream failed while writing its answer: %s", type(e).__name__)
            err = from_exception(e)
        break
    await events.aclose()
    progress["finished"] = True
    if err is None and len(done) == len(jobs):
        completions = [done[i] for i in range(len(jobs))]
        if include_usage:
            yield sse(
                {
                    **{k: v for k, v in delta_chunk(meta, {}).items() if k != "choices"},
                    "choices": [],
                    "usage": usage_of(completions),
                }
            )
        on_done(completions)
    else:
        for j in jobs:  # one choice failed: the others stop too
            j.cancel()
        err = err or timeout_error(state)
        yield sse({"error": {"message": err.message, "type": "server_error", "code": err.code}})
    yield "data: [DONE]\n\n"
