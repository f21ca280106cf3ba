"""The server's routes, one module per endpoint, and `gated_post`, the only way to add a POST route.

Adding a route (e.g. a Vertex-style `/predict`) is one new module here and its name in `ROUTE_MODULES`:

    # serve/routes/predict.py
    from fastapi import APIRouter, Request
    from pydantic import BaseModel

    from ..state import ServerState
    from . import gated_post

    router = APIRouter()

    class PredictRequest(BaseModel):
        instances: list[dict]

    @gated_post(router, "/predict", PredictRequest)
    async def predict(request: Request, body: PredictRequest, state: ServerState) -> dict:
        images = await state.gate.decode(work_that_decodes, body)   # image work: a decoder turn, in a thread
        ...

`gated_post` gives the handler a body already received through the gate's one reader (capped bytes, capped
readers, timed out, JSON only unless `media_type=` says otherwise, nesting depth and part counts bounded) and an
admission ticket held for the handler's whole run (`request.state.ticket`; a streaming response calls
`ticket.hand_off()` and releases it when the stream ends). A route with its own error shape (Vertex's) passes
`on_error=` to answer the gate's refusals in it. `create_app` refuses to start if any POST route was
added some other way (`check_gated`), and `tests/test_hostile_server.py` walks `app.routes` with the same check.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel

from ..errors import APIError
from ..gate import CURRENT_REQUEST, JSON
from ..state import ServerState, server_state

B = TypeVar("B", bound=BaseModel)
Handler = Callable[[Request, Any, ServerState], Awaitable[Any]]
GATE_MARK = "__medgemma_gate__"
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass(frozen=True)
class GateMark:
    """What `gated_post` recorded on an endpoint: the body schema and the one media type it accepts."""

    schema: type[BaseModel]
    media_type: str


def gated_post(
    router: APIRouter,
    path: str,
    schema: type[B],
    media_type: str = JSON,
    on_error: Callable[[APIError], Response] | None = None,
    **route_kwargs: Any,
) -> Callable[[Handler], Handler]:
    """Register `handler(request, body, state)` as `POST path` behind the gate. `on_error` answers the gate's own
    refusals (415, 413, 408, 400, 429) in a route's own error shape (e.g. Vertex's `{"error": ...}`); without it
    they are OpenAI-format errors like every other failure."""

    def register(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Any:
            state = server_state(request)
            CURRENT_REQUEST.set(request)  # for `Gate.decode`, which stops image work when this client leaves
            try:
                body = await state.gate.read(request, schema, media_type)
                ticket = state.gate.admit()
            except APIError as e:
                if on_error is None:
                    raise
                return on_error(e)
            request.state.ticket = ticket
            try:
                return await handler(request, body, state)
            finally:
                if not ticket.handed_off:
                    ticket.release()

        # Named like the handler for logs and errors; FastAPI sees only `request` in the signature.
        endpoint.__name__, endpoint.__doc__ = handler.__name__, handler.__doc__
        setattr(endpoint, GATE_MARK, GateMark(schema, media_type))
        router.add_api_route(path, endpoint, methods=["POST"], **route_kwargs)
        return handler

    return register


def leaf_routes(routes: list[Any]) -> list[Any]:
    """The app's routes with included routers opened up (FastAPI >= 0.16x keeps an included router as one
    entry of `app.routes`, holding the router's own routes)."""
    out: list[Any] = []
    for r in routes:
        sub = getattr(r, "original_router", None)
        out += leaf_routes(list(sub.routes)) if sub is not None else [r]
    return out


def ungated_routes(app: FastAPI) -> list[str]:
    """Routes taking a body (POST, PUT, ...) that were not added through `gated_post`."""
    bad = []
    for r in leaf_routes(list(app.routes)):
        methods = set(getattr(r, "methods", None) or ()) & BODY_METHODS
        if methods and not isinstance(getattr(getattr(r, "endpoint", None), GATE_MARK, None), GateMark):
            bad.append(f"{'/'.join(sorted(methods))} {getattr(r, 'path', '?')}")
    return bad


def check_gated(app: FastAPI) -> None:
    """Fail closed: a server with a body-taking route outside the gate does not start."""
    if bad := ungated_routes(app):
        raise RuntimeError(f"routes outside the request gate (add them with routes.gated_post): {', '.join(bad)}")


# One module per endpoint (`info` holds the GET routes: page, health, models, metrics); each exposes `router`.
ROUTE_MODULES = (
    "info",
    "chat",
    "completions",
    "preview",
    "model_input",
    "localize",
    "embeddings",
    "zero_shot",
    "predict",
    "transcriptions",
)


def include_routes(app: FastAPI) -> None:
    """Every endpoint's router, then the fail-closed check."""
    for name in ROUTE_MODULES:
        app.include_router(importlib.import_module(f"{__name__}.{name}").router)
    check_gated(app)
