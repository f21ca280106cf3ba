"""`POST /v1/medgemma/zero-shot`: MedSigLIP's zero-shot scores of images against label texts."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request

from ..embeddings import (
    ZeroShotRequest,
    check_zero_shot,
    embed_pixels,
    embed_texts,
    embedder,
    embedder_id,
    image_pixels,
)
from ..state import ServerState
from . import gated_post

log = logging.getLogger("medgemma_toolkit.serve")
router = APIRouter()


@gated_post(router, "/v1/medgemma/zero-shot", ZeroShotRequest)
async def zero_shot(request: Request, body: ZeroShotRequest, state: ServerState) -> dict[str, Any]:
    ms = embedder(state, body.model)
    check_zero_shot(body.labels, body.template)  # before any text is built
    t0 = time.monotonic()
    pics = await state.gate.decode(image_pixels, ms, state.config, list(enumerate(body.images)))

    def work() -> list[dict[str, Any]]:
        from ...embed.model import zero_shot_row

        tv = embed_texts(ms, ms.label_texts(body.labels, body.template))
        iv = embed_pixels(ms, [p for p, _ in pics])
        logits, scores = ms.scores(iv, tv, body.scoring)
        return [
            {"index": i, **zero_shot_row(e, list(body.labels), logits[i], scores[i])} for i, (_, e) in enumerate(pics)
        ]

    results = await state.gate.offload(work)
    log.info(
        "request_id=%s zero_shot images=%d labels=%d ms=%.1f",
        request.state.request_id,
        len(results),
        len(body.labels),
        (time.monotonic() - t0) * 1000,
    )
    return {
        "object": "medgemma.zero_shot",
        "model": embedder_id(ms),
        "labels": body.labels,
        "scoring": body.scoring,
        "template": body.template,
        "results": results,
    }
