"""One image, several objects: one request per object (the notebook asks about one object at a time), batched
through the backend; boxes parsed from each answer and mapped to the original image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..backends.base import Completion, GenerationRequest
from ..core.messages import ImagePart
from ..errors import BadInput
from ..imaging.square import to_model_image
from ..prompts.presets import get_preset
from ..prompts.thinking import split_thought
from .geometry import to_pixels
from .parse import parse_boxes

if TYPE_CHECKING:
    from ..api import MedGemma

PRESET = "cxr-localize"
MAX_OBJECTS = 16
MAX_OBJECT_CHARS = 200


@dataclass(frozen=True)
class LocatedBox:
    label: str
    object: str  # the requested object whose answer held the box
    box_2d: tuple[float, float, float, float]  # y0, x0, y1, x1; 0-1000 over the padded square
    xyxy: tuple[float, float, float, float]  # x0, y0, x1, y1; pixels of the original image

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "box_2d": list(self.box_2d), "xyxy": list(self.xyxy), "object": self.object}


@dataclass(frozen=True)
class ObjectAnswer:
    object: str
    answer: str
    thought: str | None
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class LocalizeResult:
    width: int
    height: int
    boxes: list[LocatedBox] = field(default_factory=list)
    answers: list[ObjectAnswer] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    model: str = ""
    preset: str = ""

    @property
    def answer(self) -> str:
        """The model's text as written (thought markers included), objects separated by a blank line."""
        return "\n\n".join(self.raw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "boxes": [b.to_dict() for b in self.boxes],
            "answer": self.answer,
            "unparsed": list(self.unparsed),
            "width": self.width,
            "height": self.height,
            "answers": [
                {"object": a.object, "answer": a.answer, "thought": a.thought, "finish_reason": a.finish_reason}
                for a in self.answers
            ],
            "model": self.model,
            "preset": self.preset,
        }


def check_objects(objects: Sequence[str]) -> list[str]:
    """The objects to find, stripped; none, blank, too many or too long is a one-line `BadInput`."""
    names = [" ".join(str(o).split()) for o in objects]
    if not names:
        raise BadInput('name at least one object to find, e.g. "right lung"')
    if any(not n for n in names):
        raise BadInput("object names must not be empty")
    if len(names) > MAX_OBJECTS:
        raise BadInput(f"{len(names)} objects; at most {MAX_OBJECTS} in one call")
    if any(len(n) > MAX_OBJECT_CHARS for n in names):
        raise BadInput(f"object names are limited to {MAX_OBJECT_CHARS} characters")
    return names


def build_requests(
    mg: MedGemma, image: Image.Image, objects: Sequence[str], max_new_tokens: int | None = None, preset: str = PRESET
) -> list[GenerationRequest]:
    """One greedy request per object, each with the same padded model image (computed once)."""
    part = ImagePart(to_model_image(image, mg.image_size))
    return [mg.request(o, [part], preset=preset, max_new_tokens=max_new_tokens) for o in check_objects(objects)]


def assemble(
    size: tuple[int, int],
    objects: Sequence[str],
    completions: Sequence[Completion],
    model: str = "",
    preset: str = PRESET,
) -> LocalizeResult:
    """Parse each object's answer and map its boxes to the `size` = (width, height) image."""
    width, height = size
    pre = get_preset(preset)
    out = LocalizeResult(width, height, model=model, preset=f"{pre.name}@{pre.version}")
    for obj, c in zip(check_objects(objects), completions):
        s = split_thought(c.text)
        out.raw.append(c.text)
        out.answers.append(
            ObjectAnswer(obj, s.answer, s.thought, c.finish_reason, c.prompt_tokens, c.completion_tokens)
        )
        parsed = parse_boxes(c.text, default_label=obj)
        out.unparsed.extend(parsed.unparsed)
        out.boxes.extend(LocatedBox(b.label, obj, b.box_2d, to_pixels(b.box_2d, width, height)) for b in parsed.boxes)
    return out


def localize(
    mg: MedGemma, image: Image.Image, objects: Sequence[str], max_new_tokens: int | None = None, preset: str = PRESET
) -> LocalizeResult:
    """Find each object in `image` (RGB at its original size).

    >>> r = localize(mg, load_image("cxr.png"), ["right lung", "left clavicle"])
    >>> [(b.label, b.xyxy) for b in r.boxes]
    """
    names = check_objects(objects)
    reqs = build_requests(mg, image, names, max_new_tokens, preset)
    completions = mg.backend.generate(reqs)
    return assemble(image.size, names, completions, mg.backend.info.name, preset)
