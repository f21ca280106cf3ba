"""`POST /v1/medgemma/localize` without the HTTP: the body to one request per object, and their answers to the
response (boxes in the model's frame and in the original image's pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api import MedGemma
from ..backends.base import GenerationRequest
from ..errors import BadInput
from ..localize.run import build_requests, check_objects
from .config import ServeConfig
from .convert import check_fits
from .errors import APIError
from .images import ImageResolver
from .schemas import LocalizeRequest
from .sr import localize_source


@dataclass
class LocalizePlan:
    size: tuple[int, int]  # the original image's (width, height): the frame of `xyxy`
    objects: list[str]
    requests: list[GenerationRequest]
    sr_source: Any = None  # `medgemma.sr`: the DICOM header of the image, whose instance the regions reference


def plan_localize(mg: MedGemma, body: LocalizeRequest, config: ServeConfig) -> LocalizePlan:
    """Decode the image once (under the operator's image rules) and build the notebook's prompt per object."""
    try:
        names = check_objects(body.objects)
    except BadInput as e:
        raise APIError(400, f"objects: {e}", "invalid_value", "objects") from None
    if body.max_tokens is not None and body.max_tokens > config.max_tokens_limit:
        raise APIError(
            400, f"max_tokens: at most {config.max_tokens_limit} on this server", "invalid_value", "max_tokens"
        )
    if not mg.backend.info.multimodal:
        raise APIError(400, f"model {mg.backend.info.name!r} is text-only and cannot take images", "invalid_value")
    want_sr = bool(body.medgemma and body.medgemma.sr)
    resolver = ImageResolver(config, mg.image_size, body.window, keep_dicom=want_sr)
    image = resolver.original(body.image)
    source = localize_source(resolver) if want_sr else None  # a PNG with sr: a 400 before any model call
    requests = build_requests(mg, image, names, body.max_tokens)
    check_fits(mg.backend, requests[0])  # every object's prompt is the same length but for the name
    return LocalizePlan(image.size, names, requests, source)
