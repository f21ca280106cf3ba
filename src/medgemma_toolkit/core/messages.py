"""Chat messages with typed content parts, convertible to and from Hugging Face's `messages` format.

Images inside a `Message` are already model-ready (RGB, square, at the model's input size): the `imaging` layer
does all conversion before a prompt is built, so every backend sees the same pixels the user previewed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

from PIL import Image

from ..errors import BadInput

Role = Literal["system", "user", "assistant"]
IMAGE_PLACEHOLDER = "<start_of_image>"  # what Gemma 3 puts in text where an image goes; the processor expands it


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    image: Image.Image
    # Shown by `medgemma preview` (e.g. a slide patch's coordinates); never sent to the model.
    label: str = field(default="", compare=False)
    # Where the image came from, for "what the model saw" manifests (`imaging.manifest`): source, instance_number,
    # sop_instance_uid, patch. Never sent to the model.
    info: dict[str, Any] | None = field(default=None, compare=False)


Part = Union[TextPart, ImagePart]


@dataclass
class Message:
    role: Role
    parts: list[Part] = field(default_factory=list)

    @property
    def images(self) -> list[Image.Image]:
        return [p.image for p in self.parts if isinstance(p, ImagePart)]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    def to_hf(self) -> dict[str, Any]:
        """Hugging Face chat format; images are passed by object, as processors' chat templates expect."""
        content: list[dict[str, Any]] = []
        for p in self.parts:
            if isinstance(p, TextPart):
                content.append({"type": "text", "text": p.text})
            else:
                content.append({"type": "image", "image": p.image})
        return {"role": self.role, "content": content}


def message_from_hf(d: dict[str, Any]) -> Message:
    """Parse one HF-format message whose image parts already hold PIL images (or a plain-string content)."""
    role = d.get("role")
    if role not in ("system", "user", "assistant"):
        raise BadInput(f"unknown message role {role!r}")
    content = d.get("content", "")
    if isinstance(content, str):
        return Message(role, [TextPart(content)])
    parts: list[Part] = []
    for c in content:
        kind = c.get("type")
        if kind == "text":
            parts.append(TextPart(str(c.get("text", ""))))
        elif kind == "image" and isinstance(c.get("image"), Image.Image):
            parts.append(ImagePart(c["image"]))
        else:
            raise BadInput(f"unsupported content part type {kind!r}")
    return Message(role, parts)


@dataclass
class Prompt:
    """What a backend receives: chat messages, or (for pretrained/base checkpoints) plain completion text.

    In completion mode `text` holds `<start_of_image>` placeholders, one per entry of `images`, in order.
    """

    messages: list[Message] = field(default_factory=list)
    text: str | None = None
    images: list[Image.Image] = field(default_factory=list)

    @property
    def is_completion(self) -> bool:
        return self.text is not None

    def all_images(self) -> list[Image.Image]:
        if self.is_completion:
            return list(self.images)
        return [im for m in self.messages for im in m.images]
