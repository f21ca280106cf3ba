"""`POST /v1/medgemma/model-input`: every image the model would receive for one image URL (`serve/model_input.py`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..model_input import ModelInputRequest, render_model_input
from ..state import ServerState
from . import gated_post

router = APIRouter()


@gated_post(router, "/v1/medgemma/model-input", ModelInputRequest)
async def model_input(request: Request, body: ModelInputRequest, state: ServerState) -> dict[str, Any]:
    return await state.gate.decode(render_model_input, body, state.mg, state.config)
