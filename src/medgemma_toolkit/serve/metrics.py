"""Prometheus metrics for `/metrics`, through `prometheus_client` (one registry per app, so two servers in one
process, as in the tests, keep their own counts)."""

from __future__ import annotations

from collections.abc import Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text exposition format


class Metrics:
    """Counters and histograms the server updates; `render()` is the `/metrics` body."""

    def __init__(self, queue_depth: Callable[[], int], running: Callable[[], int]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "medgemma_requests", "HTTP requests by path and status.", ["path", "status"], registry=r
        )
        self._latency = Histogram(
            "medgemma_request_latency_seconds",
            "Chat completion latency (successful requests).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._queue_wait = Histogram(
            "medgemma_queue_wait_seconds",
            "Time from admission to the start of generation.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._batch_size = Histogram(
            "medgemma_batch_size", "Requests per backend.generate call.", buckets=BATCH_BUCKETS, registry=r
        )
        Gauge("medgemma_queue_depth", "Requests waiting for a batch.", registry=r).set_function(queue_depth)
        Gauge("medgemma_running", "Requests in the batch being generated.", registry=r).set_function(running)
        self._prompt_tokens = Counter("medgemma_prompt_tokens", "Prompt tokens processed.", registry=r)
        self._completion_tokens = Counter("medgemma_completion_tokens", "Tokens generated.", registry=r)
        self._cancelled = Counter(
            "medgemma_requests_cancelled", "Generations stopped because the client left or timed out.", registry=r
        )
        self._rejected = Counter("medgemma_requests_rejected", "Requests refused with 429 (queue full).", registry=r)

    def request_done(self, path: str, status: int, seconds: float | None = None) -> None:
        self._requests.labels(path=path, status=str(status)).inc()
        if seconds is not None and path == "/v1/chat/completions" and status == 200:
            self._latency.observe(seconds)

    def tokens(self, prompt: int, completion: int, queue_wait_s: float) -> None:
        self._prompt_tokens.inc(prompt)
        self._completion_tokens.inc(completion)
        self._queue_wait.observe(queue_wait_s)

    def batch(self, size: int, _seconds: float) -> None:
        self._batch_size.observe(size)

    def count_cancelled(self) -> None:
        self._cancelled.inc()

    def count_rejected(self) -> None:
        self._rejected.inc()

    def render(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode("utf-8")
