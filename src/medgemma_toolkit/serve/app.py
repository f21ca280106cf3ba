"""The FastAPI application: OpenAI-compatible chat completions over a `MedGemma`, plus the web page.

>>> from medgemma_toolkit import MedGemma
>>> from medgemma_toolkit.serve import ServeConfig, create_app
>>> app = create_app(MedGemma.load("medgemma-4b-it"), ServeConfig())   # then: uvicorn.run(app)

The app is assembled here; the routes live one per module in `serve/routes/` and reach the model, limits and
batcher through `app.state.server` (`serve/state.py`). Every POST route passes the one `Gate` (`serve/gate.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from ..api import MedGemma
from .batcher import Batcher
from .config import ServeConfig
from .errors import install_error_handlers
from .gate import Gate
from .metrics import Metrics
from .middleware import KNOWN_PATHS, ServeMiddleware
from .routes import include_routes, leaf_routes
from .routes.info import STATIC_DIR
from .state import ServerState, model_id

__all__ = ["STATIC_DIR", "create_app", "model_id"]


def create_app(mg: MedGemma, config: ServeConfig = ServeConfig()) -> FastAPI:
    config.check()
    batcher: Batcher
    metrics = Metrics(lambda: batcher.queue_depth, lambda: batcher.running)
    batcher = Batcher(mg.backend, config.max_batch_size, config.batch_window_ms / 1000.0, on_batch=metrics.batch)
    gate = Gate(config, metrics, batcher.retry_after_s)
    state = ServerState(mg, config, batcher, metrics, gate, model_id(mg, config))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.stop()

    app = FastAPI(title="MedGemma toolkit server", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = state
    app.state.batcher, app.state.metrics, app.state.model_id = batcher, metrics, state.served
    install_error_handlers(app)
    include_routes(app)  # refuses to build a server with a body-taking route outside the gate
    # The access log and metrics name every served path (others are "<other>": a path may carry patient data).
    known = KNOWN_PATHS | {
        r.path for r in leaf_routes(list(app.routes)) if isinstance(r, APIRoute) and "{" not in r.path
    }
    app.add_middleware(
        ServeMiddleware, api_key=config.api_key, metrics=metrics, allow_hosts=config.allow_hosts, known_paths=known
    )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
