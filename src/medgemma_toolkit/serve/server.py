"""Run the app under uvicorn with the toolkit's logging (one line per request, no bodies)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
from typing import Any

from ..api import MedGemma
from ..errors import BadInput
from .config import ServeConfig


def setup_logging() -> None:
    log = logging.getLogger("medgemma_toolkit.serve")
    log.setLevel(logging.INFO)
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s serve: %(message)s"))
        log.addHandler(h)
        log.propagate = False


def check_port_free(host: str, port: int) -> None:
    """Fail with one line before the model loads, rather than after, when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise BadInput(f"port {port} on {host} is already in use") from None
            raise BadInput(f"cannot bind to {host}:{port} ({e.strerror})") from None


def header_timeout_protocol(timeout_s: float) -> type:
    """uvicorn's HTTP protocol, closing a connection whose request headers are not complete `timeout_s` after it
    opened or after its previous response (uvicorn has no such timeout: a client sending a header a byte at a
    time would hold its connection forever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _header_timer: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            waiting_after = self.cycle  # a new request's headers replace the cycle

            def expire() -> None:
                if self.cycle is waiting_after and not self.transport.is_closing():
                    self.transport.close()

            self._header_timer = self.loop.call_later(timeout_s, expire)

    return Protocol


def serve(mg: MedGemma, config: ServeConfig, embedder: Any = None, transcriber: Any = None) -> None:
    """Run until interrupted; `embedder` (a `MedSigLIP`) serves /v1/embeddings and /v1/medgemma/zero-shot,
    `transcriber` (MedASR) /v1/audio/transcriptions."""
    import uvicorn

    from .app import create_app

    setup_logging()
    app = create_app(mg, config)
    app.state.embedder = embedder
    app.state.transcriber = transcriber
    log = logging.getLogger("medgemma_toolkit.serve")
    log.info(
        "serving %s on http://%s:%d (api key %s, batch %d, queue %d)",
        app.state.model_id,
        config.host,
        config.port,
        "required" if config.api_key else "off",
        config.max_batch_size,
        config.max_queue,
    )
    uv = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        access_log=False,
        log_config=None,
        log_level="warning",
        timeout_graceful_shutdown=5,
        server_header=False,
        http=header_timeout_protocol(config.header_timeout_s),
    )
    uvicorn.Server(uv).run()
