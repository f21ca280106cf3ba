"""Whole-slide images (SVS, NDPI, pyramidal TIFF via tiffslide; DICOM WSI via wsidicom) -> tissue patches.

The pipeline of MedGemma's pathology notebook: pick the pyramid level nearest 1 µm/pixel (about 10X), find
tissue on a thumbnail (Otsu threshold on HSV saturation: stained tissue is coloured, glass is grey-white), tile
the level into 896-pixel patches, keep those mostly covered by tissue, and sample up to K of them with a seed.
Every patch keeps its level-0 coordinates; `preview` prints them under each patch.

Only whole patches are taken (a partial strip at the right and bottom edges is skipped); a level smaller than
one patch becomes a single patch padded with white.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np
from PIL import Image

from ..core.messages import ImagePart, Part
from ..errors import BackendUnavailable, BadInput, MedGemmaError
from .options import ImageOptions
from .square import to_model_image

if TYPE_CHECKING:
    from wsidicom import WsiDicom

TARGET_MPP = 1.0  # µm per pixel: about 10X
PATCH_PX = 896
MIN_TISSUE = 0.25  # fraction of a patch the tissue mask must cover
MIN_SATURATION = 20  # floor under Otsu's threshold (0..255): a blank slide must not turn noise into tissue
THUMB_SIDE = 1024
SLIDE_SUFFIXES = {".svs", ".ndpi", ".scn", ".bif", ".svslide"}
OPENSLIDE_ONLY = {".mrxs", ".vms", ".vmu"}
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


class Slide(Protocol):
    """What the tiler needs from a slide library."""

    dimensions: list[tuple[int, int]]  # (width, height) per level
    downsamples: list[float]
    mpp: float | None  # µm per pixel at level 0

    def thumbnail(self, max_side: int) -> Image.Image: ...

    def read(self, level: int, x: int, y: int, w: int, h: int) -> Image.Image:
        """RGB region at `level`, (x, y) in that level's pixels."""
        ...


@dataclass
class Patch:
    x: int  # level-0 pixels
    y: int
    level: int
    tissue: float
    image: Image.Image

    @property
    def label(self) -> str:
        return f"x={self.x} y={self.y} L{self.level}"


@dataclass
class SlidePatches:
    patches: list[Patch]
    level: int
    mpp: float | None  # at the chosen level
    tissue_patches: int  # before sampling
    grid: tuple[int, int]  # (columns, rows) of whole patches at the chosen level


class _TiffSlide:
    def __init__(self, path: str) -> None:
        import tiffslide

        self._s = tiffslide.TiffSlide(path)
        self.dimensions = cast(list[tuple[int, int]], [tuple(map(int, d)) for d in self._s.level_dimensions])
        self.downsamples = [float(d) for d in self._s.level_downsamples]
        props = self._s.properties
        mpp = props.get("tiffslide.mpp-x") or props.get("openslide.mpp-x")
        power = props.get("tiffslide.objective-power") or props.get("openslide.objective-power")
        self.mpp = float(mpp) if mpp else (10.0 / float(power) if power else None)

    def thumbnail(self, max_side: int) -> Image.Image:
        return self._s.get_thumbnail((max_side, max_side)).convert("RGB")

    def read(self, level: int, x: int, y: int, w: int, h: int) -> Image.Image:
        ds = self.downsamples[level]
        return self._s.read_region((round(x * ds), round(y * ds)), level, (w, h)).convert("RGB")


class _OpenSlide(_TiffSlide):
    def __init__(self, path: str) -> None:
        try:
            import openslide
        except ImportError:
            raise BackendUnavailable(
                f"{path}: this slide format needs OpenSlide: pip install openslide-python openslide-bin"
            ) from None
        self._s = openslide.OpenSlide(path)
        self.dimensions = cast(list[tuple[int, int]], [tuple(map(int, d)) for d in self._s.level_dimensions])
        self.downsamples = [float(d) for d in self._s.level_downsamples]
        mpp = self._s.properties.get("openslide.mpp-x")
        power = self._s.properties.get("openslide.objective-power")
        self.mpp = float(mpp) if mpp else (10.0 / float(power) if power else None)


class _DicomSlide:
    def __init__(self, source: WsiDicom) -> None:
        self._w = source
        levels = list(source.levels)
        self._levels = [lv.level for lv in levels]
        self.dimensions = [(int(lv.size.width), int(lv.size.height)) for lv in levels]
        self.downsamples = [self.dimensions[0][0] / d[0] for d in self.dimensions]
        self.mpp = float(levels[0].mpp.width) if levels[0].mpp is not None else None

    def thumbnail(self, max_side: int) -> Image.Image:
        # The smallest level, resized: read_thumbnail may want levels this slide does not have.
        k = len(self.dimensions) - 1
        w, h = self.dimensions[k]
        img = self.read(k, 0, 0, w, h)
        img.thumbnail((max_side, max_side))
        return img

    def read(self, level: int, x: int, y: int, w: int, h: int) -> Image.Image:
        return self._w.read_region((x, y), self._levels[level], (w, h)).convert("RGB")


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold over uint8 values: the cut maximising between-class variance."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    bins = np.arange(256)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * bins)
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return int(np.argmax(between))


def tissue_mask(thumb: Image.Image) -> np.ndarray:
    """Boolean mask: saturation above max(Otsu, MIN_SATURATION)."""
    sat = np.asarray(thumb.convert("HSV"))[..., 1]
    return sat > max(otsu_threshold(sat), MIN_SATURATION)


def choose_level(slide: Slide, target_mpp: float = TARGET_MPP) -> int:
    """The level whose pixel size is nearest `target_mpp` on a log scale; level 0 when the scale is unknown."""
    if not slide.mpp:
        return 0
    errs = [abs(math.log(slide.mpp * ds / target_mpp)) for ds in slide.downsamples]
    return int(np.argmin(errs))


def tile_slide(
    slide: Slide,
    options: ImageOptions,
    patch_px: int = PATCH_PX,
    target_mpp: float = TARGET_MPP,
    min_tissue: float = MIN_TISSUE,
) -> SlidePatches:
    level = choose_level(slide, target_mpp)
    lw, lh = slide.dimensions[level]
    thumb = slide.thumbnail(THUMB_SIDE)
    mask = tissue_mask(thumb)
    sx, sy = mask.shape[1] / lw, mask.shape[0] / lh  # level pixels -> thumbnail pixels
    cols, rows = max(1, lw // patch_px), max(1, lh // patch_px)
    kept: list[tuple[int, int, float]] = []
    for r in range(rows):
        for c in range(cols):
            x0, y0 = c * patch_px, r * patch_px
            x1, y1 = min(x0 + patch_px, lw), min(y0 + patch_px, lh)
            m = mask[
                int(y0 * sy) : max(int(y0 * sy) + 1, int(math.ceil(y1 * sy))),
                int(x0 * sx) : max(int(x0 * sx) + 1, int(math.ceil(x1 * sx))),
            ]
            frac = float(m.mean()) if m.size else 0.0
            if frac >= min_tissue:
                kept.append((c, r, frac))
    if not kept:
        raise BadInput("no tissue found on the slide (saturation mask is empty)")
    rng = np.random.default_rng(options.patch_seed)
    order = rng.permutation(len(kept))[: options.max_patches]
    if options.patch_order == "spatial":
        order = np.sort(order)
    ds = slide.downsamples[level]
    patches: list[Patch] = []
    for k in order:
        c, r, frac = kept[int(k)]
        x0, y0 = c * patch_px, r * patch_px
        w, h = min(patch_px, lw - x0), min(patch_px, lh - y0)
        if options.budget is not None:  # the request's one budget: each patch is charged before it is read
            options.budget.charge(w * h, f"slide patch {len(patches) + 1}")
        region = slide.read(level, x0, y0, w, h)
        if region.size != (patch_px, patch_px):  # a level smaller than one patch: pad with glass white
            canvas = Image.new("RGB", (patch_px, patch_px), (255, 255, 255))
            canvas.paste(region, (0, 0))
            region = canvas
        patches.append(Patch(round(x0 * ds), round(y0 * ds), level, frac, region))
    mpp = slide.mpp * ds if slide.mpp else None
    return SlidePatches(patches, level, mpp, len(kept), (cols, rows))


def open_slide(source: str) -> Slide | None:
    """A slide reader for `source`, or None when it is not a whole-slide image."""
    p = Path(source)
    try:
        is_dir, is_file = p.is_dir(), p.is_file()
    except (OSError, ValueError):  # a name too long to be a path, or with NUL
        return None
    if is_dir:
        return _open_dicom_wsi(p)
    if not is_file:
        return None
    suffix = p.suffix.lower()
    if suffix in OPENSLIDE_ONLY:
        return _OpenSlide(source)
    if suffix in SLIDE_SUFFIXES or (suffix in (".tif", ".tiff") and _is_pyramidal_tiff(p)):
        try:
            return _TiffSlide(source)
        except ImportError:
            raise BackendUnavailable(
                "whole-slide images need tiffslide: pip install 'medgemma-toolkit[imaging]'"
            ) from None
        except Exception as e:
            raise BadInput(f"{source}: cannot open as a whole-slide image ({type(e).__name__})") from None
    return None


def _is_pyramidal_tiff(path: Path) -> bool:
    """Tiled with more than one resolution: a slide; a plain (even tiled) TIFF stays a 2D image."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            return bool(page.is_tiled) and len(tf.series[0].levels) > 1
    except Exception:
        return False


def _open_dicom_wsi(directory: Path) -> Slide | None:
    import pydicom

    from .dicom import quiet_pydicom

    first = next((f for f in sorted(directory.iterdir()) if f.is_file() and not f.name.startswith(".")), None)
    if first is None:
        return None
    quiet_pydicom()
    try:
        head = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:
        return None
    if str(head.get("SOPClassUID", "")) != WSI_SOP_CLASS:
        return None
    try:
        from wsidicom import WsiDicom
    except ImportError:
        raise BackendUnavailable(
            "DICOM whole-slide images need wsidicom: pip install 'medgemma-toolkit[imaging]'"
        ) from None
    try:
        return _DicomSlide(WsiDicom.open(directory))
    except Exception as e:
        raise BadInput(f"{directory}: cannot open as a DICOM whole-slide image ({type(e).__name__})") from None


def slide_parts(slide: Slide, options: ImageOptions, size: int, source: str = "slide") -> list[Part]:
    try:
        result = tile_slide(slide, options)
    except MedGemmaError:
        raise
    except Exception as e:  # corrupt tiles or metadata surface from the slide libraries as many types
        raise BadInput(f"{source}: cannot read the whole-slide image ({type(e).__name__})") from None
    return [
        ImagePart(
            to_model_image(p.image, size),
            label=p.label,
            info={"source": source, "instance_number": None, "sop_instance_uid": None, "patch": [p.x, p.y, p.level]},
        )
        for p in result.patches
    ]


def read_slide_source(source: str, options: ImageOptions, size: int) -> list[Part] | None:
    """`load_parts` reader for whole-slide files and DICOM WSI directories (None for anything else)."""
    slide = open_slide(source)
    if slide is None:
        return None
    return slide_parts(slide, options, size, source)
