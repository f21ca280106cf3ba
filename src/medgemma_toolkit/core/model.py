"""What is known about a model: before loading (`ModelHint`, from its variant's conventions) and once loaded
(`ModelInfo`, what prompt and image builders need).

Plain types at the bottom of the package, so `models` (which derives hints from its variant table) and every
backend (which turns a hint into a `ModelInfo`) share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol


class VariantConventions(Protocol):
    """The parts of a variant (`models.variants.Variant`) a hint takes its conventions from."""

    @property
    def instruction_tuned(self) -> bool: ...

    @property
    def thinking(self) -> bool: ...

    @property
    def default_preset(self) -> str: ...


@dataclass(frozen=True)
class ModelInfo:
    """What callers need to know about the loaded model to build prompts and images for it."""

    name: str  # variant name, hub id or path as the user gave it
    path: str  # where the weights were read from
    multimodal: bool
    image_size: int | None  # square input side in pixels; None for text-only models
    tokens_per_image: int | None
    has_chat_template: bool
    pretrained: bool  # base (-pt) checkpoint: completion prompts, not chat turns
    thinking: bool
    default_preset: str
    max_images: int = 128  # guard against prompts larger than the context window
    backend: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelHint:
    """Conventions known before loading; None means "decide from the checkpoint" (its chat template)."""

    name: str = ""
    pretrained: bool | None = None
    thinking: bool | None = None
    default_preset: str | None = None

    @classmethod
    def of(cls, hint: ModelHint | dict[str, Any] | None) -> ModelHint:
        if isinstance(hint, ModelHint):
            return hint
        h = hint or {}
        return cls(str(h.get("name") or ""), h.get("pretrained"), h.get("thinking"), h.get("default_preset"))

    @classmethod
    def from_variant(cls, name: str, v: VariantConventions) -> ModelHint:
        return cls(name, not v.instruction_tuned, v.thinking, v.default_preset)

    @property
    def known(self) -> bool:
        """Whether the conventions come from a known variant (or the demo), not from the checkpoint."""
        return self.default_preset is not None

    def with_variant(self, v: VariantConventions | None) -> ModelHint:
        """This hint, completed from `v` when it names no conventions of its own."""
        if v is None or self.known:
            return self
        return replace(self, pretrained=not v.instruction_tuned, thinking=v.thinking, default_preset=v.default_preset)

    def is_pretrained(self, has_chat_template: bool) -> bool:
        return (not has_chat_template) if self.pretrained is None else bool(self.pretrained)

    def preset(self, has_chat_template: bool) -> str:
        """The prompt preset: the variant's, else chat (template) or completion (base model)."""
        return self.default_preset or ("pretrained" if self.is_pretrained(has_chat_template) else "medgemma-v1")

    def model_info(
        self,
        *,
        path: str,
        backend: str,
        multimodal: bool,
        image_size: int | None,
        tokens_per_image: int | None,
        has_chat_template: bool,
        extra: dict[str, str],
        thinking: bool = False,
        default_preset: str | None = None,
    ) -> ModelInfo:
        """`ModelInfo` for a loaded model; `thinking`/`default_preset` are what the model itself says, used
        when the hint does not know."""
        pretrained = self.is_pretrained(has_chat_template)
        return ModelInfo(
            name=self.name or path,
            path=path,
            multimodal=multimodal,
            image_size=image_size,
            tokens_per_image=tokens_per_image,
            has_chat_template=has_chat_template,
            pretrained=pretrained,
            thinking=bool(thinking if self.thinking is None else self.thinking),
            default_preset=self.default_preset or default_preset or self.preset(has_chat_template),
            backend=backend,
            extra=extra,
        )
