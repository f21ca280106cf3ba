"""The known MedGemma variants as one declarative table.

Memory figures are for the weights alone (add activations and KV cache): bf16 = 2 bytes per parameter, 8-bit
~1 byte, 4-bit NF4 ~0.5 byte plus unquantised embeddings and norms (~10%).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Modality = Literal["image+text", "text", "embedding", "speech"]  # embedding: MedSigLIP; speech: MedASR


@dataclass(frozen=True)
class Variant:
    name: str
    hub_id: str
    modality: Modality
    instruction_tuned: bool
    thinking: bool
    params_b: float  # billions of parameters, vision encoder included
    default_preset: str
    image_size: int | None = 896
    tokens_per_image: int | None = 256
    generation: str = "1"

    @property
    def multimodal(self) -> bool:
        return self.modality == "image+text"

    def memory_gib(self, precision: Literal["bf16", "8bit", "4bit"]) -> float:
        bytes_per = {"bf16": 2.0, "8bit": 1.05, "4bit": 0.55}[precision]
        return round(self.params_b * 1e9 * bytes_per / 2**30, 1)


VARIANTS: tuple[Variant, ...] = (
    Variant("medgemma-4b-pt", "google/medgemma-4b-pt", "image+text", False, False, 4.3, "pretrained"),
    Variant("medgemma-4b-it", "google/medgemma-4b-it", "image+text", True, False, 4.3, "medgemma-v1"),
    Variant("medgemma-27b-text-it", "google/medgemma-27b-text-it", "text", True, True, 27.0, "medgemma-v1", None, None),
    Variant("medgemma-27b-it", "google/medgemma-27b-it", "image+text", True, True, 28.8, "medgemma-v1"),
    Variant(
        "medgemma-1.5-4b-it",
        "google/medgemma-1.5-4b-it",
        "image+text",
        True,
        True,
        4.3,
        "medgemma-1.5",
        generation="1.5",
    ),
    # MedSigLIP: SigLIP image + text towers (~0.4B each), 448 px, 64 text tokens, 1152-d embeddings.
    Variant("medsiglip-448", "google/medsiglip-448", "embedding", False, False, 0.88, "", 448, None),
    # MedASR: a 105M Conformer CTC speech recogniser (16 kHz mono in, text out; `medgemma transcribe`).
    Variant("medasr", "google/medasr", "speech", False, False, 0.105, "", None, None),
)

BY_NAME = {v.name: v for v in VARIANTS}
BY_HUB_ID = {v.hub_id.lower(): v for v in VARIANTS}
# When no model is named, the first of these found on disk is used.
PREFERENCE = ("medgemma-1.5-4b-it", "medgemma-4b-it", "medgemma-27b-it", "medgemma-27b-text-it", "medgemma-4b-pt")


def find_variant(spec: str) -> Variant | None:
    """Look a variant up by its name or hub id (case-insensitive)."""
    s = spec.strip().lower()
    return BY_NAME.get(s) or BY_HUB_ID.get(s)
