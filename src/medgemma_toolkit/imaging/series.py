"""A CT or MR series (directory, file list, glob, or datasets from DICOMweb) -> one ordered volume.

Selection rules, in order (each is what a radiologist would expect a viewer to do):

1. Every file must be DICOM with pixel data; a stray non-DICOM file or an image-less instance is an error naming
   the file (a `DICOMDIR` and hidden files are skipped). More than `MAX_SERIES_FILES` files is refused before
   anything is parsed.
2. Instances of more than one series (SeriesInstanceUID) are an error: picking one silently could answer about
   the wrong scan.
3. DERIVED images (ImageType value 1: localisers, MPRs, MIPs) are dropped when ORIGINAL ones exist.
4. Only the largest acquisition (AcquisitionNumber) is kept; ties go to the lowest number.
5. Order (`slice_order`):
   - "instance_number" (default, Google's CT notebook): ascending InstanceNumber, ties in file-name order.
     Documented fallback: when any slice lacks an InstanceNumber or two slices share one, the stack is ordered by
     position instead (`ordered_by` says "normal", `order_fallback` says why), since InstanceNumber then does not
     define an order.
   - "position": along the slice normal: ImagePositionPatient projected on the cross product of the
     ImageOrientationPatient row and column cosines, so oblique and feet-first stacks order correctly.
   When positions are missing too, duplicate InstanceNumbers keep their first instance (files in name order).
6. Sizes and orientations must agree within what is kept; otherwise an error.

Error messages name files and attribute keywords, never header values (they may be PHI).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from ..errors import BadInput, ImageTooLarge, UnsupportedFormat
from .budget import DecodeBudget
from .codestreams import check_frame, quiet_decoders
from .deflate import dcmread_file
from .dicom import quiet_pydicom
from .options import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset, FileDataset

MAX_SERIES_FILES = 4096  # far above any real CT/MR series (~2,000); a guard against pointing at a whole archive
MAX_VOLUME_VOXELS = 2048 * 512 * 512
SKIPPED_NAMES = {"DICOMDIR"}


@dataclass
class SeriesVolume:
    """Ordered slices of one acquisition. `stored` holds raw stored values; HU = stored * slope + intercept."""

    stored: np.ndarray  # (slices, rows, columns)
    slopes: np.ndarray  # (slices,)
    intercepts: np.ndarray  # (slices,)
    modality: str
    positions: np.ndarray  # (slices,) along the slice normal, or instance numbers in the fallback
    ordered_by: str  # "normal" or "instance_number"
    dropped: dict[str, int]  # reason -> count, for reports (counts only, no values)
    instance_numbers: list[int | None] = field(default_factory=list)  # per ordered slice
    sop_instance_uids: list[str | None] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # file name or URL of each ordered slice
    order_fallback: str | None = None  # why the requested order could not be used, if it could not

    @property
    def num_slices(self) -> int:
        return int(self.stored.shape[0])

    def hu(self, index: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Float32 modality values (HU for CT) of all slices or of `index`."""
        idx = slice(None) if index is None else np.asarray(index)
        s = self.stored[idx].astype(np.float32)
        return s * self.slopes[idx, None, None].astype(np.float32) + self.intercepts[idx, None, None].astype(np.float32)


def series_files(source: str) -> list[Path] | None:
    """The DICOM files a source names: a directory's files, or a glob's matches; None if it is neither."""
    p = Path(source)
    try:
        is_dir = p.is_dir()
    except (OSError, ValueError):  # a name too long to be a path, or with NUL: not ours to judge
        return None
    if is_dir:
        files = []
        with os.scandir(p) as it:
            for entry in it:
                if entry.name.startswith(".") or entry.name.upper() in SKIPPED_NAMES or not entry.is_file():
                    continue
                files.append(Path(entry.path))
                if len(files) > MAX_SERIES_FILES:
                    raise BadInput(f"{source}: more than {MAX_SERIES_FILES:,} files; give one series directory")
        if not files:
            raise BadInput(f"{source}: directory holds no files")
        return sorted(files)
    if any(ch in source for ch in "*?[") and not os.path.lexists(source):
        matches: list[Path] = []
        try:
            for m in glob.iglob(source):
                if os.path.isfile(m):
                    matches.append(Path(m))
                    if len(matches) > MAX_SERIES_FILES:  # stop early: the pattern may span a whole disk
                        raise BadInput(f"{source}: more than {MAX_SERIES_FILES:,} files match; give one series")
        except (OSError, ValueError):
            raise BadInput(f"{source[:60]}: not a usable file pattern") from None
        if not matches:
            raise BadInput(f"{source}: no files match this pattern")
        return sorted(matches)
    return None


def read_instance(path: Path) -> FileDataset:
    """Parse one DICOM file; anything unparseable becomes a one-line error naming the file."""
    from pydicom.errors import InvalidDicomError

    quiet_pydicom()
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            part10 = len(head) >= 132 and head[128:132] == b"DICM"
            ds = dcmread_file(f, str(path), DEFAULT_MAX_PIXELS, part10)  # a deflated one under a bound, never whole
            # Without the Part 10 preamble pydicom parses almost any bytes; a real image names its SOP class.
            if not part10 and "SOPClassUID" not in ds and "Rows" not in ds:
                raise InvalidDicomError
            return ds
    except InvalidDicomError:
        raise UnsupportedFormat(f"{path}: not a DICOM file (a series directory must hold only DICOM files)") from None
    except OSError as e:
        raise BadInput(f"{path}: cannot read file ({e.strerror})") from None
    except Exception as e:  # truncated or corrupt headers surface as many exception types
        raise BadInput(f"{path}: corrupt or truncated DICOM ({type(e).__name__})") from None


def load_series(paths: list[Path] | list[str], slice_order: str = "instance_number") -> SeriesVolume:
    """Read files and assemble them into one volume (see the module docstring for the rules)."""
    if len(paths) > MAX_SERIES_FILES:
        raise BadInput(f"{len(paths):,} files given; at most {MAX_SERIES_FILES:,} per series")
    return assemble_volume([(str(p), read_instance(Path(p))) for p in paths], slice_order=slice_order)


@dataclass
class _Slice:
    name: str
    ds: Dataset
    instance: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    derived: bool
    acquisition: int


def _num(ds: Dataset, keyword: str, count: int | None, name: str) -> list[float] | None:
    """A numeric attribute as floats, None when absent; malformed values are an error naming the keyword."""
    from pydicom.multival import MultiValue

    if keyword not in ds:
        return None
    try:
        raw = ds[keyword].value
        if raw is None or raw == "":
            return None
        vals = [float(v) for v in (list(raw) if isinstance(raw, (list, tuple, MultiValue)) else [raw])]
    except Exception:
        raise BadInput(f"{name}: attribute {keyword} is malformed") from None
    if not vals:
        return None
    if count is not None and len(vals) != count:
        raise BadInput(f"{name}: attribute {keyword} has {len(vals)} values, expected {count}")
    if not all(np.isfinite(vals)):
        raise BadInput(f"{name}: attribute {keyword} is not finite")
    return vals


def _describe(name: str, ds: Dataset) -> _Slice:
    if "PixelData" not in ds:
        raise BadInput(f"{name}: DICOM file has no pixel data")
    inst = _num(ds, "InstanceNumber", 1, name)
    acq = _num(ds, "AcquisitionNumber", 1, name)
    pos = _num(ds, "ImagePositionPatient", 3, name)
    ori = _num(ds, "ImageOrientationPatient", 6, name)
    try:
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    except Exception:
        image_type = []
    return _Slice(
        name,
        ds,
        None if inst is None else int(inst[0]),
        None if pos is None else np.array(pos),
        None if ori is None else np.array(ori),
        bool(image_type) and image_type[0] == "DERIVED",
        0 if acq is None else int(acq[0]),
    )


def _select(slices: list[_Slice], dropped: dict[str, int]) -> list[_Slice]:
    original = [s for s in slices if not s.derived]
    if original and len(original) < len(slices):
        dropped["derived"] = len(slices) - len(original)
        slices = original
    groups: dict[int, list[_Slice]] = {}
    for s in slices:
        groups.setdefault(s.acquisition, []).append(s)
    if len(groups) > 1:
        best = max(sorted(groups), key=lambda k: len(groups[k]))
        dropped["other_acquisitions"] = len(slices) - len(groups[best])
        slices = groups[best]
    return slices


def _dedupe(slices: list[_Slice], dropped: dict[str, int]) -> list[_Slice]:
    """Drop repeated instances: same InstanceNumber at the same position (or both without one); first file wins."""
    seen: set[tuple] = set()
    kept = []
    for s in slices:
        if s.instance is not None:
            key = (s.instance, None if s.position is None else tuple(np.round(s.position, 3)))
            if key in seen:
                dropped["duplicate_instance_number"] = dropped.get("duplicate_instance_number", 0) + 1
                continue
            seen.add(key)
        kept.append(s)
    return kept


SLICE_ORDERS = ("instance_number", "position")


def _order(
    slices: list[_Slice], source: str, mode: str, dropped: dict[str, int]
) -> tuple[list[_Slice], np.ndarray, str, str | None]:
    """(ordered slices, their sort keys, "instance_number" or "normal", fallback reason or None)."""
    if mode not in SLICE_ORDERS:
        raise BadInput(f"--slice-order must be one of {', '.join(SLICE_ORDERS)}, got {mode!r}")
    slices = _dedupe(slices, dropped)
    numbers = [s.instance for s in slices]
    unique = None not in numbers and len(set(numbers)) == len(numbers)
    if mode == "instance_number" and unique:
        # Google's CT notebook: sorted(instances, key=InstanceNumber); Python's sort is stable, as is this one.
        inst = np.array(numbers, dtype=np.float64)
        order = np.argsort(inst, kind="stable")
        return [slices[i] for i in order], inst[order], "instance_number", None
    fallback = None
    if mode == "instance_number":
        fallback = "duplicate InstanceNumber" if None not in numbers else "missing InstanceNumber"
    if all(s.position is not None and s.orientation is not None for s in slices):
        ori0 = cast(np.ndarray, slices[0].orientation)  # not None: checked just above
        if any(not np.allclose(cast(np.ndarray, s.orientation), ori0, atol=1e-3) for s in slices):
            raise BadInput(f"{source}: slices have different orientations (ImageOrientationPatient); not one volume")
        normal = np.cross(ori0[:3], ori0[3:])
        if np.linalg.norm(normal) < 1e-6:
            raise BadInput(f"{source}: attribute ImageOrientationPatient has parallel row and column cosines")
        proj = np.array([float(np.dot(cast(np.ndarray, s.position), normal)) for s in slices])
        order = np.argsort(proj, kind="stable")
        return [slices[i] for i in order], proj[order], "normal", fallback
    if all(s.instance is not None for s in slices):
        inst = np.array([s.instance for s in slices], dtype=np.float64)
        order = np.argsort(inst, kind="stable")
        why = None if mode == "instance_number" else "missing ImagePositionPatient/ImageOrientationPatient"
        return [slices[i] for i in order], inst[order], "instance_number", why
    raise BadInput(
        f"{source}: cannot order slices: ImagePositionPatient/ImageOrientationPatient and InstanceNumber missing"
    )


def assemble_volume(
    items: list[tuple[str, Dataset]],
    source: str = "series",
    slice_order: str = "instance_number",
    budget: DecodeBudget | None = None,
    max_slice_pixels: int | None = None,
) -> SeriesVolume:
    """Select, order and stack (name, pydicom Dataset) pairs into one volume.

    With a `budget` (the server's per-request one), the whole volume's voxels, read from the headers, must fit what
    is left of it before any slice decodes, and each slice is charged before it decodes (which also checks the
    request's decoding CPU time between slices); `max_slice_pixels` bounds one slice like one 2D image."""
    from pydicom.pixels import pixel_array

    if not items:
        raise BadInput(f"{source}: no DICOM instances")
    slices = [_describe(name, ds) for name, ds in items]
    series_uids = {str(s.ds.get("SeriesInstanceUID", "")) for s in slices}
    if len(series_uids) > 1:
        raise BadInput(f"{source}: instances of {len(series_uids)} different series; give one series")
    dropped: dict[str, int] = {}
    slices = _select(slices, dropped)
    slices, positions, ordered_by, fallback = _order(slices, source, slice_order, dropped)
    try:
        shapes = {(int(s.ds.Rows), int(s.ds.Columns), int(s.ds.get("SamplesPerPixel", 1) or 1)) for s in slices}
    except (AttributeError, TypeError, ValueError):
        raise BadInput(f"{source}: attribute Rows or Columns missing or malformed") from None
    if len(shapes) > 1:
        raise BadInput(f"{source}: slices have {len(shapes)} different sizes (Rows/Columns); not one volume")
    rows, cols, samples = shapes.pop()
    if samples != 1:
        raise UnsupportedFormat(f"{source}: colour slices ({samples} samples per pixel) are not a CT/MR volume")
    if rows <= 0 or cols <= 0:
        raise BadInput(f"{source}: attribute Rows or Columns is zero")
    if len(slices) * rows * cols > MAX_VOLUME_VOXELS:
        raise ImageTooLarge(
            f"{source}: volume of {len(slices)}x{rows}x{cols} voxels is over the limit of {MAX_VOLUME_VOXELS:,}"
        )
    if max_slice_pixels is not None and rows * cols > max_slice_pixels:
        raise ImageTooLarge(f"{source}: slices of {cols}x{rows} pixels are over the limit of {max_slice_pixels:,}")
    if budget is not None and budget.used_pixels + len(slices) * rows * cols > budget.max_pixels:
        raise ImageTooLarge(
            f"{source}: volume of {len(slices)}x{rows}x{cols} voxels is over this request's limit of "
            f"{budget.max_pixels:,} pixels; send fewer or smaller slices"
        )
    modalities = {str(s.ds.get("Modality", "")).upper() for s in slices}
    if len(modalities) > 1:
        raise BadInput(f"{source}: slices of {len(modalities)} different modalities; not one volume")
    stored = None
    slopes = np.ones(len(slices))
    intercepts = np.zeros(len(slices))
    for i, s in enumerate(slices):
        if budget is not None:
            budget.charge(rows * cols, s.name)  # before this slice decodes
        try:
            arr = _native_pixels(s.ds, rows, cols)
            if arr is None:
                check_frame(s.ds, s.name, 0, 1, rows, cols, rows * cols)  # the codestream's own size, first
                quiet_decoders()
                arr = pixel_array(s.ds)
        except BadInput:
            raise
        except Exception as e:
            raise BadInput(f"{s.name}: cannot decode DICOM pixel data ({type(e).__name__})") from None
        if arr.shape != (rows, cols):
            raise BadInput(f"{s.name}: pixel data is not one {cols}x{rows} frame")
        if stored is None:
            stored = np.empty((len(slices), rows, cols), dtype=arr.dtype)
        stored[i] = arr
        slope = _num(s.ds, "RescaleSlope", 1, s.name)
        inter = _num(s.ds, "RescaleIntercept", 1, s.name)
        slopes[i] = 1.0 if slope is None else slope[0]
        intercepts[i] = 0.0 if inter is None else inter[0]
    assert stored is not None
    uids = [str(s.ds.get("SOPInstanceUID", "")) or None for s in slices]
    return SeriesVolume(
        stored,
        slopes,
        intercepts,
        modalities.pop(),
        positions,
        ordered_by,
        dropped,
        [s.instance for s in slices],
        uids,
        [s.name for s in slices],
        fallback,
    )


_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian


def _native_pixels(ds: Dataset, rows: int, cols: int) -> np.ndarray | None:
    """Uncompressed 16-bit little-endian frames read straight from the buffer (most CT/MR); None otherwise.

    pydicom's general decoder costs more than the read itself for such data; it stays the path for everything
    else (compressed syntaxes, BitsStored < BitsAllocated, which needs masking and sign extension).
    """
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax not in _NATIVE_LE or ds.get("BitsAllocated") != 16 or ds.get("BitsStored") != 16:
        return None
    data = ds.PixelData
    if not isinstance(data, (bytes, bytearray)) or len(data) < rows * cols * 2:
        return None
    dtype = "<i2" if ds.get("PixelRepresentation") == 1 else "<u2"
    return np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)
