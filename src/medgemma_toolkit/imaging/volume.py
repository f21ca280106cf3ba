"""An ordered CT/MR volume -> the parts MedGemma 1.5 expects: up to 85 slice images, each followed by "SLICE n".

CT slices carry three HU windows in R, G, B (`windows.py`); MR and other modalities are min-max normalised over
the whole volume (not per slice, so intensities stay comparable between slices), as Google's notebooks do.
Slices are sampled uniformly over the ordered stack the way Google's CT notebook does (`sample_indices`); labels
count the sampled slices from 1, as the notebooks do. Each image carries its instance's manifest entry (file,
InstanceNumber, SOPInstanceUID) for `preview --json`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..core.messages import ImagePart, Part, TextPart
from ..errors import BadInput
from .dicom import dicom_to_rgb
from .manifest import dicom_info
from .options import DEFAULT_IMAGE_SIZE, ImageOptions, padded
from .series import MAX_SERIES_FILES, SeriesVolume, assemble_volume, read_instance, series_files
from .square import scale_to_uint8, to_model_image
from .windows import get_ct_windows, window_lut, windows_to_rgb

if TYPE_CHECKING:
    import numpy.typing as npt
    from pydicom.dataset import Dataset

DEFAULT_MAX_SLICES = 85  # MedGemma 1.5's CT/MR protocol
VOLUME_MODALITIES = {"CT", "MR", "PT"}
MAX_2D_INSTANCES = 16  # a folder of radiographs, not a series: each file is one image
_CHUNK = 8  # slices rendered and resized together
_RENDER_BYTES = 64 * 1024**2  # working set of one such group, at most (but always at least one slice)


def sample_indices(n: int, k: int, method: str = "notebook") -> list[int]:
    """`k` of `n` ordered slices; all of them when n <= k.

    "notebook" (default) is Google's CT notebook: index round(i / k * (n - 1)) for i = 1..k, with Python's round
    (ties to even), so the first slice is never taken. "linspace" spreads k indices evenly, first and last included.

    >>> sample_indices(10, 4, "linspace")
    [0, 3, 6, 9]
    >>> sample_indices(10, 4)
    [2, 4, 7, 9]
    """
    if k < 1:
        raise BadInput("the number of slices to sample must be at least 1")
    if n <= k:
        return list(range(n))
    if method == "notebook":
        return [int(round(i / k * (n - 1))) for i in range(1, k + 1)]
    if method != "linspace":
        raise BadInput(f"--slice-sampling must be 'notebook' or 'linspace', got {method!r}")
    if k == 1:
        return [n // 2]
    return [int(i) for i in np.round(np.linspace(0, n - 1, k)).astype(int)]


def slice_renderer(vol: SeriesVolume, options: ImageOptions) -> Callable[[list[int]], np.ndarray]:
    """A function from slice indices to (n, rows, cols, 4) uint8 slices (RGB plus an unused 4th byte).

    Everything that depends on the whole volume (the CT lookup table, the MR min-max) is computed once here, so
    slices can then be rendered a few at a time (see `volume_parts`). Four bytes per pixel because it is the
    layout Pillow and torch's fast resize use, and because a CT window table packed as uint32 is one `np.take`.
    """
    lo: float
    hi: float
    if vol.modality == "CT":
        windows = get_ct_windows(options.ct_windows)
        stored = vol.stored
        same_rescale = np.all(vol.slopes == vol.slopes[0]) and np.all(vol.intercepts == vol.intercepts[0])
        if same_rescale and stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 and stored.size:
            lo, hi = int(stored.min()), int(stored.max())
            lut = window_lut(windows, float(vol.slopes[0]), float(vol.intercepts[0]), lo, hi).astype(np.uint32)
            packed = lut[:, 0] | (lut[:, 1] << 8) | (lut[:, 2] << 16)

            # Buffers reused between calls (callers consume a batch before asking for the next): fresh multi-MB
            # temporaries per batch cost more in page faults than the lookup itself.
            bufs: dict[str, np.ndarray] = {}

            def reuse(name: str, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
                b = bufs.get(name)
                if b is None or b.shape[0] < shape[0] or b.shape[1:] != shape[1:]:
                    b = bufs[name] = np.empty(shape, dtype=dtype)
                return b[: shape[0]]

            def render_lut(idx: list[int]) -> np.ndarray:
                shape = (len(idx),) + stored.shape[1:]
                sub = np.take(stored, np.asarray(idx), axis=0, out=reuse("sub", shape, stored.dtype), mode="clip")
                if lo:
                    index = reuse("index", shape, np.int32)
                    np.subtract(sub, lo, out=index, dtype=np.int32)
                else:
                    index = sub
                # mode="clip": indices are in range by construction, and "raise" would buffer the output
                out = np.take(packed, index, out=reuse("rgbx", shape, np.uint32), mode="clip")
                return out.view(np.uint8).reshape(shape + (4,))

            return render_lut
        return lambda idx: _pad4(windows_to_rgb(vol.hu(idx), windows))
    # MR and the rest: one min-max over the whole volume, found a few slices at a time (no full float copy).
    lo, hi = np.inf, -np.inf
    for k in range(0, vol.num_slices, _CHUNK):
        chunk = vol.hu(list(range(k, min(k + _CHUNK, vol.num_slices))))
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    return lambda idx: _pad4(np.repeat(scale_to_uint8(vol.hu(idx), lo, hi)[..., None], 3, axis=-1))


def volume_rgbx(vol: SeriesVolume, indices: list[int], options: ImageOptions) -> np.ndarray:
    """(len(indices), rows, cols, 4) uint8 slices before padding and resizing (a new array)."""
    return np.array(slice_renderer(vol, options)(indices))


def volume_rgb(vol: SeriesVolume, indices: list[int], options: ImageOptions) -> np.ndarray:
    """(len(indices), rows, cols, 3) uint8 slices as the model sees them before padding and resizing."""
    return np.ascontiguousarray(volume_rgbx(vol, indices, options)[..., :3])


def _pad4(rgb: np.ndarray) -> np.ndarray:
    out = np.zeros(rgb.shape[:-1] + (4,), dtype=np.uint8)
    out[..., :3] = rgb
    return out


class BatchResizer:
    """(n, h, w, 4) uint8 slices -> n RGB `size` x `size` images: centred black padding to square, then bilinear.

    Slices go through torch's public uint8 antialiased resize in one call per batch (several times faster than
    Pillow per slice); without torch, Pillow's resize. The two resizes differ by at most 2 grey levels on a few
    pixels; either way the result is what the model receives (the processor's own resize is then a no-op), and
    what `preview` shows. Public APIs only: each image is Pillow's own copy of its slice (`Image.frombytes` with
    the RGBX raw mode unpacks it in C), so no image shares memory with a buffer that is reused.
    """

    def __init__(self, size: int, total: int = 0) -> None:
        self.size = size  # `total` (slices to come) is accepted for callers that know it; nothing is preallocated

    def __call__(self, slices: np.ndarray) -> list[Image.Image]:
        n, h, w, _ = slices.shape
        side, size = max(h, w), self.size
        if h != w:
            square = np.zeros((n, side, side, 4), dtype=np.uint8)
            top, left = (side - h) // 2, (side - w) // 2
            square[:, top : top + h, left : left + w] = slices
            slices = square
        if side != size:
            try:
                slices = self._resize_torch(slices)
            except ImportError:
                return [
                    Image.frombuffer("RGBX", (side, side), np.ascontiguousarray(s), "raw", "RGBX", 0, 1)
                    .convert("RGB")
                    .resize((size, size), Image.Resampling.BILINEAR)
                    for s in slices
                ]
        return [_rgb_image(s) for s in slices]

    def _resize_torch(self, slices: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        # NHWC memory seen as NCHW is the channels-last layout torch's fast uint8 kernel wants; its output keeps
        # that layout, so the permute back is a view.
        x = torch.from_numpy(np.ascontiguousarray(slices)).permute(0, 3, 1, 2)
        y = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return y.permute(0, 2, 3, 1).numpy()


def _rgb_image(rgbx: np.ndarray) -> Image.Image:
    """An RGB image from (h, w, 4) uint8 memory (the 4th byte ignored), copied by Pillow's C unpacker."""
    h, w = rgbx.shape[:2]
    return Image.frombytes("RGB", (w, h), np.ascontiguousarray(rgbx), "raw", "RGBX")


def model_images(slices: np.ndarray, size: int) -> list[Image.Image]:
    """One-off `BatchResizer` call."""
    return BatchResizer(size)(slices)


def volume_parts(vol: SeriesVolume, options: ImageOptions, size: int) -> list[Part]:
    """Image, "SLICE n", image, "SLICE n", ... for the sampled slices."""
    rows, cols = vol.stored.shape[1:]
    if rows * cols > options.max_pixels:
        raise BadInput(f"slices are {cols}x{rows} pixels, over the limit of {options.max_pixels:,}")
    indices = sample_indices(vol.num_slices, options.max_slices, options.slice_sampling)
    render = slice_renderer(vol, options)
    images: list[Image.Image] = []
    # A few slices at a time: the working set (about 3 MB per 896-px slice) stays in cache, which is twice as
    # fast as one pass over the whole volume when other processes compete for memory bandwidth.
    resize = BatchResizer(size, total=len(indices))
    # Large slices go fewer at a time: rendering costs ~10 bytes a pixel (index, RGBX, square copy), so 8 slices of
    # 2000x2000 would hold 320 MB at once. Each slice's result does not depend on its batch-mates.
    chunk = max(1, min(_CHUNK, _RENDER_BYTES // max(1, rows * cols * 10)))
    for k in range(0, len(indices), chunk):
        images.extend(resize(render(indices[k : k + chunk])))
    parts: list[Part] = []
    for n, (img, i) in enumerate(zip(images, indices), start=1):
        info = {
            "source": vol.names[i] if vol.names else None,
            "instance_number": vol.instance_numbers[i] if vol.instance_numbers else None,
            "sop_instance_uid": vol.sop_instance_uids[i] if vol.sop_instance_uids else None,
            "patch": None,
        }
        parts.append(ImagePart(img, info=info))
        parts.append(TextPart(f"SLICE {n}"))
    return parts


def instances_parts(items: list[tuple[str, Dataset]], options: ImageOptions, size: int, source: str) -> list[Part]:
    """Parts for a set of (name, Dataset): one volume for CT/MR/PT, else one 2D image per instance.

    A folder of radiographs (e.g. PA and lateral) is several images, not a stack of slices.
    """
    modalities = {str(ds.get("Modality", "") or "").upper() for _, ds in items}
    if modalities & VOLUME_MODALITIES:
        vol = assemble_volume(items, source, options.slice_order, options.budget, options.max_pixels)
        return volume_parts(vol, options, size)
    if len(items) > MAX_2D_INSTANCES:
        raise BadInput(
            f"{source}: {len(items)} non-volume DICOM images; at most {MAX_2D_INSTANCES} are sent as separate images"
        )
    return [
        ImagePart(to_model_image(dicom_to_rgb(ds, name, options), size, padded(options)), info=dicom_info(name, ds))
        for name, ds in items
    ]


def load_series_parts(
    files: list[str] | list[Path], options: ImageOptions = ImageOptions(), size: int = DEFAULT_IMAGE_SIZE
) -> list[Part]:
    """Parts for an explicit list of DICOM files (the Python API's way to pass "a list of files").

    Example: `mg.ask("Findings?", images=load_series_parts(sorted(Path("ct").glob("*.dcm"))))`
    """
    if len(files) > MAX_SERIES_FILES:
        raise BadInput(f"{len(files):,} files given; at most {MAX_SERIES_FILES:,} per series")
    if not files:
        raise BadInput("no DICOM files given")
    return instances_parts([(str(f), read_instance(Path(f))) for f in files], options, size, "series")


def load_series_bytes(
    items: list[tuple[str, bytes]], options: ImageOptions = ImageOptions(), size: int = DEFAULT_IMAGE_SIZE
) -> list[Part]:
    """Parts for DICOM files given as (name, bytes), e.g. a series uploaded through the server: the same path as
    a series folder (`instances_parts`), each file parsed under the pixel limit."""
    from .dicom import read_dataset

    if len(items) > MAX_SERIES_FILES:
        raise BadInput(f"{len(items):,} files given; at most {MAX_SERIES_FILES:,} per series")
    if not items:
        raise BadInput("no DICOM files given")
    return instances_parts([(n, read_dataset(d, n, options.max_pixels)) for n, d in items], options, size, "series")


def read_series_source(source: str, options: ImageOptions, size: int) -> list[Part] | None:
    """`load_parts` reader for a series directory or a glob of DICOM files (None for anything else)."""
    files = series_files(source)
    if files is None:
        return None
    return instances_parts([(str(f), read_instance(f)) for f in files], options, size, source)
