"""The GET routes: the web page, `/health`, `/v1/models`, `/metrics`. They take no body, so no gate."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse

from ..errors import APIError
from ..middleware import PAGE_HEADERS
from ..state import ServerState, server_state

STATIC_DIR = Path(str(files("medgemma_toolkit.serve").joinpath("static")))
router = APIRouter()


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    s = server_state(request)
    return {
        "status": "ok",
        "model": s.served,
        "queue_depth": s.batcher.queue_depth,
        "running": s.batcher.running,
        "decoding": s.gate.decoding,  # requests decoding images now, at most max_decoders
        "max_decoders": s.config.max_decoders,
    }


def model_card(s: ServerState) -> dict[str, Any]:
    info = s.mg.backend.info
    return {
        "id": s.served,
        "object": "model",
        "created": s.created,
        "owned_by": "medgemma-toolkit",
        "medgemma": {
            "multimodal": info.multimodal,
            "image_size": info.image_size,
            "thinking": info.thinking,
            "preset": f"{s.mg.preset.name}@{s.mg.preset.version}",
            "backend": info.backend,
            "demo_model": s.mg.is_demo,
            "auth_required": bool(s.config.api_key),
        },
    }


@router.get("/v1/models")
def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(server_state(request))]}


@router.get("/v1/models/{name:path}")
def model(name: str, request: Request) -> dict[str, Any]:
    s = server_state(request)
    if name not in s.names:
        raise APIError(404, f"model {name[:100]!r} not found; this server serves {s.served!r}", "model_not_found")
    return model_card(s)


@router.get("/metrics")
def prometheus(request: Request) -> PlainTextResponse:
    return PlainTextResponse(server_state(request).metrics.render(), media_type="text/plain; version=0.0.4")
