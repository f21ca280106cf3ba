"""The one gate every POST request passes: body readers, admission (queue + running), image decoders.

Why one: each limit protects memory or CPU only if no route can skip it. Before, admission was written three times
and a route that forgot one rule (the JSON-only check, the decoder turns, the reader cap) reopened a closed hole.
Routes never touch these counters themselves: `routes.gated_post` reads the body through `Gate.read`, holds an
admission `Ticket` for the handler's whole run, and the handler decodes images only through `Gate.decode`.

Order for one request: a reader slot (bounded, timed out) while its body arrives, the media-type check before any
byte is read, parsing off the event loop, then an admission slot (429 past `max_batch_size + max_queue`), then a
decoder turn for image work (at most `max_decoders` requests decode at once; the others wait, admitted).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from .config import ServeConfig
from .errors import APIError
from .metrics import Metrics
from .middleware import is_json
from .schemas import RawBody, parse_body

# The request a gated handler serves (set by `routes.gated_post`), and the event its image work watches: set when
# that client disconnects, so a DICOMweb fetch or a long decode stops instead of finishing for nobody.
CURRENT_REQUEST: ContextVar[Request | None] = ContextVar("medgemma_request", default=None)
CLIENT_GONE: ContextVar[threading.Event | None] = ContextVar("medgemma_client_gone", default=None)
T = TypeVar("T")
B = TypeVar("B", bound=BaseModel)
JSON = "application/json"


class Counter:
    """Requests inside one stage; beyond `cap`, `try_enter` says no (the caller answers 429)."""

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


class Ticket:
    """One admitted request. Released when its handler returns, unless handed to a streaming response, which then
    releases it when the stream ends (`release` is idempotent, so both paths are safe)."""

    def __init__(self, admission: Counter) -> None:
        self._admission = admission
        self._held = True
        self._extra = 0  # further slots held (a request's `n` choices each hold one)
        self.handed_off = False

    def extend(self, k: int, busy: Callable[[], Exception]) -> None:
        """Hold `k` more slots, or none and raise `busy()` (a 429) when the server cannot admit that many."""
        taken = 0
        while taken < k and self._admission.try_enter():
            taken += 1
        if taken < k:
            for _ in range(taken):
                self._admission.leave()
            raise busy()
        self._extra += k

    def hand_off(self) -> Callable[[], None]:
        """For a streaming response: the release to call when it closes."""
        self.handed_off = True
        return self.release

    def release(self) -> None:
        if self._held:
            self._held = False
            for _ in range(1 + self._extra):
                self._admission.leave()


async def read_body(request: Request, limit: int, timeout_s: float = 60.0) -> bytes:
    """The whole body, at most `limit` bytes counted as they arrive (a declared Content-Length is only an early
    refusal), within `timeout_s` (a client trickling it in gets 408)."""
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


class Gate:
    """The server's limits on requests in flight, shared by every route."""

    def __init__(self, config: ServeConfig, metrics: Metrics, retry_after: Callable[[], int]) -> None:
        self.config = config
        self.metrics = metrics
        self.retry_after = retry_after
        self.readers = Counter(config.max_body_readers)  # bodies being received: slow senders wait here
        self.admission = Counter(config.max_batch_size + config.max_queue)  # parsed, queued or running
        self.decoders = asyncio.Semaphore(config.max_decoders)  # requests decoding images at once
        self.decoding = 0  # requests holding a decoder turn now (reported by /health)

    def busy(self) -> APIError:
        self.metrics.count_rejected()
        return APIError(
            429,
            "server is busy: too many requests queued; retry shortly",
            "rate_limit_exceeded",
            headers={"Retry-After": str(self.retry_after())},
        )

    async def read(self, request: Request, schema: type[B], media_type: str = JSON) -> B:
        """The validated body. The media type is checked before anything is read (a cross-site form or
        `text/plain` fetch cannot send JSON without a CORS preflight, which we never grant); the reader slot is
        held only while bytes arrive, so trickling clients never hold a place in the queue."""
        ctype = request.headers.get("content-type", "")
        ok = is_json(ctype) if media_type == JSON else ctype.split(";", 1)[0].strip().lower() == media_type
        if not ok:
            want = "JSON sent as 'Content-Type: application/json'" if media_type == JSON else repr(media_type)
            raise APIError(415, f"request body must be {want}", "unsupported_media_type")
        if not self.readers.try_enter():
            raise self.busy()
        try:
            raw = await read_body(request, self.config.max_body_bytes, self.config.body_timeout_s)
        finally:
            self.readers.leave()
        if schema is RawBody:  # the route parses it (e.g. multipart): counted and capped above all the same
            return RawBody(data=raw, content_type=ctype)  # type: ignore[return-value]
        # Off the event loop: a large body of tiny parts takes seconds to validate and would stall /health.
        return await run_in_threadpool(parse_body, raw, schema, self.config.max_content_parts)

    def admit(self) -> Ticket:
        if not self.admission.try_enter():
            raise self.busy()
        return Ticket(self.admission)

    async def decode(self, fn: Callable[..., T], *args: Any) -> T:
        """Run image work (`fn(*args)`) in a worker thread during one of the `max_decoders` turns. If the client
        disconnects meanwhile, `CLIENT_GONE` (which the work's `DecodeBudget` holds) is set and the work stops at
        its next image, slice or fetched chunk."""
        gone = threading.Event()
        token = CLIENT_GONE.set(gone)  # the worker thread runs in a copy of this context
        request = CURRENT_REQUEST.get()
        watcher = asyncio.create_task(_watch(request, gone)) if request is not None else None
        try:
            async with self.decoders:
                self.decoding += 1
                try:
                    return await run_in_threadpool(fn, *args)
                finally:
                    self.decoding -= 1
        finally:
            CLIENT_GONE.reset(token)
            if watcher is not None:
                watcher.cancel()

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run work that decodes no image (`fn(*args)`) in a worker thread, off the event loop."""
        return await run_in_threadpool(fn, *args)


async def _watch(request: Request, gone: threading.Event, every_s: float = 0.25) -> None:
    """Set `gone` once the client has disconnected (polled: ASGI tells us only when we ask)."""
    while not gone.is_set():
        await asyncio.sleep(every_s)
        if await request.is_disconnected():
            gone.set()
