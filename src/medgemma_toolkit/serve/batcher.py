"""Dynamic batching in front of a `Backend`: many HTTP requests, one model, one worker thread.

A backend with `capabilities.continuous` (llama.cpp) gets continuous batching instead: a request joins the running
batch between two decoding steps and leaves it when it finishes (`_loop_continuous`); the rest of this text is about
the batch-at-a-time loop the other backends use.

The model is not thread-safe, so exactly one thread calls `backend.generate`. Requests wait in a queue; the worker
takes the first, gathers those already waiting (and, for at most `window_s`, those announced as on their way by
`expect()`, or any that come while the previous batch had several requests), and runs them as one batch. A lone
client therefore never waits for the window, which keeps its latency close to a direct call. Deltas and results travel back to each request's event loop as
typed events (`Delta`, `Done`, `Failed`, `Cancelled`). Cancellation (client gone, timeout) is polled by the backend between decoding steps.
A batch that fails is retried, so one row never takes its batch-mates down: after an error, row by row (the bad
row fails alone, e.g. a prompt the backend refuses); after running out of accelerator memory, in halves, and a row
that cannot be retried gets a 503 with Retry-After. A retried row that had streamed text resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from ..backends.base import Backend, Completion, GenerationRequest
from ..runtime.memory import is_oom, release_memory
from .errors import APIError

log = logging.getLogger("medgemma_toolkit.serve")


@dataclass(frozen=True)
class Delta:
    """A piece of streamed text, with the log-probability entries of tokens decoded since the last piece (when the
    request asked for them; entries may run ahead of held-back text)."""

    text: str
    logprobs: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Done:
    """The job finished; `completion.finish_reason` is "cancelled" when it was stopped mid-generation."""

    completion: Completion


@dataclass(frozen=True)
class Failed:
    """The job failed; `error` is what the backend raised (or a 503 `APIError` after running out of memory)."""

    error: BaseException


@dataclass(frozen=True)
class Cancelled:
    """The job was cancelled or expired before it reached the model."""


JobEvent = Union[Delta, Done, Failed, Cancelled]


@dataclass
class Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() after which the job is abandoned
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    batch_size: int = 0
    stream: bool = True  # False: only the final result is wanted, so no per-token events cross threads
    sent_chars: int = 0  # streamed text its client already has; a retried row resumes after it
    produced_chars: int = 0  # streamed text the current attempt has produced
    lp_attempt: list[dict[str, Any]] = field(default_factory=list)  # log-probability entries of this attempt
    lp_sent: int = 0  # entries its client already has; a retry replays silently up to them

    def take_logprobs(self) -> list[dict[str, Any]] | None:
        """Entries produced since the last Delta (worker thread), or None when the request wants none."""
        if self.request.logprobs is None:
            return None
        new = self.lp_attempt[self.lp_sent :]
        self.lp_sent = max(self.lp_sent, len(self.lp_attempt))
        return new

    @property
    def resumable(self) -> bool:
        """Whether a retry would decode the same text again (greedy or seeded), so its stream can resume."""
        p = self.request.params
        return self.sent_chars == 0 or p.greedy or p.seed is not None

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def timed_out(self) -> bool:
        return time.monotonic() > self.deadline

    def is_cancelled(self) -> bool:
        return self.cancel_event.is_set() or self.timed_out

    def post(self, event: JobEvent) -> None:
        """Thread-safe: hand an event to the job's event loop (dropped if that loop has closed)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:
            pass


BatchHook = Callable[[int, float], None]  # (batch size, seconds) after each batch, for metrics


class Batcher:
    def __init__(
        self, backend: Backend, max_batch_size: int = 8, window_s: float = 0.01, on_batch: BatchHook | None = None
    ) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.on_batch = on_batch
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._arriving = 0  # requests being parsed that will be submitted soon
        self._running = 0
        self._stopped = False
        self._avg_batch_s = 1.0
        self._last_batch_size = 0
        # A backend that admits requests between decoding steps gets continuous batching instead of batches.
        self._session = backend.session() if backend.capabilities.continuous else None
        loop = self._loop if self._session is None else self._loop_continuous
        self._thread = threading.Thread(target=loop, name="medgemma-batcher", daemon=True)
        self._thread.start()

    # -- producer side (event loop threads) ---------------------------------------------------------------------
    def expect(self) -> None:
        """Announce a request that is being parsed, so a forming batch waits (briefly) for it."""
        with self._cond:
            self._arriving += 1

    def unexpect(self) -> None:
        with self._cond:
            self._arriving = max(0, self._arriving - 1)
            self._cond.notify_all()

    def submit(self, request: GenerationRequest, timeout_s: float, announced: bool = True, stream: bool = True) -> Job:
        job = Job(request, asyncio.get_running_loop(), time.monotonic() + timeout_s, stream=stream)
        request.cancelled = job.is_cancelled
        if stream and request.logprobs is not None:  # streamed with their text (`Delta.logprobs`)
            request.on_logprobs = job.lp_attempt.extend
        with self._cond:
            if announced:
                self._arriving = max(0, self._arriving - 1)
            self._queue.append(job)
            self._cond.notify_all()
        return job

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    def retry_after_s(self) -> int:
        """A hint for 429 responses: about one batch's duration."""
        return max(1, round(self._avg_batch_s))

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # -- worker side ------------------------------------------------------------------------------------------
    def _take_batch(self) -> list[Job]:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return []
            batch = [self._queue.popleft()]
            window_end = time.monotonic() + self.window_s
            while len(batch) < self.max_batch_size:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                left = window_end - time.monotonic()
                # Wait only for requests known to be on their way, or while clients are evidently concurrent
                # (the last batch had company: they re-send as soon as their answers arrive).
                if left <= 0 or (self._arriving <= 0 and self._last_batch_size <= 1):
                    break
                self._cond.wait(timeout=left)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            live = []
            for job in batch:
                if job.is_cancelled():  # gone or expired while waiting: never reaches the model
                    job.post(Cancelled())
                else:
                    live.append(job)
            if live:
                self._run(live)

    def _loop_continuous(self) -> None:
        """Continuous batching: between two decoding steps, queued requests join the running batch (up to
        `max_batch_size`) and finished ones have already left it, so nobody waits for a whole batch to end."""
        session = self._session
        assert session is not None
        live: set[int] = set()
        while True:
            with self._cond:
                while not self._queue and not session.busy and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                joining: list[Job] = []
                while self._queue and len(live) + len(joining) < self.max_batch_size:
                    joining.append(self._queue.popleft())
            for job in joining:
                self._join(session, job, live)
            if not session.busy:
                continue
            t0 = time.monotonic()
            try:
                session.step()
            except BaseException as e:
                log.error("decoding step failed: %s", type(e).__name__)
                session.abort(e.with_traceback(None))  # every request in the batch fails; the next ones run
            self._running = session.running
            if self.on_batch is not None and session.running:  # sequences per decoding step
                self.on_batch(session.running, time.monotonic() - t0)

    def _join(self, session: Any, job: Job, live: set[int]) -> None:
        if job.is_cancelled():  # gone or expired while waiting: never reaches the model
            job.post(Cancelled())
            return
        job.started_at, job.batch_size = time.monotonic(), len(live) + 1
        key = id(job)

        def on_delta(text: str) -> None:
            if job.stream:
                job.post(Delta(text, job.take_logprobs()))

        def on_done(result: Completion | BaseException) -> None:
            live.discard(key)
            if job.started_at is not None:  # the 429 hint: about one request's time in the batch
                self._avg_batch_s = 0.8 * self._avg_batch_s + 0.2 * (time.monotonic() - job.started_at)
            if isinstance(result, BaseException):
                job.post(Failed(result.with_traceback(None)))
            else:
                job.post(Done(result))

        live.add(key)
        try:
            session.add(job.request, on_delta, on_done)
        except BaseException as e:
            live.discard(key)
            job.post(Failed(e.with_traceback(None)))

    def _run(self, jobs: list[Job]) -> None:
        t0 = time.monotonic()
        for j in jobs:
            j.started_at, j.batch_size = t0, len(jobs)
        self._running = len(jobs)
        outcomes = self._attempt(jobs)
        # Book-keeping first, so that whoever receives a result sees the batch already counted.
        self._running = 0
        self._last_batch_size = len(jobs)
        secs = time.monotonic() - t0
        self._avg_batch_s = 0.8 * self._avg_batch_s + 0.2 * secs
        if self.on_batch is not None:
            self.on_batch(len(jobs), secs)
        for j, event in zip(jobs, outcomes):
            j.post(event)

    def _attempt(self, jobs: list[Job]) -> list[Done | Failed]:
        """`Done` or `Failed` per job. A failed batch is retried so that only the rows
        at fault fail: after an error, one row at a time; after running out of memory (the failed batch's tensors
        released and the cache emptied first), in halves, a row that fails alone getting a 503 with Retry-After.
        Rows whose streams already sent text are retried only if the retry repeats that text (`Job.resumable`)."""
        results, error = self._generate(jobs)
        if results is not None:
            return [Done(c) for c in results]
        oom = error is None
        if oom:
            release_memory()  # after `_generate` returned: nothing references the failed forward pass any more
        if len(jobs) == 1:
            if oom:
                log.warning("out of memory for a single request; answered 503")
            return [Failed(self._oom_error() if oom else error)]  # type: ignore[arg-type]
        if oom:
            log.warning("out of memory in a batch of %d; retrying in smaller batches", len(jobs))
        else:
            log.warning("batch of %d failed (%s); retrying its rows one by one", len(jobs), type(error).__name__)
        out: dict[int, Done | Failed] = {}
        retry: list[Job] = []
        for j in jobs:
            if j.is_cancelled():
                out[id(j)] = Done(Completion("", "cancelled", 0, 0))
            elif not j.resumable:
                out[id(j)] = Failed(self._oom_error() if oom else error)  # type: ignore[arg-type]
            else:
                retry.append(j)
        half = (len(retry) + 1) // 2
        parts = [retry[:half], retry[half:]] if oom else [[j] for j in retry]
        for part in parts:
            if part:
                for j, o in zip(part, self._attempt(part)):
                    out[id(j)] = o
        return [out[id(j)] for j in jobs]

    def _generate(self, jobs: list[Job]) -> tuple[list[Completion] | None, BaseException | None]:
        """(results, None), (None, error), or (None, None) for out of memory, whose exception is dropped here so
        that the frames (and GPU tensors) of the failed forward pass become unreachable."""

        def on_delta(i: int, text: str) -> None:
            job = jobs[i]
            if not job.stream:
                return
            job.produced_chars += len(text)
            new = job.produced_chars - job.sent_chars  # a retry replays silently up to what was already sent
            if new > 0:
                job.post(Delta(text[-new:], job.take_logprobs()))
                job.sent_chars = job.produced_chars

        for j in jobs:
            j.produced_chars = 0
            j.lp_attempt.clear()  # the same list object: the request's `on_logprobs` extends it
        try:
            streaming = any(j.stream for j in jobs)
            return self.backend.generate([j.request for j in jobs], on_delta=on_delta if streaming else None), None
        except BaseException as e:
            if is_oom(e):
                return None, None
            log.error("batch of %d failed: %s", len(jobs), type(e).__name__)
            return None, e.with_traceback(None)

    def _oom_error(self) -> APIError:
        return APIError(
            503,
            "the model ran out of accelerator memory for this request; retry shortly",
            "out_of_memory",
            headers={"Retry-After": str(self.retry_after_s())},
        )
