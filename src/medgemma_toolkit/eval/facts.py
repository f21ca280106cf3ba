"""`ModelFacts`: what an evaluation run needs to know of its model, as plain data that travels between processes.

A run's identity (model name, weights fingerprint, dtype), its prompt preset and its choices (auto batch size,
capabilities) all come from the loaded model. In one process they are read off it; with `eval --workers/--ray`
a worker reads them off its own copy and sends them back (`eval/scaled.py`), so the driver, which checks the run
folder, consults the result cache, scores and writes every record, never loads the weights itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .generation import auto_batch_size
from .provenance import model_identity

if TYPE_CHECKING:
    from ..api import MedGemma


def eval_preset_name(mg: MedGemma) -> str:
    """Chat checkpoints: no system prompt. A preset that already has none (MedGemma 1.5's: images before the text,
    a volume's instruction/slices/question layout) is kept; others become `plain` (the turn as given). Base
    checkpoints only understand completion prompts."""
    if mg.backend.info.pretrained:
        return mg.preset.name
    if mg.preset.mode == "chat" and mg.preset.system_text is None and mg.preset.system_image is None:
        return mg.preset.name
    return "plain"


@dataclass(frozen=True)
class ModelFacts:
    """The model as a run records and uses it: `model` is the summary's "model" block (name, backend, demo, dtype,
    path, config hash, weights fingerprint); `preset` the eval preset's name (`eval_preset_name`)."""

    model: dict[str, Any]
    preset: str
    multimodal: bool
    loglikelihood: bool  # whether the backend scores log-likelihoods
    batch_text: int  # `auto_batch_size` without images
    batch_images: int  # and with images

    @classmethod
    def of(cls, mg: MedGemma) -> ModelFacts:
        info = mg.backend.info
        model = {
            "name": info.name,
            "backend": info.backend,
            "demo": mg.is_demo,
            "dtype": info.extra.get("dtype"),
            **model_identity(info.path),
        }
        return cls(
            model=model,
            preset=eval_preset_name(mg),
            multimodal=info.multimodal,
            loglikelihood=mg.backend.capabilities.loglikelihood,
            batch_text=auto_batch_size(mg.backend, images=False),
            batch_images=auto_batch_size(mg.backend, images=True),
        )

    def auto_batch_size(self, images: bool) -> int:
        return self.batch_images if images else self.batch_text
