"""`embed --workers N / --ray`: the image sources in groups, each group embedded by a worker with its own model.

The unit of work is a group of `batch_size` consecutive sources (one forward pass of 2D files, as one process
batches them), or the texts (one unit, batched as one process does). A worker loads MedSigLIP once and returns the
group's unit vectors with their manifest entries; the driver puts the groups back in input order, so the vectors
and rows equal one process's and go through the same writer (`embed/output.py`, atomic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.scatter import Scatter
from ..imaging import ImageOptions
from .model import Embeddings

if TYPE_CHECKING:
    from .model import MedSigLIP


@dataclass(frozen=True)
class ImageGroup:
    start: int  # index of the group's first source among the --image values
    sources: tuple[str, ...]


@dataclass(frozen=True)
class TextGroup:
    texts: tuple[str, ...]


@dataclass
class Part:
    vectors: np.ndarray
    entries: list[dict[str, Any]]
    info: dict[str, Any]


@dataclass(frozen=True)
class EmbedWorker:
    """Picklable: built in the driver, called once in each worker process or actor (where the model loads)."""

    load: Callable[[], MedSigLIP]
    options: ImageOptions

    def __call__(self) -> Callable[[ImageGroup | TextGroup], Part]:
        ms = self.load()

        def work(unit: ImageGroup | TextGroup) -> Part:
            if isinstance(unit, TextGroup):
                emb = ms.embed_texts(list(unit.texts))
                return Part(emb.vectors, emb.entries, ms.info())
            emb = ms.embed_images(list(unit.sources), self.options)
            # `input` is the source's index in the whole run, not in its group.
            entries = [{**e, "input": unit.start + int(e["input"])} for e in emb.entries]
            return Part(emb.vectors, entries, ms.info())

        return work


def groups(sources: Sequence[str], size: int) -> list[ImageGroup]:
    return [ImageGroup(i, tuple(sources[i : i + size])) for i in range(0, len(sources), max(1, size))]


def embed_scattered(
    scatter: Scatter,
    worker: EmbedWorker,
    sources: Sequence[str],
    texts: Sequence[str] | None,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[Embeddings, Embeddings | None, dict[str, Any]]:
    """(image embeddings, text embeddings or None, the model's info), as `MedSigLIP.embed_images`/`embed_texts`
    give them in one process."""
    image_units = groups(sources, batch_size)
    units: list[ImageGroup | TextGroup] = [*image_units, *([TextGroup(tuple(texts))] if texts else [])]
    parts: dict[int, Part] = {}  # group start -> its part
    text_part: list[Part] = []

    def done(unit: ImageGroup | TextGroup, part: Part) -> None:
        if isinstance(unit, TextGroup):
            text_part.append(part)
            return
        parts[unit.start] = part
        if progress is not None:
            progress(len(part.entries))

    scatter(units, worker, done)
    image_parts = [parts[g.start] for g in image_units]
    info = (image_parts or text_part)[0].info if (image_parts or text_part) else {}
    dim = int(info.get("dim", 0))
    ims = Embeddings(
        np.concatenate([p.vectors for p in image_parts]) if image_parts else np.zeros((0, dim), np.float32),
        [e for p in image_parts for e in p.entries],
    )
    txs = Embeddings(text_part[0].vectors, text_part[0].entries) if text_part else None
    return ims, txs, info
