"""Prometheus text-format metrics, kept in-process (a handful of series does not need a client library)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.total += 1
        self.sum += v

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {self.sum:.6f}", f"{name}_count{lab} {self.total}"]
        return out


class Metrics:
    """Counters and histograms the server updates; `render()` is the `/metrics` body."""

    def __init__(self, queue_depth: Callable[[], int], running: Callable[[], int]) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.queue_wait = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0
        self.rejected = 0
        self._queue_depth = queue_depth
        self._running = running

    def request_done(self, path: str, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            if seconds is not None and path == "/v1/chat/completions" and status == 200:
                self.latency.observe(seconds)

    def tokens(self, prompt: int, completion: int, queue_wait_s: float) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.queue_wait.observe(queue_wait_s)

    def batch(self, size: int, _seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(size)

    def count_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def count_rejected(self) -> None:
        with self._lock:
            self.rejected += 1

    def render(self) -> str:
        with self._lock:
            out = ["# HELP medgemma_requests_total HTTP requests by path and status.",
                   "# TYPE medgemma_requests_total counter"]
            for (path, status), n in sorted(self.requests.items()):
                out.append(f'medgemma_requests_total{{path="{path}",status="{status}"}} {n}')
            out += ["# HELP medgemma_request_latency_seconds Chat completion latency (successful requests).",
                    "# TYPE medgemma_request_latency_seconds histogram"]
            out += self.latency.lines("medgemma_request_latency_seconds")
            out += ["# HELP medgemma_queue_wait_seconds Time from admission to the start of generation.",
                    "# TYPE medgemma_queue_wait_seconds histogram"]
            out += self.queue_wait.lines("medgemma_queue_wait_seconds")
            out += ["# HELP medgemma_batch_size Requests per backend.generate call.",
                    "# TYPE medgemma_batch_size histogram"]
            out += self.batch_size.lines("medgemma_batch_size")
            out += [
                "# HELP medgemma_queue_depth Requests waiting for a batch.", "# TYPE medgemma_queue_depth gauge",
                f"medgemma_queue_depth {self._queue_depth()}",
                "# HELP medgemma_running Requests in the batch being generated.", "# TYPE medgemma_running gauge",
                f"medgemma_running {self._running()}",
                "# HELP medgemma_prompt_tokens_total Prompt tokens processed.",
                "# TYPE medgemma_prompt_tokens_total counter", f"medgemma_prompt_tokens_total {self.prompt_tokens}",
                "# HELP medgemma_completion_tokens_total Tokens generated.",
                "# TYPE medgemma_completion_tokens_total counter",
                f"medgemma_completion_tokens_total {self.completion_tokens}",
                "# HELP medgemma_requests_cancelled_total Generations stopped because the client left or timed out.",
                "# TYPE medgemma_requests_cancelled_total counter", f"medgemma_requests_cancelled_total {self.cancelled}",
                "# HELP medgemma_requests_rejected_total Requests refused with 429 (queue full).",
                "# TYPE medgemma_requests_rejected_total counter", f"medgemma_requests_rejected_total {self.rejected}",
            ]
        return "\n".join(out) + "\n"
