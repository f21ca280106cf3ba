"""`MedSigLIP`: image and text embeddings and zero-shot scores from a SigLIP checkpoint, batched.

>>> from medgemma_toolkit import MedSigLIP
>>> ms = MedSigLIP.load("medsiglip-448")                 # or any SiglipModel checkpoint directory
>>> ms.embed_images(["cxr.png", "ct_series/"]).vectors.shape
>>> ms.zero_shot(["cxr.png"], ["pleural effusion", "normal chest x-ray"])[0]["scores"]

Embeddings are the towers' pooled outputs divided by their L2 norm: what `SiglipModel` computes before its logits,
and what Google's quick-start notebook does to `SiglipVisionModel`'s pooler output. Zero-shot logits are SigLIP's
own: `exp(logit_scale) * cos(image, text) + logit_bias`; scores are their softmax over the labels (the
`google/medsiglip-448` model card's example), or each label's sigmoid (`scoring="sigmoid"`, SigLIP's training
objective: independent yes/no probabilities that need not sum to 1).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import BadInput, CapabilityError, ModelNotFound
from ..imaging import ImageOptions
from ..models.resolve import resolve_model
from ..runtime.torch_setup import pick_device_dtype
from .preprocess import RESIZES, Preprocessing, Resize, to_pixels
from .sources import Entry, ImageSource, batched, decode_ahead, source_images

Scoring = Literal["softmax", "sigmoid"]
DEFAULT_MODEL = "medsiglip-448"
DEFAULT_TEMPLATE = "{}"  # Google's notebooks pass the label sentences as written ("a photo of an arm with a rash")


@dataclass
class Embeddings:
    """Unit-length vectors, one row per model input image (or text), with what each row is."""

    vectors: np.ndarray  # (n, dim) float32
    entries: list[Entry] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _siglip_dir(path: Path, name: str) -> int | None:
    """Checks that `path` holds a SigLIP checkpoint; returns its image tower's width (hidden size) if stated."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise BadInput(f"{name}: config.json is missing or not JSON") from None
    if cfg.get("model_type") != "siglip":
        raise CapabilityError(
            f"{name}: not a SigLIP checkpoint (model_type {str(cfg.get('model_type'))[:40]!r}); embed, classify "
            f"and probe need a SiglipModel with image and text towers, such as medsiglip-448"
        )
    width = (cfg.get("vision_config") or {}).get("hidden_size")
    return int(width) if isinstance(width, int) else None


@dataclass
class ProcessorParts:
    """The image processor and tokenizer of a checkpoint saved without a combined processor: a bare
    `SiglipModel.save_pretrained` folder still embeds images (SigLIP's preprocessing is fixed by its image size:
    rescale to [0, 1], normalise with mean and std 0.5); texts need the checkpoint's own tokenizer."""

    image_processor: Any
    tokenizer: Any | None


def _processor_parts(path: Path, image_size: int) -> ProcessorParts:
    from transformers import AutoImageProcessor, AutoTokenizer, SiglipImageProcessor

    try:
        ip = AutoImageProcessor.from_pretrained(str(path))
    except (OSError, ValueError, TypeError):
        ip = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError):
        tok = None
    return ProcessorParts(ip, tok)


class MedSigLIP:
    """A loaded SigLIP checkpoint (both towers) with its processor; every entry point batches."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        name: str,
        path: Path,
        resize: Resize = "notebook",
        batch_size: int = 16,
        workers: int | None = None,
    ) -> None:
        if resize not in RESIZES:
            raise BadInput(f"--resize must be one of {', '.join(RESIZES)}; got {resize!r}")
        if batch_size < 1:
            raise BadInput("--batch-size must be at least 1")
        self.model, self.processor, self.name, self.path = model, processor, name, path
        self.image_processor = processor.image_processor
        side = int(model.config.vision_config.image_size)
        if Preprocessing.of(self.image_processor).size != (side, side):
            # The position embeddings fix the input size; a processor saved with another (e.g. transformers'
            # default 224 px beside a 448 px model) would make every image fail in the vision tower.
            self.image_processor.size = {"height": side, "width": side}
        self.pre = Preprocessing.of(self.image_processor, resize)
        self.batch_size = batch_size
        self.workers = max(1, min(4, os.cpu_count() or 1)) if workers is None else workers
        cfg = model.config
        self.dim = int(cfg.vision_config.hidden_size)
        self.max_text_tokens = int(cfg.text_config.max_position_embeddings)

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        allow_download: bool = False,
        resize: Resize = "notebook",
        batch_size: int = 16,
        workers: int | None = None,
    ) -> MedSigLIP:
        """Find `model` offline (variant name, hub id, registered name or directory; default medsiglip-448) and
        load both towers.

        `dtype="auto"` is bf16 on a GPU and, as for MedGemma's inference, on CPUs with bf16 matrix instructions
        (AVX512-BF16, AMX) when the image tower is at least 512 wide (MedSigLIP-448: 1152): 2-3x faster there, its
        unit vectors within cosine 0.999 of fp32 (benchmarks/embed.py measures both); fp32 elsewhere."""
        spec = str(model) if model is not None else DEFAULT_MODEL
        resolved = resolve_model(spec, allow_download=allow_download)
        if resolved.format != "hf":
            raise CapabilityError(f"{spec}: a GGUF file has no SigLIP text tower; give a SiglipModel checkpoint")
        width = _siglip_dir(resolved.path, spec)
        from transformers import AutoProcessor, SiglipModel

        dev, dt = pick_device_dtype(device, dtype, width, inference=True)
        try:
            # transformers wraps `to` in functools.wraps, which mypy does not bind to the instance: a false alarm.
            m = SiglipModel.from_pretrained(str(resolved.path), dtype=dt).to(dev).eval()  # type: ignore[arg-type]
        except OSError as e:
            raise ModelNotFound(f"{spec}: checkpoint files are incomplete ({type(e).__name__})") from None
        try:
            proc = AutoProcessor.from_pretrained(str(resolved.path))
        except (OSError, ValueError, TypeError):
            proc = None
        if getattr(proc, "image_processor", None) is None or getattr(proc, "tokenizer", None) is None:
            proc = _processor_parts(resolved.path, int(m.config.vision_config.image_size))
        return cls(m, proc, spec, resolved.path, resize=resize, batch_size=batch_size, workers=workers)

    # -- images ---------------------------------------------------------------------------------------------
    def _decode(self, options: ImageOptions) -> Callable[[tuple[int, ImageSource]], list[tuple[np.ndarray, Entry]]]:
        side = self.pre.size[0]

        def decode(item: tuple[int, ImageSource]) -> list[tuple[np.ndarray, Entry]]:
            k, src = item
            return [
                (to_pixels(img, self.pre, self.image_processor), {"input": k, **e})
                for img, e in source_images(src, options, side, k)
            ]

        return decode

    def image_batches(
        self,
        sources: Sequence[ImageSource],
        options: ImageOptions = ImageOptions(),
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[np.ndarray, list[Entry]]]:
        """(unit vectors, manifest entries) per batch, in source order; decoding runs ahead on worker threads."""
        groups = decode_ahead(enumerate(sources), self._decode(options), self.workers, ahead=2 * self.batch_size)
        for px, entries in batched(groups, self.batch_size):
            vecs = self.pixels_to_embeddings(px)
            if progress is not None:
                progress(len(entries))
            yield vecs, entries

    def pixels_to_embeddings(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) preprocessed pixels -> (n, dim) unit vectors (the image tower's pooled output, L2-normed)."""
        import torch

        p = next(self.model.parameters())
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(device=p.device, dtype=p.dtype)
            pooled = self.model.vision_model(pixel_values=x).pooler_output
            return _unit(pooled)

    def embed_images(
        self,
        sources: Sequence[ImageSource],
        options: ImageOptions = ImageOptions(),
        progress: Callable[[int], None] | None = None,
    ) -> Embeddings:
        """One unit vector per model input image (a series gives one per sampled slice) with its manifest entry
        and `input`, the index of the source it came from."""
        t0 = time.perf_counter()
        vecs: list[np.ndarray] = []
        entries: list[Entry] = []
        for v, e in self.image_batches(sources, options, progress):
            vecs.append(v)
            entries += e
        out = np.concatenate(vecs) if vecs else np.zeros((0, self.dim), np.float32)
        return Embeddings(out, entries, {"embed_s": time.perf_counter() - t0})

    # -- texts ----------------------------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        """One unit vector per text; padded to the text tower's length (64 tokens for MedSigLIP) as it was
        trained, longer texts truncated."""
        import torch

        texts = [str(t) for t in texts]
        if any(not t.strip() for t in texts):
            raise BadInput("texts must not be empty")
        if self.processor.tokenizer is None:
            raise CapabilityError(
                f"{self.name}: the checkpoint has no tokenizer (spiece.model or tokenizer.json), so it embeds "
                "images only; texts, labels and zero-shot need the tokenizer saved beside the weights"
            )
        t0 = time.perf_counter()
        p = next(self.model.parameters())
        out: list[np.ndarray] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.processor.tokenizer(
                texts[i : i + self.batch_size],
                padding="max_length",
                max_length=self.max_text_tokens,
                truncation=True,
                return_tensors="pt",
            )
            with torch.inference_mode():
                pooled = self.model.text_model(**{k: v.to(p.device) for k, v in enc.items()}).pooler_output
            out.append(_unit(pooled))
        vecs = np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
        return Embeddings(
            vecs, [{"input": k, "text": t} for k, t in enumerate(texts)], {"embed_s": time.perf_counter() - t0}
        )

    # -- zero-shot ------------------------------------------------------------------------------------------
    @property
    def logit_scale_bias(self) -> tuple[float, float]:
        return float(self.model.logit_scale.exp().item()), float(self.model.logit_bias.item())

    def label_texts(self, labels: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
        if not labels:
            raise BadInput("give at least one label")
        if "{}" not in template:
            raise BadInput("--template must contain {} where the label goes, e.g. 'a chest X-ray showing {}'")
        return [template.replace("{}", str(lab).strip()) for lab in labels]

    def scores(
        self, image_vecs: np.ndarray, text_vecs: np.ndarray, scoring: Scoring = "softmax"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits, scores), each (n_images, n_labels)."""
        if scoring not in ("softmax", "sigmoid"):
            raise BadInput(f"--scoring must be softmax or sigmoid; got {scoring!r}")
        scale, bias = self.logit_scale_bias
        logits = (image_vecs.astype(np.float64) @ text_vecs.astype(np.float64).T) * scale + bias
        if scoring == "sigmoid":
            return logits, 1.0 / (1.0 + np.exp(-logits))
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return logits, z / z.sum(axis=1, keepdims=True)

    def zero_shot(
        self,
        images: Sequence[ImageSource],
        labels: Sequence[str],
        *,
        template: str = DEFAULT_TEMPLATE,
        scoring: Scoring = "softmax",
        options: ImageOptions = ImageOptions(),
        progress: Callable[[int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Per model input image: its manifest entry, the score and logit of each label, and the top label."""
        texts = self.label_texts(labels, template)
        tv = self.embed_texts(texts).vectors
        emb = self.embed_images(images, options, progress)
        logits, scores = self.scores(emb.vectors, tv, scoring)
        return [zero_shot_row(e, list(labels), logits[i], scores[i]) for i, e in enumerate(emb.entries)]

    def info(self) -> dict[str, Any]:
        """What produced the vectors (also the probe cache's key: bf16 and fp32 vectors are not mixed)."""
        dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        return {"model": self.name, "dim": self.dim, "dtype": dtype, "preprocessing": self.pre.to_dict()}


def zero_shot_row(entry: Entry, labels: list[str], logits: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    return {
        **entry,
        "scores": {lab: float(s) for lab, s in zip(labels, scores)},
        "logits": {lab: float(v) for lab, v in zip(labels, logits)},
        "top": labels[int(np.argmax(scores))],
    }


def _unit(t: Any) -> np.ndarray:
    v = t.float()
    return (v / v.norm(p=2, dim=-1, keepdim=True)).cpu().numpy().astype(np.float32)
