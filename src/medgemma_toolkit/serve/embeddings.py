"""MedSigLIP routes: `POST /v1/embeddings` (OpenAI's embeddings shape) and `POST /v1/medgemma/zero-shot`.

Served when `medgemma serve --embed-model M` loaded a SigLIP checkpoint beside the generative model (it sits on
`app.state.embedder`); without one both routes answer 404 `model_not_found`. Same middleware as chat: API key,
Host check, request ids, and an access log of paths, statuses and counts (never texts or images).

Extension to OpenAI's request: an `input` item may be an image content part, as in chat,
`{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` (PNG/JPEG/DICOM data URIs; http(s),
DICOMweb and local paths only as the operator allowed for chat). Plain strings are texts. Each response item is
one model input image or text: `index` is its place in `data`, `input` the request item it came from (a series
under the image root gives one item per sampled slice), `medgemma` its manifest entry (slice label, patch).
`encoding_format` "float" or "base64" (little-endian float32, what the `openai` client asks for by default).

The routes (`serve/routes/embeddings.py`, `serve/routes/zero_shot.py`) go through the server's gate like chat: the
same body readers, admission, decoder turns and per-request image budget; zero-shot label texts are bounded.
"""

from __future__ import annotations

import base64
import threading
from typing import Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..core.messages import ImagePart
from ..imaging import decode_image_bytes
from ..imaging.manifest import image_manifest
from .config import ServeConfig
from .errors import APIError
from .images import ImageResolver, decode_data_uri
from .schemas import ImageContent
from .state import ServerState

FORWARD = threading.Lock()  # one forward pass at a time: the CPU (or GPU) is saturated by one batch already
MAX_LABELS = 1000
MAX_LABEL_CHARS = 500
MAX_TEMPLATE_CHARS = 2000
MAX_EXPANDED_CHARS = 1_000_000  # all label texts together (the text tower reads 64 tokens of each anyway)

InputItem = Union[str, ImageContent]
MAX_INPUTS = 2048  # OpenAI's own limit per embeddings request; one request must not hold the model for minutes


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `user`

    model: str
    input: Union[str, list[InputItem]] = Field(min_length=1, max_length=MAX_INPUTS)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class ZeroShotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    images: list[str] = Field(min_length=1)  # image URLs (data URIs), as in chat's image_url.url
    labels: list[str] = Field(min_length=1)
    template: str = "{}"
    scoring: Literal["softmax", "sigmoid"] = "softmax"


def embedder(state: ServerState, model: str | None) -> Any:
    """The MedSigLIP this server loaded (404 without one, or for another `model` name)."""
    ms = state.embedder
    if ms is None:
        raise APIError(
            404, "this server has no embedding model; start it with --embed-model M", "model_not_found", "model"
        )
    if model is not None and model not in (embedder_id(ms), ms.name):
        raise APIError(
            404, f"model {model[:100]!r} not found; embeddings come from {embedder_id(ms)!r}", "model_not_found"
        )
    return ms


def embedder_id(ms: Any) -> str:
    from pathlib import Path

    return Path(ms.name).name if "/" in ms.name and Path(ms.name).exists() else str(ms.name)


def image_pixels(ms: Any, config: ServeConfig, urls: list[tuple[int, str]]) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """(model pixels, entry) per model input image, under chat's rules: the request's one decode budget (pixels,
    CPU), the image count, and each image turned into MedSigLIP's (3, H, W) input right after it is decoded, so a
    request holds one full-size image at a time, not sixteen. Run during a decoder turn (`Gate.decode`)."""
    from ..embed.preprocess import to_pixels

    resolver = ImageResolver(config, ms.pre.size[0])
    out: list[tuple[np.ndarray, dict[str, Any]]] = []
    for k, url in urls:
        if len(out) >= config.max_images:
            raise APIError(400, f"too many images: at most {config.max_images} per request", "too_many_images")
        if url.startswith("data:"):  # decoded at its own size: the notebook resize works from the original
            data, name = decode_data_uri(url, f"input {k}")
            img = decode_image_bytes(data, name, resolver.options)
            out.append((to_pixels(img, ms.pre, ms.image_processor), {"input": k, "label": None, "patch": None}))
            del img
            continue
        parts = resolver.parts(url)
        images = [p.image for p in parts if isinstance(p, ImagePart)]
        for img, e in zip(images, image_manifest(parts)):
            px = to_pixels(img, ms.pre, ms.image_processor)
            out.append((px, {"input": k, "label": e.get("label"), "patch": e.get("patch")}))
    if len(out) > config.max_images:
        raise APIError(400, f"too many images: at most {config.max_images} per request", "too_many_images")
    return out


def embed_pixels(ms: Any, pixels: list[np.ndarray]) -> np.ndarray:
    """Unit vectors for preprocessed images, in the model's batch size, one forward pass at a time."""
    out = []
    for i in range(0, len(pixels), ms.batch_size):
        with FORWARD:
            out.append(ms.pixels_to_embeddings(np.stack(pixels[i : i + ms.batch_size])))
    return np.concatenate(out) if out else np.zeros((0, ms.dim), np.float32)


def embed_texts(ms: Any, texts: list[str]) -> np.ndarray:
    with FORWARD:
        return ms.embed_texts(texts).vectors


def check_zero_shot(labels: list[str], template: str) -> None:
    """Bounded text expansion: the label texts are `template` with each label in every `{}`; their total size is
    computed before any is built (a 100 KB template of `{}` x 50,000 would otherwise expand to megabytes)."""
    if len(labels) > MAX_LABELS or len(set(labels)) != len(labels):
        raise APIError(400, f"labels: at most {MAX_LABELS:,}, all distinct", "invalid_value", "labels")
    if (longest := max(len(lab) for lab in labels)) > MAX_LABEL_CHARS:
        raise APIError(
            400,
            f"labels: a label of {longest:,} characters; at most {MAX_LABEL_CHARS:,} each",
            "invalid_value",
            "labels",
        )
    if len(template) > MAX_TEMPLATE_CHARS:
        raise APIError(
            400,
            f"template: {len(template):,} characters; at most {MAX_TEMPLATE_CHARS:,}",
            "invalid_value",
            "template",
        )
    slots = template.count("{}")
    if slots == 0:
        raise APIError(400, "template: must contain {} where the label goes", "invalid_value", "template")
    expanded = sum(len(template) + slots * (len(lab.strip()) - 2) for lab in labels)
    if expanded > MAX_EXPANDED_CHARS:
        raise APIError(
            400,
            f"template: the labels expand to {expanded:,} characters of text; at most {MAX_EXPANDED_CHARS:,} "
            "per request (fewer labels, shorter labels or fewer {} in the template)",
            "invalid_value",
            "template",
        )


def item(index: int, vec: np.ndarray, entry: dict[str, Any], fmt: str) -> dict[str, Any]:
    v = np.asarray(vec, dtype="<f4")
    emb: Any = base64.b64encode(v.tobytes()).decode() if fmt == "base64" else [float(x) for x in v]
    out: dict[str, Any] = {"object": "embedding", "index": index, "embedding": emb, "input": entry["input"]}
    if "label" in entry:  # an image: what it is within its source (slice label, slide patch)
        out["medgemma"] = {"label": entry["label"], "patch": entry["patch"]}
    return out
