"""Image to MedSigLIP pixels, as Google's MedSigLIP notebooks prepare them.

Google-Health/medsiglip `notebooks/quick_start_with_hugging_face.ipynb` (commit 56b1447): to reproduce MedSigLIP's
evaluations, resize the whole image (no crop, no padding: the aspect ratio is not kept) to 448x448 with
`tf.image.resize(method="bilinear", antialias=False)`, cast to uint8 (truncating), then let the checkpoint's
processor rescale to [0, 1] and normalise with mean 0.5, std 0.5 (pixels in [-1, 1]). That is `resize="notebook"`
here (the default). TensorFlow's bilinear resize without antialiasing samples at half-pixel centres, as torch's
`interpolate(mode="bilinear", align_corners=False)` does, so torch computes it here (tests check it against a
direct implementation of the formula). `resize="processor"` instead hands the image to the checkpoint's own
image processor (PIL resize with its configured filter): the notebooks' other, default-transformers path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

Resize = Literal["notebook", "processor"]
RESIZES: tuple[Resize, ...] = ("notebook", "processor")


@dataclass(frozen=True)
class Preprocessing:
    """What one checkpoint's image processor asks for, read from its preprocessor config."""

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255
    resize: Resize = "notebook"

    @classmethod
    def of(cls, image_processor: Any, resize: Resize = "notebook") -> Preprocessing:
        size = image_processor.size
        h, w = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
        return cls(
            size=(int(h), int(w)),
            mean=tuple(float(v) for v in image_processor.image_mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in image_processor.image_std),  # type: ignore[arg-type]
            rescale=float(image_processor.rescale_factor),
            resize=resize,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std), "resize": self.resize}


def notebook_resize(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8: bilinear at half-pixel centres, no antialiasing, truncated to uint8 (the notebook's
    `tf_resize(...).numpy().astype(np.uint8)`)."""
    import torch

    rgb = img if img.mode == "RGB" else img.convert("RGB")
    if (rgb.height, rgb.width) == size:
        return np.array(rgb)
    # One channel at a time, read straight from the image: bilinear resizing never mixes channels, so the result
    # is the same, and a large image is never copied whole (a 4000x4000 image: a 16 MB band and its 64 MB float
    # copy at a time, instead of a 48 MB array and a 192 MB float copy).
    out = np.empty((*size, 3), np.uint8)
    for c in range(3):
        band = np.array(rgb.getchannel(c))  # (H, W) uint8, writable
        t = torch.from_numpy(band)[None, None].float()
        del band
        r = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=False)
        out[..., c] = r[0, 0].numpy().astype(np.uint8)
    return out


def normalize(arr: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32, rescaled then normalised in the processor's order and precision."""
    x = arr.astype(np.float32) * np.float32(pp.rescale)
    x = (x - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def to_pixels(img: Image.Image, pp: Preprocessing, image_processor: Any = None) -> np.ndarray:
    """One image -> (3, H, W) float32 model input."""
    if pp.resize == "processor":
        if image_processor is None:
            raise ValueError("resize='processor' needs the checkpoint's image processor")
        out = image_processor(images=[img.convert("RGB")], return_tensors="np")["pixel_values"]
        return np.asarray(out[0], dtype=np.float32)
    return normalize(notebook_resize(img, pp.size), pp)


def load_image_processor(path: str | Path) -> Any:
    """The checkpoint's image processor (PIL backend: torchvision is not needed)."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(path))
