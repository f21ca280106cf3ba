"""Run the app under uvicorn with the toolkit's logging (one line per request, no bodies)."""

from __future__ import annotations

import errno
import logging
import socket
import sys

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


def serve(mg: MedGemma, config: ServeConfig) -> None:
    import uvicorn

    from .app import create_app

    setup_logging()
    app = create_app(mg, config)
    log = logging.getLogger("medgemma_toolkit.serve")
    log.info("serving %s on http://%s:%d (api key %s, batch %d, queue %d)", app.state.model_id, config.host,
             config.port, "required" if config.api_key else "off", config.max_batch_size, config.max_queue)
    uv = uvicorn.Config(app, host=config.host, port=config.port, access_log=False, log_config=None,
                        log_level="warning", timeout_graceful_shutdown=5, server_header=False)
    uvicorn.Server(uv).run()
