"""`POST /v1/embeddings`: OpenAI's embeddings shape over MedSigLIP, texts and images (`serve/embeddings.py`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from ..embeddings import EmbeddingsRequest, embed_pixels, embed_texts, embedder, embedder_id, image_pixels, item
from ..errors import APIError
from ..state import ServerState
from . import gated_post

log = logging.getLogger("medgemma_toolkit.serve")
router = APIRouter()


@gated_post(router, "/v1/embeddings", EmbeddingsRequest)
async def embeddings(request: Request, body: EmbeddingsRequest, state: ServerState) -> dict[str, Any]:
    ms = embedder(state, body.model)
    if body.dimensions is not None and body.dimensions != ms.dim:
        raise APIError(400, f"dimensions: this model gives {ms.dim}-d embeddings only", "invalid_value", "dimensions")
    items = [body.input] if isinstance(body.input, str) else list(body.input)
    texts = [(k, it) for k, it in enumerate(items) if isinstance(it, str)]
    urls = [(k, it.image_url.url) for k, it in enumerate(items) if not isinstance(it, str)]
    if any(not t.strip() for _, t in texts):
        raise APIError(400, "input: texts must not be empty", "invalid_value", "input")
    t0 = time.monotonic()
    pics = await state.gate.decode(image_pixels, ms, state.config, urls) if urls else []

    def work() -> tuple[list[dict[str, Any]], int]:
        iv = embed_pixels(ms, [p for p, _ in pics]) if pics else None
        tv = embed_texts(ms, [t for _, t in texts]) if texts else None
        tokens = sum(
            len(ms.processor.tokenizer(t, truncation=True, max_length=ms.max_text_tokens)["input_ids"])
            for _, t in texts
        )
        rows: list[tuple[int, np.ndarray, dict[str, Any]]] = []
        rows += [(e["input"], iv[i], e) for i, (_, e) in enumerate(pics)] if iv is not None else []
        rows += [(k, tv[i], {"input": k}) for i, (k, _) in enumerate(texts)] if tv is not None else []
        rows.sort(key=lambda r: r[0])  # stable: a series' slices stay in order
        return [item(i, v, e, body.encoding_format) for i, (_, v, e) in enumerate(rows)], tokens

    data, tokens = await state.gate.offload(work)
    log.info(
        "request_id=%s embeddings texts=%d images=%d ms=%.1f",
        request.state.request_id,
        len(texts),
        len(pics),
        (time.monotonic() - t0) * 1000,
    )
    return {
        "object": "list",
        "data": data,
        "model": embedder_id(ms),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
