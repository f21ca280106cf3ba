"""`POST /v1/medgemma/preview`: the exact image the model would receive for one image URL (`medgemma preview`)."""

from __future__ import annotations

import base64
import io
from typing import Any

from fastapi import APIRouter, Request

from ...core.messages import ImagePart
from ...imaging.manifest import for_records, image_manifest
from ..images import ImageResolver
from ..schemas import PreviewRequest
from ..state import ServerState
from . import gated_post

router = APIRouter()


def render_preview(body: PreviewRequest, state: ServerState) -> dict[str, Any]:
    config = state.config
    parts = ImageResolver(config, state.mg.image_size, body.window).parts(body.image_url.url)
    img = next(p.image for p in parts if isinstance(p, ImagePart))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    # What the model saw, in order (slices, slide patches); paths relative to the image root, no data: URIs.
    root = str(config.image_root) if config.image_root else None
    seen = [
        {**e, "source": None if str(e.get("source") or "").startswith(("data:", "/")) else e["source"]}
        for e in for_records(image_manifest(parts), root)
    ]
    return {
        "image": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
        "width": img.width,
        "height": img.height,
        "images": seen,
    }


@gated_post(router, "/v1/medgemma/preview", PreviewRequest)
async def preview(request: Request, body: PreviewRequest, state: ServerState) -> dict[str, Any]:
    """Previews decode like chats do: the same admission and decoder turns."""
    return await state.gate.decode(render_preview, body, state)
