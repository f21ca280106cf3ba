"""2D images and DICOM to model-ready RGB, checked against values computed independently here with numpy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medgemma_toolkit.errors import BadInput, ImageTooLarge, UnsupportedFormat
from medgemma_toolkit.imaging import ImageOptions, load_image, to_model_image
from medgemma_toolkit.imaging.square import pad_to_square


def dcm_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path, f"pydicom test file {name} missing"
    return path


def expected_8bit(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    v = values.astype(np.float64)
    lo = v.min() if lo is None else lo
    hi = v.max() if hi is None else hi
    return np.round(np.clip((v - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def write_dicom(
    path,
    pixels: np.ndarray,
    photometric="MONOCHROME2",
    slope=1.0,
    intercept=0.0,
    frames=None,
    bits=16,
    signed=False,
    phi=True,
    **extra,
):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if phi:
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "PHI-123456"
        ds.PatientBirthDate = "19700101"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if frames:
        ds.NumberOfFrames = frames
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_pad_to_square_centres_on_black():
    img = Image.new("RGB", (40, 20), (200, 100, 50))
    sq = np.asarray(pad_to_square(img))
    assert sq.shape == (40, 40, 3)
    assert (sq[:10] == 0).all() and (sq[30:] == 0).all() and (sq[10:30] == [200, 100, 50]).all()


def test_greyscale_rgba_palette_16bit(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    out = np.asarray(load_image(tmp_path / "g.png"))
    assert out.shape == (8, 8, 3) and (out[..., 0] == grey).all() and (out[..., 2] == grey).all()

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png"))
    assert (out[:2, :, 0] == 255).all() and (out[2:] == 0).all()

    sixteen = np.arange(100, dtype=np.uint16).reshape(10, 10) * 600 + 1000
    Image.fromarray(sixteen).save(tmp_path / "s.png")
    out = np.asarray(load_image(tmp_path / "s.png"))
    assert (out[..., 1] == expected_8bit(sixteen)).all()

    Image.fromarray(grey, "L").convert("P").save(tmp_path / "p.bmp")
    for ext in ("tiff", "webp", "jpeg"):
        Image.fromarray(grey, "L").save(tmp_path / f"x.{ext}", **({"lossless": True} if ext == "webp" else {}))
        assert load_image(tmp_path / f"x.{ext}").mode == "RGB"
    assert load_image(tmp_path / "p.bmp").size == (8, 8)


def test_model_image_is_exactly_what_preview_writes(tmp_path):
    img = Image.fromarray((np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8))
    m = to_model_image(img, 64)
    assert m.size == (64, 64) and m.mode == "RGB"
    expected = pad_to_square(img).resize((64, 64), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(m), np.asarray(expected))


def test_ct_small_modality_lut():
    ds = pydicom.dcmread(dcm_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = np.asarray(load_image(dcm_file("CT_small.dcm"), ImageOptions(window="full")))
    assert (out[..., 0] == expected_8bit(hu)).all()
    # the default (the container's 16-bit-then-8-bit arithmetic) is the same range within one grey level
    default = np.asarray(load_image(dcm_file("CT_small.dcm")))[..., 0].astype(int)
    assert np.abs(default - expected_8bit(hu)).max() <= 1
    win = np.asarray(load_image(dcm_file("CT_small.dcm"), ImageOptions(window=(40.0, 400.0))))
    assert (win[..., 0] == expected_8bit(hu, 40 - 200, 40 + 200)).all()


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
def test_mr_small_plain_and_compressed(name):
    ref = pydicom.dcmread(dcm_file("MR_small.dcm")).pixel_array
    out = np.asarray(load_image(dcm_file(name), ImageOptions(window="full")))
    assert (out[..., 0] == expected_8bit(ref)).all()
    # "container-windowed": the file's own window (MR_small has one), as the container applied it before 71a1135.
    ds = pydicom.dcmread(dcm_file("MR_small.dcm"))
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    lo, hi = c - w // 2, c + w // 2
    want = np.round((np.clip(ref.astype(np.float64), lo, hi) - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    windowed = np.asarray(load_image(dcm_file(name), ImageOptions(window="container-windowed")))[..., 0]
    assert np.abs(windowed.astype(int) - want).max() <= 1


def test_jpeg_baseline_colour_and_jpeg2000():
    rgb = load_image(dcm_file("SC_rgb_jpeg_dcmtk.dcm"))
    ref = pydicom.dcmread(dcm_file("SC_rgb_jpeg_dcmtk.dcm")).pixel_array
    assert rgb.size == (100, 100) and np.array_equal(np.asarray(rgb), ref)
    j2k = load_image(dcm_file("JPEG2000.dcm"))
    ref = pydicom.dcmread(dcm_file("JPEG2000.dcm")).pixel_array
    assert j2k.size == (ref.shape[1], ref.shape[0])
    assert (np.asarray(j2k)[..., 0] == expected_8bit(ref)).all()


def test_monochrome1_16bit_slope_intercept(tmp_path):
    px = np.arange(256, dtype=np.uint16).reshape(16, 16) * 200
    f = write_dicom(tmp_path / "m1.dcm", px, photometric="MONOCHROME1", slope=2.0, intercept=-100.0)
    out = np.asarray(load_image(f))[..., 0]
    assert (out == 255 - expected_8bit(px * 2.0 - 100.0)).all()
    assert out[0, 0] == 255 and out[-1, -1] == 0  # lowest value is white in MONOCHROME1


def test_multiframe_middle_and_chosen_frame(tmp_path):
    frames = np.stack([np.full((8, 8), v, dtype=np.uint16) for v in (0, 100, 200)])
    frames[:, 0, 0] = 1000  # give each frame a range
    f = write_dicom(tmp_path / "mf.dcm", frames, frames=3)
    mid = np.asarray(load_image(f))[..., 0]
    assert (mid == expected_8bit(frames[1])).all()
    first = np.asarray(load_image(f, ImageOptions(frame=0)))[..., 0]
    assert (first == expected_8bit(frames[0])).all()
    with pytest.raises(BadInput, match="frame 5"):
        load_image(f, ImageOptions(frame=5))


def test_no_window_by_default_and_the_old_windowed_default_is_named(tmp_path):
    """Google's container dropped CXR windowing in 71a1135: the default ignores the file's window; the container's
    earlier behaviour (04b60aca) is `container-windowed`."""
    px = np.linspace(0, 4000, 64, dtype=np.uint16).reshape(8, 8)
    f = write_dicom(tmp_path / "w.dcm", px, WindowCenter=1000, WindowWidth=1000)
    default = np.asarray(load_image(f))[..., 0]
    assert np.abs(default.astype(int) - expected_8bit(px)).max() <= 1  # the whole range, window ignored
    old = np.asarray(load_image(f, ImageOptions(window="container-windowed")))[..., 0]
    assert old[0, 0] == 0 and old[-1, -1] == 255 and (old[px >= 1500] == 255).all()
    assert (np.asarray(load_image(f, ImageOptions(window="full")))[..., 0] == expected_8bit(px)).all()
    with pytest.raises(BadInput, match="no WindowCenter"):
        load_image(write_dicom(tmp_path / "n.dcm", px), ImageOptions(window="file"))


def test_voi_window_from_file(tmp_path):
    px = np.linspace(0, 4000, 64, dtype=np.uint16).reshape(8, 8)
    f = write_dicom(tmp_path / "voi.dcm", px, WindowCenter=1000, WindowWidth=1000)
    out = np.asarray(load_image(f, ImageOptions(window="voi")))[..., 0]
    assert out[0, 0] == 0 and out[-1, -1] == 255
    mid = (px > 600) & (px < 1400)
    assert ((out[mid] > 0) & (out[mid] < 255)).all()


def test_errors_are_typed_and_never_quote_phi(tmp_path):
    f = write_dicom(tmp_path / "nopix.dcm", np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(f)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(BadInput, match="no pixel data") as e:
        load_image(tmp_path / "nopix.dcm")
    assert "Doe" not in str(e.value) and "PHI-123456" not in str(e.value)

    data = open(f, "rb").read()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) - 20])
    with pytest.raises(BadInput):
        load_image(tmp_path / "trunc.dcm")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(UnsupportedFormat):
        load_image(tmp_path / "x.txt")
    with pytest.raises(ImageTooLarge):
        load_image(dcm_file("CT_small.dcm"), ImageOptions(max_pixels=100))
