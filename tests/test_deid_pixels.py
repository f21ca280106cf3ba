"""Clean Pixel Data: a canary name and date burned into US/SC pixels at several sizes; OCR finds neither after."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

pytesseract = pytest.importorskip("pytesseract")

NAME, DATE = "QUILL^ROSALIND", "2023-04-01"


def _ocr(arr: np.ndarray) -> str:
    """What tesseract reads, tried plain and enlarged (the check must not be weaker than the cleaner)."""
    img = Image.fromarray(arr if arr.ndim == 2 else arr.max(axis=-1))
    text = pytesseract.image_to_string(img, config="--psm 11")
    text += pytesseract.image_to_string(img.resize((img.width * 3, img.height * 3)), config="--psm 11")
    return text.upper()


def _found(text: str) -> list[str]:
    flat = "".join(c for c in text if c.isalnum())
    return [w for w in ("QUILL", "ROSALIND", "ROSAL", "2023", "0401") if w in flat]


def burned(path, size: int, modality: str, rgb: bool = False, compress: bool = False):
    """A US or SC image with the canary name (top left) and date (bottom right) rendered into its pixels."""
    rng = np.random.default_rng(size)
    yy, xx = np.mgrid[0:240, 0:320]
    arr = (rng.integers(0, 60, (240, 320)) + 110 * (((yy - 120) ** 2 + (xx - 160) ** 2) < 70**2)).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=size)
    draw.text((8, 6), NAME, fill=255, font=font)
    draw.text((170, 232 - size), DATE, fill=240, font=font)
    pixels = np.asarray(img)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1" if modality == "US" else "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = modality, NAME, "PID-1"
    ds.Manufacturer, ds.ManufacturerModelName = "ACME", "Sono 5"
    if modality == "SC":
        ds.ConversionType = "WSD"
    data = np.repeat(pixels[..., None], 3, axis=-1) if rgb else pixels
    ds.set_pixel_data(data, "RGB" if rgb else "MONOCHROME2", 8)
    if compress:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return pixels


@pytest.mark.parametrize(
    ("size", "modality", "rgb", "compress"),
    [(14, "SC", False, False), (18, "US", True, False), (24, "SC", False, True), (36, "US", False, False)],
)
def test_clean_pixels_blanks_the_burned_in_name_and_date(tmp_path, cli, size, modality, rgb, compress):
    src = tmp_path / "in.dcm"
    before = burned(src, size, modality, rgb, compress)
    assert _found(_ocr(before))  # the canary is really readable in the input
    r = cli("deid", "--keep-file-names", str(src), str(tmp_path / "out.dcm"), "--clean-pixels")
    assert r.returncode == 0, r.stdout + r.stderr
    out = pydicom.dcmread(tmp_path / "out.dcm")
    after = out.pixel_array
    assert _found(_ocr(after)) == []
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in {c.CodeValue for c in out.DeidentificationMethodCodeSequence}
    assert out.file_meta.TransferSyntaxUID == (RLELossless if compress else ExplicitVRLittleEndian)
    report = json.loads((tmp_path / "out.dcm.deid.json").read_text())
    regions = report["files"][0]["pixel_regions_cleaned"]
    assert regions and set(regions[0]) == {"frame", "x", "y", "width", "height", "source"}
    assert "QUILL" not in json.dumps(report).upper()  # coordinates, never text
    # Untouched elsewhere: every pixel outside the reported regions is as it was.
    mask = np.ones(before.shape, dtype=bool)
    for g in regions:
        mask[g["y"] : g["y"] + g["height"], g["x"] : g["x"] + g["width"]] = False
    lum = after.max(axis=-1) if after.ndim == 3 else after
    assert np.array_equal(lum[mask], before[mask])
    assert mask[90:150, 130:190].all() and mask.mean() > 0.6  # the text, not the image (the disc), was blanked


def test_rules_blank_a_known_region_and_images_without_text_are_untouched(tmp_path, cli):
    src = tmp_path / "in"
    src.mkdir()
    burned(src / "a.dcm", 24, "US")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"manufacturer": "ACME", "model": "Sono 5", "regions": [[0, 0, 320, 40]]}]))
    r = cli("deid", "--keep-file-names", str(src), str(tmp_path / "out"), "--clean-pixels", "--pixel-rules", str(rules))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "deid_report.json").read_text())
    sources = {g["source"] for g in report["files"][0]["pixel_regions_cleaned"]}
    assert sources == {"rule", "ocr"}  # the rule took the name, OCR the date
    out = pydicom.dcmread(tmp_path / "out" / "a.dcm").pixel_array
    assert (out[:40] == out[:40].min()).all()
    rules.write_text("{not json")
    r = cli("deid", "--keep-file-names", str(src), str(tmp_path / "bad"), "--clean-pixels", "--pixel-rules", str(rules))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
