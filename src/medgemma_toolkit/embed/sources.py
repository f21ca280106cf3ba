"""Image sources to (image, manifest entry) pairs, and the decode-ahead batching that keeps the model busy.

Every source `ask` accepts works: a 2D file (PNG/JPEG/TIFF/DICOM) gives one image at its original size (MedSigLIP's
own resize follows); a CT/MR series, a whole slide or a DICOMweb reference gives one image per slice or patch, as
`imaging` samples them (already at the model's size), each with its manifest entry (`imaging/manifest.py`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from ..core.messages import ImagePart
from ..errors import BadInput
from ..imaging import ImageOptions, decode_image_bytes
from ..imaging.dicom import dicom_to_rgb, looks_like_dicom, read_dataset
from ..imaging.inputs import load_rich_parts, read_file_bytes
from ..imaging.manifest import FIELDS, dicom_info, image_manifest

ImageSource = Any  # a path (str / PathLike), raw bytes, or a PIL image
Entry = dict[str, Any]
T = TypeVar("T")


def _entry(**info: Any) -> Entry:
    return {f: info.get(f) for f in FIELDS}


def source_images(
    source: ImageSource, options: ImageOptions, size: int, index: int = 0
) -> list[tuple[Image.Image, Entry]]:
    """The images one source gives the model, in order, each with its manifest entry."""
    if isinstance(source, Image.Image):
        return [(source.convert("RGB"), _entry(source=f"<image {index}>"))]
    if isinstance(source, (bytes, bytearray)):
        name = f"<image {index}>"
        return [(decode_image_bytes(bytes(source), name, options), _entry(source=name))]
    if not isinstance(source, (str, os.PathLike)):
        raise BadInput(f"image {index}: expected a path, bytes or a PIL image, got {type(source).__name__}")
    src = str(source)
    parts = load_rich_parts(src, options, size)
    if parts is not None:
        images = [p.image for p in parts if isinstance(p, ImagePart)]
        return list(zip(images, image_manifest(parts)))
    data = read_file_bytes(src)
    if looks_like_dicom(data):
        ds = read_dataset(data, src, options.max_pixels)
        return [(dicom_to_rgb(ds, src, options), _entry(**dicom_info(src, ds)))]
    return [(decode_image_bytes(data, src, options), _entry(source=src))]


def decode_ahead(items: Iterable[T], decode: Callable[[T], list[Any]], workers: int, ahead: int) -> Iterator[list[Any]]:
    """`decode(item)` for each item, in order, computed by `workers` threads up to `ahead` items in advance, so
    decoding and resizing (PIL, pydicom and torch release the GIL) overlap the model's forward passes."""
    if workers <= 0:
        for it in items:
            yield decode(it)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    pending: deque[Future[list[Any]]] = deque()
    source = iter(items)
    try:
        for it in source:
            pending.append(pool.submit(decode, it))
            if len(pending) >= ahead:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(source, _END)
            if nxt is not _END:
                pending.append(pool.submit(decode, nxt))  # type: ignore[arg-type]
            yield done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def batched(groups: Iterable[list[tuple[np.ndarray, Entry]]], size: int) -> Iterator[tuple[np.ndarray, list[Entry]]]:
    """Flatten per-source lists of (pixels, entry) into stacked batches of at most `size` images."""
    px: list[np.ndarray] = []
    entries: list[Entry] = []
    for group in groups:
        for p, e in group:
            px.append(p)
            entries.append(e)
            if len(px) == size:
                yield np.stack(px), entries
                px, entries = [], []
    if px:
        yield np.stack(px), entries
