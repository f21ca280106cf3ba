"""CT/MR series -> volume -> model parts, on synthetic series written here with pydicom."""

from __future__ import annotations

import logging
import random
import warnings

import numpy as np
import pytest

from medgemma_toolkit.core.messages import ImagePart, TextPart
from medgemma_toolkit.errors import BadInput, MedGemmaError
from medgemma_toolkit.imaging import ImageOptions, load_parts
from medgemma_toolkit.imaging.series import MAX_SERIES_FILES, load_series, series_files
from medgemma_toolkit.imaging.volume import sample_indices
from medgemma_toolkit.imaging.windows import CT_WINDOW_PRESETS
from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, make_slice, slice_pixels, write_series


def expected_ct_rgb(stored: np.ndarray, slope: int, intercept: int, preset: str) -> tuple[np.ndarray, np.ndarray]:
    """Independent window computation in exact integer arithmetic: (round-half-up value, exact-half mask).

    Each preset rounds exact halves its own source's way (float32 steps, ties to even); that is checked bit for
    bit against Google's code in tests/test_google_fidelity.py. Here a half may go either way, nothing else.
    """
    hu = stored.astype(np.int64) * slope + intercept
    chans, ties = [], []
    for lo, hi in CT_WINDOW_PRESETS[preset].channels:
        lo, d = int(lo), int(hi - lo)
        num = 2 * (hu - lo) * 255
        v = (num + d) // (2 * d)
        inside = (hu > lo) & (hu < int(hi))
        chans.append(np.clip(v, 0, 255).astype(np.uint8))
        ties.append(inside & (num % (2 * d) == d))
    return np.stack(chans, axis=-1), np.stack(ties, axis=-1)


def assert_ct_rgb(img: np.ndarray, stored: np.ndarray, slope: int, intercept: int, preset: str) -> None:
    want, tie = expected_ct_rgb(stored, slope, intercept, preset)
    diff = img.astype(int) - want.astype(int)
    assert (diff[~tie] == 0).all()
    assert np.isin(diff[tie], (-1, 0)).all()


def images_and_labels(parts):
    imgs = [np.asarray(p.image) for p in parts if isinstance(p, ImagePart)]
    labels = [p.text for p in parts if isinstance(p, TextPart)]
    return imgs, labels


def test_sample_indices():
    assert sample_indices(10, 4, "linspace") == [0, 3, 6, 9]
    assert sample_indices(5, 85) == [0, 1, 2, 3, 4]
    assert sample_indices(7, 1, "linspace") == [3]
    # Google's notebook: round(i / k * (n - 1)) for i = 1..k (Python's round): never the first slice
    assert sample_indices(10, 4) == [round(i / 4 * 9) for i in range(1, 5)] == [2, 4, 7, 9]
    assert sample_indices(7, 1) == [6]
    idx = sample_indices(300, 85, "linspace")
    assert len(idx) == 85 and len(set(idx)) == 85 and idx[0] == 0 and idx[-1] == 299
    assert idx == sorted(idx)
    gaps = np.diff(idx)
    assert gaps.min() >= 3 and gaps.max() <= 4  # 299/84 = 3.56: uniform spacing
    with pytest.raises(BadInput):
        sample_indices(10, 0)
    with pytest.raises(BadInput):
        sample_indices(10, 3, "every-other")


@pytest.mark.parametrize("preset", ["notebook", "server"])
def test_ct_windows_pixel_exact_shuffled_files(tmp_path, preset):
    spec = SeriesSpec(slices=9, rows=32, cols=32)
    names = [f"{n:03d}.dcm" for n in random.Random(3).sample(range(100), spec.slices)]
    write_series(tmp_path, spec, names=names)
    parts = load_parts(str(tmp_path), ImageOptions(ct_windows=preset), size=32)
    imgs, labels = images_and_labels(parts)
    assert labels == [f"SLICE {n}" for n in range(1, 10)]
    for i, img in enumerate(imgs):
        assert_ct_rgb(img, slice_pixels(i, 32, 32), 1, -1024, preset)
    # Parts alternate image, label, as MedGemma 1.5 expects.
    assert all(isinstance(p, ImagePart if k % 2 == 0 else TextPart) for k, p in enumerate(parts))


def test_presets_differ_only_in_green():
    nb, sv = CT_WINDOW_PRESETS["notebook"], CT_WINDOW_PRESETS["server"]
    assert nb.channels == ((-1024, 1024), (-135, 215), (0, 80))
    assert sv.channels == ((-1024, 1024), (135, 215), (0, 80))


def test_lut_and_float_paths_agree_with_fractional_slope(tmp_path):
    write_series(tmp_path, SeriesSpec(slices=4, rows=16, cols=16, slope=0.5, intercept=-600.0))
    vol = load_series(series_files(str(tmp_path)))
    from medgemma_toolkit.imaging.volume import volume_rgb
    from medgemma_toolkit.imaging.windows import windows_to_rgb

    lut = volume_rgb(vol, [0, 1, 2, 3], ImageOptions())
    direct = windows_to_rgb(vol.hu().astype(np.float64), CT_WINDOW_PRESETS["notebook"])
    np.testing.assert_array_equal(lut, direct)


def test_oblique_series_ordered_along_normal_not_z(tmp_path):
    t = np.deg2rad(60)
    spec = SeriesSpec(slices=10, rows=16, cols=16, orientation=(1, 0, 0, 0, np.cos(t), -np.sin(t)), inplane_jitter=50.0)
    write_series(tmp_path, spec, names=[f"f{k}.dcm" for k in random.Random(1).sample(range(10), 10)])
    vol = load_series(series_files(str(tmp_path)), slice_order="position")
    assert vol.ordered_by == "normal"
    assert np.all(np.diff(vol.positions) > 0)
    for i in range(10):
        np.testing.assert_array_equal(vol.stored[i], slice_pixels(i, 16, 16))
    # The z coordinate alone would order these slices differently.
    import pydicom

    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in sorted(tmp_path.iterdir())]
    inst = [int(pydicom.dcmread(p).InstanceNumber) for p in sorted(tmp_path.iterdir())]
    by_z = [inst[k] for k in np.argsort(z)]
    assert by_z != sorted(by_z) and by_z != sorted(by_z, reverse=True)


def test_duplicates_derived_and_mixed_acquisitions(tmp_path):
    write_series(tmp_path, SeriesSpec(slices=5, rows=16, cols=16, acquisition=1, seed=1))
    main = SeriesSpec(slices=8, rows=16, cols=16, acquisition=2, seed=2)
    write_series(tmp_path, main)
    # A duplicate instance number (another SOP instance, same slice) and two derived localisers.
    make_slice(main, 3, uid_suffix=".77").save_as(tmp_path / "zz_duplicate.dcm", enforce_file_format=True)
    derived = SeriesSpec(slices=2, rows=16, cols=16, acquisition=3, image_type=("DERIVED", "SECONDARY", "MPR"))
    write_series(tmp_path, derived, names=["mpr1.dcm", "mpr2.dcm"])
    vol = load_series(series_files(str(tmp_path)))
    assert vol.num_slices == 8
    assert vol.dropped == {"derived": 2, "other_acquisitions": 5, "duplicate_instance_number": 1}
    for i in range(8):
        np.testing.assert_array_equal(vol.stored[i], slice_pixels(i, 16, 16, seed=2))


def test_missing_positions_fall_back_to_instance_numbers(tmp_path):
    paths = write_series(tmp_path, SeriesSpec(slices=6, rows=8, cols=8), names=[f"{5 - i}.dcm" for i in range(6)])
    import pydicom

    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        ds.save_as(p)
    vol = load_series(series_files(str(tmp_path)))
    assert vol.ordered_by == "instance_number"
    for i in range(6):
        np.testing.assert_array_equal(vol.stored[i], slice_pixels(i, 8, 8))


def test_mr_min_max_over_whole_volume(tmp_path):
    write_series(tmp_path, SeriesSpec(slices=5, rows=16, cols=16, modality="MR", slope=1.0, intercept=0.0))
    imgs, _ = images_and_labels(load_parts(str(tmp_path), ImageOptions(), size=16))
    stack = np.stack([slice_pixels(i, 16, 16) for i in range(5)]).astype(np.float64)
    lo, hi = stack.min(), stack.max()
    for i, img in enumerate(imgs):
        expect = (stack[i] - lo) / (hi - lo) * 255
        assert np.abs(img[..., 0].astype(float) - expect).max() <= 0.5 + 1e-9
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert min(im.min() for im in imgs) == 0 and max(im.max() for im in imgs) == 255


def test_sampling_picks_uniform_slices_and_numbers_them(tmp_path):
    write_series(tmp_path, SeriesSpec(slices=30, rows=8, cols=8))
    parts = load_parts(str(tmp_path), ImageOptions(max_slices=7), size=8)
    imgs, labels = images_and_labels(parts)
    assert labels == [f"SLICE {n}" for n in range(1, 8)]
    for img, i in zip(imgs, sample_indices(30, 7, "notebook")):
        assert_ct_rgb(img, slice_pixels(i, 8, 8), 1, -1024, "notebook")


def test_glob_source(tmp_path):
    write_series(tmp_path, SeriesSpec(slices=4, rows=8, cols=8))
    (tmp_path / "notes.txt").write_text("not dicom")
    parts = load_parts(str(tmp_path / "*.dcm"), ImageOptions(), size=8)
    assert len(parts) == 8


def test_model_size_resize(tmp_path):
    write_series(tmp_path, SeriesSpec(slices=3, rows=20, cols=30))
    imgs, _ = images_and_labels(load_parts(str(tmp_path), ImageOptions(), size=64))
    assert all(im.shape == (64, 64, 3) for im in imgs)
    assert (imgs[0][:5] == 0).all()  # non-square slices are padded with black, centred


# -- malformed inputs: clear one-line errors naming the file, never a traceback ------------------------------


def _err(source, **kw) -> str:
    with pytest.raises(MedGemmaError) as e:
        load_parts(str(source), ImageOptions(**kw), size=16)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_truncated_file(tmp_path):
    paths = write_series(tmp_path, SeriesSpec(slices=3, rows=16, cols=16))
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 3])
    msg = _err(tmp_path)
    assert paths[1].name in msg


def test_missing_pixel_data(tmp_path):
    paths = write_series(tmp_path, SeriesSpec(slices=3, rows=16, cols=16))
    import pydicom

    ds = pydicom.dcmread(paths[2])
    del ds.PixelData
    ds.save_as(paths[2])
    assert "no pixel data" in _err(tmp_path)


def test_non_dicom_in_series_dir(tmp_path):
    write_series(tmp_path, SeriesSpec(slices=3, rows=16, cols=16))
    (tmp_path / "readme.txt").write_text("hello, this is not DICOM at all" * 10)
    msg = _err(tmp_path)
    assert "readme.txt" in msg and "not a DICOM file" in msg


def test_mixed_series_sizes_and_empty(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_series(a, SeriesSpec(slices=3, rows=16, cols=16))
    write_series(a, SeriesSpec(slices=3, rows=16, cols=16, series_uid="1.2.3.4"))
    assert "different series" in _err(a)
    write_series(b, SeriesSpec(slices=3, rows=16, cols=16))
    make_slice(SeriesSpec(rows=12, cols=16), 5).save_as(b / "odd.dcm", enforce_file_format=True)
    assert "different sizes" in _err(b)
    c.mkdir()
    assert "no files" in _err(c)
    assert "no files match" in _err(tmp_path / "nothing*.dcm")


def test_phi_never_in_errors(tmp_path, caplog):
    paths = write_series(tmp_path, SeriesSpec(slices=3, rows=16, cols=16))
    data = paths[0].read_bytes()
    assert data.count(b"-100.0000\\-100.0000") == 1
    paths[0].write_bytes(data.replace(b"-100.0000\\-100.0000", b"Doe^Janet\\Doe^Janet"))  # garbage for numbers
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = _err(tmp_path)
    assert "ImagePositionPatient" in msg and "Doe" not in msg and "Janet" not in msg
    # pydicom's own validation warnings quote values: reading through the toolkit must not emit them.
    assert not any("Doe" in str(w.message) for w in caught)
    assert "Doe" not in caplog.text


@pytest.mark.slow
def test_hundred_thousand_slice_series_refused_before_parsing(tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    for i in range(100_000):
        (big / f"{i:06d}.dcm").touch()
    msg = _err(big)
    assert f"more than {MAX_SERIES_FILES:,} files" in msg


def test_volume_voxel_cap(tmp_path, monkeypatch):
    import medgemma_toolkit.imaging.series as series

    write_series(tmp_path, SeriesSpec(slices=4, rows=16, cols=16))
    monkeypatch.setattr(series, "MAX_VOLUME_VOXELS", 3 * 16 * 16)
    assert "over the limit" in _err(tmp_path)


# -- the real CLI ----------------------------------------------------------------------------------------------


def test_cli_preview_series(tmp_path, cli):
    write_series(tmp_path / "ct", SeriesSpec(slices=20, rows=32, cols=32))
    out = tmp_path / "p.png"
    r = cli("preview", str(tmp_path / "ct"), "-o", str(out), "--size", "32", "--max-slices", "6")
    assert r.returncode == 0, r.stderr
    assert "6 images" in r.stdout
    from PIL import Image

    assert Image.open(out).size[0] == 3 * 32
    r = cli("preview", str(tmp_path / "ct"), "-o", str(out), "--ct-windows", "nope")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown CT window preset")


@pytest.mark.slow
def test_cli_ask_on_ct_and_mr_series(tmp_path, cli, tiny_model_dir):
    write_series(tmp_path / "ct", SeriesSpec(slices=12, rows=32, cols=32))
    write_series(tmp_path / "mr", SeriesSpec(slices=12, rows=24, cols=32, modality="MR", intercept=0.0))
    for d in ("ct", "mr"):
        r = cli("preview", str(tmp_path / d), "-o", str(tmp_path / f"{d}.png"), "--max-slices", "5", "--size", "64")
        assert r.returncode == 0 and "5 images" in r.stdout, r.stderr
        r = cli(
            "ask",
            "--model",
            str(tiny_model_dir),
            "--image",
            str(tmp_path / d),
            "--max-slices",
            "5",
            "--max-new-tokens",
            "4",
            "--json",
            "What do you see?",
        )
        assert r.returncode == 0, r.stderr
        import json

        out = json.loads(r.stdout)
        assert out["prompt_tokens"] > 5 * 16  # five slices of 16 image tokens each reached the model


def test_folder_of_radiographs_is_separate_images(tmp_path):
    write_series(tmp_path, SeriesSpec(slices=1, rows=16, cols=12, modality="CR", series_uid="1.2.3.7"))
    write_series(tmp_path, SeriesSpec(slices=1, rows=20, cols=20, modality="CR", series_uid="1.2.3.7", acquisition=2))
    parts = load_parts(str(tmp_path), ImageOptions(), 16)
    assert len(parts) == 2 and all(isinstance(p, ImagePart) for p in parts)


def test_explicit_file_list(tmp_path):
    from medgemma_toolkit.imaging.volume import load_series_parts

    paths = write_series(tmp_path, SeriesSpec(slices=6, rows=8, cols=8))
    parts = load_series_parts(list(reversed(paths[1:])), ImageOptions(), 8)
    imgs, labels = images_and_labels(parts)
    assert labels == [f"SLICE {n}" for n in range(1, 6)]
    for img, i in zip(imgs, range(1, 6)):
        assert_ct_rgb(img, slice_pixels(i, 8, 8), 1, -1024, "notebook")
    with pytest.raises(BadInput):
        load_series_parts([])


def test_output_memory_is_never_shared_between_live_volumes(tmp_path):
    """Slice images never share memory with another volume's images, or with a buffer that is reused."""
    import gc

    from medgemma_toolkit.imaging.volume import model_images

    write_series(tmp_path / "a", SeriesSpec(slices=9, rows=16, cols=16, seed=1))
    write_series(tmp_path / "b", SeriesSpec(slices=9, rows=16, cols=16, seed=2))

    def snapshot(parts):
        return [np.asarray(p.image).copy() for p in parts if isinstance(p, ImagePart)]

    a = load_parts(str(tmp_path / "a"), ImageOptions(), 24)  # resized: the torch path
    a_copy = snapshot(a)
    b = load_parts(str(tmp_path / "b"), ImageOptions(), 24)
    b_copy = snapshot(b)
    assert any((x != y).any() for x, y in zip(a_copy, b_copy))
    assert all((x == y).all() for x, y in zip(snapshot(a), a_copy))  # a untouched by b
    del a
    gc.collect()
    c = load_parts(str(tmp_path / "a"), ImageOptions(), 24)  # may reuse a's block
    assert all((x == y).all() for x, y in zip(snapshot(c), a_copy))
    assert all((x == y).all() for x, y in zip(snapshot(b), b_copy))
    # The images are ordinary RGB images to every consumer.
    im = next(p.image for p in c if isinstance(p, ImagePart))
    assert im.mode == "RGB" and im.copy().tobytes() == im.tobytes()
    assert len(model_images(np.zeros((2, 10, 10, 4), np.uint8), 12)) == 2
