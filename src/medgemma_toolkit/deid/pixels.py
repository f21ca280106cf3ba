"""Clean Pixel Data (`deid --clean-pixels`): find text burned into the pixels, blank it, say where (never what).

Ultrasound, secondary captures and many XA/CR images carry the patient's name and dates in their pixels, where no
header rule reaches. Two sources of regions, used together:
- OCR (Debian's tesseract through pytesseract), twice per frame: the contrast-stretched, inverted frame (grey
  text on a dark background, as ultrasound draws it) and its pixels above 80% of the range (white text
  anywhere), both as sparse text and enlarged; every word box found, however garbled its reading (a lone
  low-confidence character excepted), marks text, and is widened to the run of pixels above 45% of the range
  about as tall as the word that it sits in, so a partly read line is blanked whole. A second pass over the
  cleaned frame catches what the first one missed. Frames under 48 px a side are not read.
- rules a site knows for its devices (JSON: Manufacturer, ManufacturerModelName, Rows, Columns -> rectangles).
Regions are set to the frame's darkest value (brightest for MONOCHROME1). BurnedInAnnotation becomes NO and the
Clean Pixel Data option (113101) is declared only when every frame went through this; a compressed image is
re-encoded losslessly (RLE Lossless) after cleaning, an uncompressed one stays uncompressed. Pixels outside the
regions are unchanged, and an image with no region found keeps its pixel data as it was.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInput

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

CLEAN_PIXEL_CODE = ("113101", "Clean Pixel Data Option")
# Fractions of the frame's range above which burned-in text is looked for: white text first, then the grey text
# ultrasound and secondary captures often use.
_THRESHOLDS = (0.8, 0.45)
_MIN_SIDE = 48  # px: a frame smaller than this holds no readable text (OCR would only see shapes)
_MAX_MIDTONE = 0.3  # share of mid-tone pixels above which a low-confidence "word" is texture, not text
_MAX_FILL = 0.5  # share of bright pixels above which it is a bright structure, not strokes
_MAX_LINE = 96  # px: a bright run taller than this is anatomy, not a line of text
_MARGIN = 2


class PixelCleanError(BadInput):
    """An image whose pixels cannot be cleaned (an encoding we cannot decode or write back): nothing is written."""


@dataclass(frozen=True)
class Region:
    frame: int
    x: int
    y: int
    width: int
    height: int
    source: str  # "ocr" or "rule"

    def to_dict(self) -> dict:
        return {"frame": self.frame, "x": self.x, "y": self.y, "width": self.width, "height": self.height,
                "source": self.source}  # fmt: skip


@dataclass(frozen=True)
class Rule:
    manufacturer: str | None
    model: str | None
    rows: int | None
    columns: int | None
    boxes: tuple[tuple[int, int, int, int], ...]

    def matches(self, ds: Dataset) -> bool:
        def same(want: str | None, kw: str) -> bool:
            return want is None or str(ds.get(kw, "") or "").strip().casefold() == want.strip().casefold()

        return (
            same(self.manufacturer, "Manufacturer")
            and same(self.model, "ManufacturerModelName")
            and (self.rows is None or int(ds.get("Rows", 0) or 0) == self.rows)
            and (self.columns is None or int(ds.get("Columns", 0) or 0) == self.columns)
        )


def load_rules(path: str | Path) -> list[Rule]:
    """Rules from JSON: `[{"manufacturer": "ACME", "model": "Sono 5", "rows": 480, "columns": 640,
    "regions": [[x, y, width, height], ...]}]`; a missing key matches any value."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rules = []
        for r in data:
            boxes = tuple((int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in r["regions"])
            rows, cols = r.get("rows"), r.get("columns")
            rules.append(
                Rule(
                    r.get("manufacturer"),
                    r.get("model"),
                    int(rows) if rows else None,
                    int(cols) if cols else None,
                    boxes,
                )  # fmt: skip
            )
        return rules
    except OSError:
        raise BadInput(f"{path}: cannot read the pixel rules file") from None
    except (ValueError, KeyError, TypeError, IndexError):
        raise BadInput(f'{path}: pixel rules must be a JSON list of {{..., "regions": [[x, y, w, h]]}}') from None


def _tesseract() -> Any:
    try:
        import pytesseract
    except ImportError:
        raise BadInput("--clean-pixels needs pytesseract (pip install 'medgemma-toolkit[deid]')") from None
    if shutil.which(pytesseract.pytesseract.tesseract_cmd) is None:
        raise BadInput("--clean-pixels needs the tesseract program (Debian/Ubuntu: apt-get install tesseract-ocr)")
    return pytesseract


class PixelCleaner:
    """Finds and blanks burned-in text; one per run (rules loaded and tesseract checked once)."""

    def __init__(self, rules: list[Rule] | None = None, ocr: bool = True) -> None:
        self.rules = rules or []
        self.ocr = _tesseract() if ocr else None

    def clean(self, ds: Dataset) -> list[Region]:
        """Blank text regions of `ds` in place; the regions, by frame and rectangle. Raises PixelCleanError."""
        import numpy as np

        arr, photometric = _decode(ds)
        frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[None, ...]
        regions: list[Region] = []
        boxes = [b for rule in self.rules if rule.matches(ds) for b in rule.boxes]
        for i, frame in enumerate(frames):
            found = [Region(i, *b, "rule") for b in boxes]
            lum = frame.max(axis=-1) if frame.ndim == 3 else frame
            lum = np.asarray(lum, dtype=np.float32)
            lo, hi = float(lum.min()), float(lum.max())
            _blank(lum, found, lo)  # what the rules take is not read again
            if self.ocr is not None and hi - lo >= 1 and min(lum.shape) >= _MIN_SIDE:
                for _ in range(2):  # the second pass checks the result
                    more = [Region(i, *b, "ocr") for b in self._text_boxes(lum, lo, hi, found)]
                    if not more:
                        break
                    found += more
                    _blank(lum, more, lo)  # lo, hi fixed on the original: blanking must not move them
            for r in found:
                _blank(frame, [r], _dark(frame, photometric))
            regions += found
        if regions:  # `frames` is a view of `arr`: the blanked pixels are in it
            _encode(ds, arr, photometric)
        return regions

    def _text_boxes(self, lum: Any, lo: float, hi: float, done: list[Region]) -> list[tuple[int, int, int, int]]:
        import numpy as np
        from PIL import Image
        from scipy import ndimage

        side = max(lum.shape)
        scale = 3 if side <= 400 else 2 if side <= 1024 else 1  # small text reads better enlarged
        size = (lum.shape[1] * scale, lum.shape[0] * scale)
        stretched = (lum - lo) / (hi - lo)
        white = stretched >= _THRESHOLDS[0]
        mask = stretched >= _THRESHOLDS[1]  # the runs of text pixels a word is widened to
        for r in done:
            white[r.y : r.y + r.height, r.x : r.x + r.width] = False
        grey = Image.fromarray((255 - stretched * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
        binary = Image.fromarray(np.where(white, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
        assert self.ocr is not None
        words: list[tuple[str, float, int, int, int, int]] = []
        for img in (grey, binary):  # grey text on dark (ultrasound), then white text anywhere
            data = self.ocr.image_to_data(img, config="--psm 11", output_type=self.ocr.Output.DICT)
            words += [
                (str(t), float(c), data["left"][k], data["top"][k], data["width"][k], data["height"][k])
                for k, (t, c) in enumerate(zip(data["text"], data["conf"]))
            ]
        lines, _ = ndimage.label(ndimage.binary_dilation(mask, structure=np.ones((3, 7), dtype=bool)))
        objects = ndimage.find_objects(lines)
        out = []
        for word, conf, left, top, width, height in words:
            alnum = sum(c.isalnum() for c in word)
            if alnum == 0 or (alnum == 1 and conf < 60):  # a lone low-confidence mark: noise
                continue
            x, y = left // scale, top // scale
            w, h = max(1, width // scale), max(1, height // scale)
            if any(r.x <= x and r.y <= y and x + w <= r.x + r.width and y + h <= r.y + r.height for r in done):
                continue  # already blanked: a blank area read as text again
            patch = stretched[y : y + h, x : x + w]
            midtone = ((patch > 0.15) & (patch < _THRESHOLDS[1])).mean()
            wide = w / alnum > 1.5 * h  # characters far wider than tall: shapes read as letters
            if conf < 60 and (wide or midtone > _MAX_MIDTONE or (patch >= _THRESHOLDS[1]).mean() > _MAX_FILL):
                continue  # texture (anatomy, speckle), not thin strokes on a flat background: a misreading
            box = [x, y, x + w, y + h]
            for label in np.unique(lines[y : y + h, x : x + w]):  # widen to the runs of bright pixels it touches
                if label == 0:
                    continue
                sl = objects[label - 1]
                tall = sl[0].stop - sl[0].start if sl is not None else _MAX_LINE + 1
                if tall <= min(_MAX_LINE, 2 * h + 4):  # a line of text about as tall as the word, not anatomy
                    box = [min(box[0], sl[1].start), min(box[1], sl[0].start),
                           max(box[2], sl[1].stop), max(box[3], sl[0].stop)]  # fmt: skip
            x0, y0 = max(0, box[0] - _MARGIN), max(0, box[1] - _MARGIN)
            x1, y1 = min(lum.shape[1], box[2] + _MARGIN), min(lum.shape[0], box[3] + _MARGIN)
            out.append((x0, y0, x1 - x0, y1 - y0))
        return out


def _dark(frame: Any, photometric: str) -> float:
    return float(frame.max()) if photometric == "MONOCHROME1" else float(frame.min())


def _blank(frame: Any, regions: list[Region], value: float) -> None:
    for r in regions:
        frame[max(0, r.y) : r.y + r.height, max(0, r.x) : r.x + r.width] = value


def _decode(ds: Dataset) -> tuple[Any, str]:
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None)
    if ts is not None and not ts.is_little_endian:
        raise PixelCleanError("cannot clean the pixels of a big endian file")
    if int(ds.get("BitsAllocated", 0) or 0) not in (8, 16):
        raise PixelCleanError("cannot clean pixels of this bit depth (8 and 16 bits are supported)")
    try:
        arr = ds.pixel_array.copy()
    except Exception as e:  # a codec plugin missing or failing: the file fails, nothing is written
        raise PixelCleanError(f"cannot decode the pixel data to clean it ({type(e).__name__})") from None
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    if photometric.startswith("YBR") and arr.ndim >= 3 and arr.shape[-1] == 3:
        photometric = "RGB"  # pydicom hands colour back as RGB
    return arr, photometric


def _encode(ds: Dataset, arr: Any, photometric: str) -> None:
    from pydicom.uid import RLELossless

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    compressed = ts is not None and ts.is_compressed
    frames = ds.get("NumberOfFrames")
    ds.set_pixel_data(arr, photometric, int(ds.BitsStored), generate_instance_uid=False)
    if frames is not None and "NumberOfFrames" not in ds:
        ds.NumberOfFrames = frames  # multi-frame IODs require it even for one frame
    if compressed:
        try:
            ds.compress(RLELossless, generate_instance_uid=False)
        except Exception as e:
            raise PixelCleanError(f"cannot re-encode the cleaned pixels losslessly ({type(e).__name__})") from None
