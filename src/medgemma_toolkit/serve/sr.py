"""The opt-in `medgemma.sr` of chat completions and `/v1/medgemma/localize`: the answer as a DICOM SR in the response.

The SR must cite the exact instances the model saw, so the image resolver keeps what it needs while it decodes
(`ImageResolver(keep_dicom=True)`): the headers of DICOM files sent inline (data URIs, zipped series), and the
DICOMweb references it accepted under the operator's allow-list. Files under `--image-root` are read again from
there. The SR is built in memory (`sr/inline.py`), returned base64-encoded, and never stored or logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BadInput
from .errors import APIError

if TYPE_CHECKING:
    from ..api import MedGemma
    from ..backends.base import Completion, GenerationRequest
    from .images import ImageResolver

PARAM = "medgemma.sr"


def refuse(message: str) -> APIError:
    """A 400 that names the field and the reason (never a header value: messages carry positions, not UIDs)."""
    return APIError(400, f"{PARAM}: {message}", "invalid_value", PARAM)


@dataclass
class SrContext:
    """What the chat route needs after generating: the question, and the headers of the instances the prompt holds
    (checked before generation, so a request that cannot have its SR fails before the model's time is spent)."""

    question: str
    evidence: list[Any] = field(default_factory=list)

    def field(self, mg: MedGemma, c: Completion, preset: str | None) -> dict[str, Any]:
        """The response's `medgemma.sr` part: a Comprehensive SR of the answer (the thought left out)."""
        from ..prompts.thinking import split_thought
        from ..sr import algorithm_of
        from ..sr.inline import sr_field

        return sr_field(self.question, split_thought(c.text).answer, self.evidence, algorithm_of(mg, preset))


def chat_context(resolver: ImageResolver, req: GenerationRequest, question: str, stream: bool, n: int = 1) -> SrContext:
    """Before generation: the evidence of every image in the prompt, or a 400 saying why there is none."""
    from ..imaging.manifest import prompt_manifest
    from ..sr.evidence import evidence_for

    if stream:
        raise refuse("not available with stream: true (the report is built from the whole answer)")
    if n != 1:
        raise refuse("one report per answer: send n=1")
    manifest = prompt_manifest(req.prompt)
    if not manifest:
        raise refuse("the request has no image; an SR needs a DICOM image to report on")
    for k, entry in enumerate(manifest):
        if entry.get("patch") is None and not entry.get("sop_instance_uid"):
            raise refuse(f"image {k + 1} is not a DICOM instance; an SR needs DICOM images")
    try:
        evidence = evidence_for(manifest, resolver.dicomweb_sources, resolver.dicom_headers)
    except BadInput as e:
        raise refuse(str(e)) from None
    return SrContext(question, evidence)


def localize_source(resolver: ImageResolver) -> Any:
    """The header of the one image `/v1/medgemma/localize` decoded, or a 400 when it was not DICOM."""
    if resolver.original_header is None:
        raise refuse("the image is not a DICOM instance; an SR needs a DICOM image to put the regions on")
    return resolver.original_header


def regions_part(
    mg: MedGemma, source: Any, boxes: Sequence[tuple[str, tuple[float, float, float, float]]], preset: str | None
) -> dict[str, Any]:
    """`/v1/medgemma/localize`'s `medgemma.sr`: a TID 1500 report with one region per box, on the frame decoded
    (the middle one of a multi-frame image, as the CLI without --frame)."""
    from ..sr import Region, algorithm_of
    from ..sr.inline import regions_field

    frames = int(getattr(source, "NumberOfFrames", 1) or 1)
    frame = frames // 2 + 1 if frames > 1 else None
    regions = [Region(label, xyxy) for label, xyxy in boxes]
    return regions_field(source, regions, algorithm_of(mg, preset), frame)
