"""The resumable batched generation loop shared by `medgemma eval` and `medgemma batch`.

Pending work is sorted by length (images first, then prompt length) so each batch pads little; requests (and their
images) are built one batch at a time so memory stays flat on long runs; every finished batch is handed to
`on_batch` at once, which appends and flushes it. A backend that refills its batches (transformers, greedy text) is
handed `REFILL_ROUNDS` batches' worth per call, so a kill loses at most that much unflushed work. On an
out-of-memory error the batch is halved and retried, one batch per call from then on (down to one request; an
out-of-memory error at one request is the user's to see).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..backends.base import Completion, GenerationRequest
from ..errors import BadInput
from ..runtime.memory import is_oom, release_memory

J = TypeVar("J")


@dataclass
class Outcome(Generic[J]):
    job: J
    completion: Completion | None  # None when the request could not be built
    error: str | None
    seconds: float  # this job's share of its batch's wall time


# A backend that refills its batches (`capabilities.refills`) is handed this many batches' worth of text requests per
# call, so its rows keep decoding across what would have been batch boundaries (records are then flushed per call).
REFILL_ROUNDS = 4

# `max_batch_size` for `LoadOptions` when eval and batch pick the batch: the backend chooses its own (transformers:
# 32 rows on a GPU; on a CPU 64 where their KV cache fits in a quarter of the free memory, else 32).
AUTO_BATCH = 0
AUTO_BATCH_CEILING = 64  # the largest batch `auto_batch_size` picks (scaled batch work is cut in units of it)
BATCH = 32  # the batch of a backend that does not pick its own


def auto_batch_size(backend: Any, images: bool = False) -> int:
    """The batch a backend decodes at once: with images on a CPU 8 (a CPU's out-of-memory is the kernel's killer,
    not an error to halve on); a transformers backend's own choice (`capabilities.max_batch_size` when loaded with
    `AUTO_BATCH`: 32 on a GPU, halved on out-of-memory; on a CPU 64 rows where memory allows, measured on the
    demo's eval, 256 MCQ items on 2 cores: 11.1 items/s at 64 vs 9.4 at 32 in bf16, as a decode step's fixed cost
    per layer is shared by more rows); else 32. A backend whose sequences join as others finish (llama.cpp) gets 4
    rounds of its parallel sequences per call, so its slots keep working instead of idling until a batch's longest
    answer ends."""
    caps = getattr(backend, "capabilities", None)
    if caps is not None and caps.continuous:
        return min(BATCH, 4 * max(1, caps.max_batch_size))
    device = backend.info.extra.get("device", "cpu")
    if images and not device.startswith("cuda"):
        return 8
    if caps is not None and caps.refills:  # the transformers backend, which sized its batch when it loaded
        return min(AUTO_BATCH_CEILING, caps.max_batch_size)
    return BATCH


def run_batches(
    backend: Any,
    jobs: Sequence[J],
    build: Callable[[J], GenerationRequest],
    on_batch: Callable[[list[Outcome[J]]], None],
    batch_size: int,
    sort_key: Callable[[J], Any],
    label: str = "items",
    progress: bool = True,
) -> float:
    """Generate for every job; return the wall seconds spent generating."""
    order = sorted(jobs, key=sort_key, reverse=True)  # longest first: an OOM shows up at once, not at 90%
    bar = _Progress(len(order), label, enabled=progress)
    total = 0.0
    pos = 0
    size = max(1, batch_size)
    caps = getattr(backend, "capabilities", None)
    refills = bool(caps is not None and caps.refills)  # given up after an out-of-memory error
    carry: tuple[J, GenerationRequest] | None = None  # the image job that ended the last refill chunk, built
    while pos < len(order):
        chunk = list(order[pos : pos + size])
        ready: list[tuple[J, GenerationRequest]] = []
        failed: list[Outcome[J]] = []
        for k, job in enumerate(chunk):
            if k == 0 and carry is not None:  # it is `order[pos]`: not built twice
                ready.append(carry)
                carry = None
            else:
                _build_into(job, build, ready, failed)
        if refills and caps is not None and size >= caps.max_batch_size > 1 and ready and not _images(ready):
            # A backend that refills its batch gets more text rows at once, up to the first one with images.
            for job in order[pos + size : pos + size * REFILL_ROUNDS]:
                built = len(ready)
                _build_into(job, build, ready, failed)
                if len(ready) > built and _images(ready[-1:]):
                    carry = ready.pop()  # it starts the next chunk, with images
                    break
                chunk.append(job)
        t0 = time.perf_counter()
        completions = (
            _generate_or_none(backend, [r for _, r in ready])
            if size > 1
            else (backend.generate([r for _, r in ready]) if ready else [])
        )
        if completions is None:  # out of memory, and the failed batch's tensors are unreachable by now
            ready.clear()
            release_memory()
            size //= 2
            refills, carry = False, None
            print(f"note: out of memory; batch size lowered to {size}", file=sys.stderr)
            continue
        secs = time.perf_counter() - t0
        total += secs
        share = secs / max(1, len(ready))
        outs = [Outcome(j, c, None, share) for (j, _), c in zip(ready, completions)] + failed
        on_batch(outs)
        pos += len(chunk)
        bar.advance(len(chunk))
    bar.close()
    return total


def _build_into(job: J, build: Callable[[J], GenerationRequest], ready: list, failed: list) -> None:
    """Build `job`'s request into `ready`, or its one-line error into `failed`."""
    try:
        ready.append((job, build(job)))
    except BadInput as e:
        failed.append(Outcome(job, None, str(e), 0.0))


def _images(ready: list[tuple[Any, GenerationRequest]]) -> bool:
    return any(r.prompt.all_images() for _, r in ready)


def _generate_or_none(backend: Any, requests: list[GenerationRequest]) -> list[Completion] | None:
    """The batch's completions, or None on out-of-memory. The memory is released by the caller, outside this
    function: freeing it inside the `except` block would free nothing, the exception's traceback still holding
    the failed forward pass's frames and tensors."""
    if not requests:
        return []
    try:
        return backend.generate(requests)
    except Exception as e:
        if not is_oom(e):
            raise
    return None


class _Progress:
    """A rich progress bar (items/s and ETA) on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self._p = None
        if not (enabled and sys.stderr.isatty() and total):
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.text import Text

        class Rate(TextColumn):
            def render(self, task: Any) -> Text:  # items per second over the run so far
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.2f} {label}/s" if speed else f"-- {label}/s")

        self._p = Progress(
            TextColumn("eval"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(""),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._p.start()
        self._task = self._p.add_task("eval", total=total)

    def advance(self, n: int) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
