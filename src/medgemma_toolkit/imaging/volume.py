"""An ordered CT/MR volume -> the parts MedGemma 1.5 expects: up to 85 slice images, each followed by "SLICE n".

CT slices carry three HU windows in R, G, B (`windows.py`); MR and other modalities are min-max normalised over
the whole volume (not per slice, so intensities stay comparable between slices), as Google's notebooks do.
Slices are sampled uniformly over the ordered stack; labels count the sampled slices from 1, as the notebooks do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadInput
from ..prompts.messages import ImagePart, Part, TextPart
from .dicom import dicom_to_rgb
from .options import DEFAULT_IMAGE_SIZE, ImageOptions
from .series import MAX_SERIES_FILES, SeriesVolume, assemble_volume, read_instance, series_files
from .square import scale_to_uint8, to_model_image
from .windows import get_ct_windows, window_lut, windows_to_rgb

DEFAULT_MAX_SLICES = 85  # MedGemma 1.5's CT/MR protocol
VOLUME_MODALITIES = {"CT", "MR", "PT"}
MAX_2D_INSTANCES = 16  # a folder of radiographs, not a series: each file is one image


def sample_indices(n: int, k: int) -> list[int]:
    """`k` indices spread evenly over `n` slices, first and last included; all of them when n <= k.

    >>> sample_indices(10, 4)
    [0, 3, 6, 9]
    """
    if k < 1:
        raise BadInput("the number of slices to sample must be at least 1")
    if n <= k:
        return list(range(n))
    if k == 1:
        return [n // 2]
    return [int(i) for i in np.round(np.linspace(0, n - 1, k)).astype(int)]


def volume_rgbx(vol: SeriesVolume, indices: list[int], options: ImageOptions) -> np.ndarray:
    """(len(indices), rows, cols, 4) uint8 slices (RGB plus an unused 4th byte) before padding and resizing.

    Four bytes per pixel because it is the layout Pillow and torch's fast resize use, and because a CT window
    table packed as uint32 is one `np.take` per voxel.
    """
    idx = np.asarray(indices)
    if vol.modality == "CT":
        windows = get_ct_windows(options.ct_windows)
        stored = vol.stored[idx]
        same_rescale = np.all(vol.slopes == vol.slopes[0]) and np.all(vol.intercepts == vol.intercepts[0])
        if same_rescale and stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 and stored.size:
            lo, hi = int(stored.min()), int(stored.max())
            lut = window_lut(windows, float(vol.slopes[0]), float(vol.intercepts[0]), lo, hi).astype(np.uint32)
            packed = lut[:, 0] | (lut[:, 1] << 8) | (lut[:, 2] << 16)
            index = stored.astype(np.int32) - lo if lo else stored
            return np.take(packed, index).view(np.uint8).reshape(stored.shape + (4,))
        return _pad4(windows_to_rgb(vol.hu(idx), windows))
    # MR and the rest: one min-max over the whole volume.
    values = vol.hu()
    lo, hi = float(values.min()), float(values.max())
    grey = scale_to_uint8(values[idx], lo, hi)
    return _pad4(np.repeat(grey[..., None], 3, axis=-1))


def volume_rgb(vol: SeriesVolume, indices: list[int], options: ImageOptions) -> np.ndarray:
    """(len(indices), rows, cols, 3) uint8 slices as the model sees them before padding and resizing."""
    return np.ascontiguousarray(volume_rgbx(vol, indices, options)[..., :3])


def _pad4(rgb: np.ndarray) -> np.ndarray:
    out = np.zeros(rgb.shape[:-1] + (4,), dtype=np.uint8)
    out[..., :3] = rgb
    return out


def model_images(slices: np.ndarray, size: int) -> list[Image.Image]:
    """(n, h, w, 4) uint8 -> n RGB `size` x `size` images: centred black padding to square, then bilinear resize.

    All slices are resized in one call to torch's uint8 resize (several times faster than Pillow per slice);
    without torch, Pillow's. The two differ by at most 2 grey levels on a few pixels; either way the result is
    what the model receives (the processor's own resize is then a no-op), and what `preview` shows.
    """
    n, h, w, _ = slices.shape
    side = max(h, w)
    if h != w:
        square = np.zeros((n, side, side, 4), dtype=np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        square[:, top : top + h, left : left + w] = slices
        slices = square
    if side != size:
        try:
            import torch
            import torch.nn.functional as F

            x = torch.from_numpy(np.ascontiguousarray(slices)).permute(0, 3, 1, 2)
            y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            slices = y.permute(0, 2, 3, 1).contiguous().numpy()
        except ImportError:
            return [
                Image.frombuffer("RGBX", (side, side), np.ascontiguousarray(s), "raw", "RGBX", 0, 1)
                .convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                for s in slices
            ]
    return [Image.frombuffer("RGBX", (size, size), s, "raw", "RGBX", 0, 1).convert("RGB") for s in slices]


def volume_parts(vol: SeriesVolume, options: ImageOptions, size: int) -> list[Part]:
    """Image, "SLICE n", image, "SLICE n", ... for the sampled slices."""
    rows, cols = vol.stored.shape[1:]
    if rows * cols > options.max_pixels:
        raise BadInput(f"slices are {cols}x{rows} pixels, over the limit of {options.max_pixels:,}")
    indices = sample_indices(vol.num_slices, options.max_slices)
    parts: list[Part] = []
    for n, img in enumerate(model_images(volume_rgbx(vol, indices, options), size), start=1):
        parts.append(ImagePart(img))
        parts.append(TextPart(f"SLICE {n}"))
    return parts


def instances_parts(items: list[tuple[str, object]], options: ImageOptions, size: int, source: str) -> list[Part]:
    """Parts for a set of (name, Dataset): one volume for CT/MR/PT, else one 2D image per instance.

    A folder of radiographs (e.g. PA and lateral) is several images, not a stack of slices.
    """
    modalities = {str(ds.get("Modality", "") or "").upper() for _, ds in items}
    if modalities & VOLUME_MODALITIES:
        return volume_parts(assemble_volume(items, source=source), options, size)
    if len(items) > MAX_2D_INSTANCES:
        raise BadInput(f"{source}: {len(items)} non-volume DICOM images; at most {MAX_2D_INSTANCES} are sent as "
                       "separate images")
    return [ImagePart(to_model_image(dicom_to_rgb(ds, name, options), size)) for name, ds in items]


def load_series_parts(files: list[str] | list[Path], options: ImageOptions = ImageOptions(),
                      size: int = DEFAULT_IMAGE_SIZE) -> list[Part]:
    """Parts for an explicit list of DICOM files (the Python API's way to pass "a list of files").

    Example: `mg.ask("Findings?", images=load_series_parts(sorted(Path("ct").glob("*.dcm"))))`
    """
    if len(files) > MAX_SERIES_FILES:
        raise BadInput(f"{len(files):,} files given; at most {MAX_SERIES_FILES:,} per series")
    if not files:
        raise BadInput("no DICOM files given")
    return instances_parts([(str(f), read_instance(Path(f))) for f in files], options, size, "series")


def read_series_source(source: str, options: ImageOptions, size: int) -> list[Part] | None:
    """`load_parts` reader for a series directory or a glob of DICOM files (None for anything else)."""
    files = series_files(source)
    if files is None:
        return None
    return instances_parts([(str(f), read_instance(f)) for f in files], options, size, source)
