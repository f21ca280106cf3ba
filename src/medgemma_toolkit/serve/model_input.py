"""`POST /v1/medgemma/model-input`: every image the model would receive for one image URL, as PNGs with labels.

The web page shows these instead of rendering anything itself: a CT/MR series comes back as its sampled slices,
each with the "SLICE n" text the model reads after it, rendered with the same window settings a chat request with
the same `medgemma` options would use (`ImageResolver`, the chat path's own code). `/v1/medgemma/preview` answers
with the first image only; this answers with all of them. The route: `serve/routes/model_input.py`.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

from ..api import MedGemma
from ..core.messages import ImagePart
from ..imaging.manifest import for_records, image_manifest
from ..imaging.options import WindowName
from .config import ServeConfig
from .errors import APIError
from .images import ImageResolver
from .schemas import ImageURL, _Strict


class ModelInputRequest(_Strict):
    """One image URL (a `data:application/zip` URI is a whole series) and the chat request's window options."""

    image_url: ImageURL
    window: tuple[float, float] | WindowName | None = None
    ct_windows: Literal["notebook", "server"] | None = None
    pad: bool | None = None  # 2D images padded to a square (default) or stretched, as a chat's medgemma.pad


def _png(img: Any) -> str:
    """Lossless, with zlib's fastest level: 85 slices of 896 px encode ~4x faster than at the default level for
    ~20% more bytes (benchmarks/web_model_input.py)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render_model_input(body: ModelInputRequest, mg: MedGemma, config: ServeConfig) -> dict[str, Any]:
    """The images and their manifest entries; sources other than the request's own paths are not echoed."""
    parts = ImageResolver(config, mg.image_size, body.window, body.ct_windows, body.pad).parts(body.image_url.url)
    images = [p for p in parts if isinstance(p, ImagePart)]
    if not images:
        raise APIError(400, "image 1: no image in this source", "invalid_image")
    root = str(config.image_root) if config.image_root else None
    entries = for_records(image_manifest(parts), root)
    out = []
    for part, entry in zip(images, entries):
        src = str(entry.get("source") or "")
        entry["source"] = None if src.startswith(("data:", "/")) else entry["source"]
        entry["original_size"] = (part.info or {}).get("original_size")  # a single 2D image's decoded size
        out.append({"image": _png(part.image), **entry})
    return {"width": images[0].image.width, "height": images[0].image.height, "images": out}
