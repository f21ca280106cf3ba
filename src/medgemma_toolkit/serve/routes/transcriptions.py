"""`POST /v1/audio/transcriptions` (OpenAI's shape) when the server was started with `--asr-model`: MedASR turns an
uploaded dictation into text. The multipart body passes the gate like every other body (counted, capped, timed);
decoding and transcription take a decoder turn, one transcription at a time. The transcript is PHI: it goes into
the response only, never a log line.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ...asr.openai_api import TranscriptionRequest, parse_request, response_body, transcribe_request
from ...asr.transcribe import Transcript
from ..errors import APIError
from ..schemas import RawBody
from ..state import ServerState
from . import gated_post

router = APIRouter()


def _transcribe(state: ServerState, req: TranscriptionRequest) -> Transcript:
    with state.transcribe_lock:
        return transcribe_request(state.transcriber, req)


@gated_post(router, "/v1/audio/transcriptions", RawBody, media_type="multipart/form-data")
async def transcriptions(request: Request, body: RawBody, state: ServerState) -> Response:
    if state.transcriber is None:
        raise APIError(
            404, "this server has no speech model: start it with --asr-model medasr", "model_not_found", "model"
        )
    req = await state.gate.offload(parse_request, body.data, body.content_type)
    transcript = await state.gate.decode(_transcribe, state, req)
    content: Any
    content, media_type = response_body(transcript, req)
    if isinstance(content, str):
        return PlainTextResponse(content, media_type=media_type)
    return JSONResponse(content)
