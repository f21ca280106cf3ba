"""Our pipelines against outputs of Google's own code (tests/data/google_reference/*.json, each naming its source
repository, file and commit). The reference values were computed by running Google's functions, written out in a
scratch directory, on the same synthetic inputs these tests build; here we only compare, exactly."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from medgemma_toolkit.core.messages import ImagePart
from medgemma_toolkit.imaging import ImageOptions, load_parts
from medgemma_toolkit.imaging.dicom import dicom_to_rgb
from medgemma_toolkit.imaging.manifest import image_manifest
from medgemma_toolkit.imaging.series import load_series, series_files
from medgemma_toolkit.imaging.windows import CT_WINDOW_PRESETS, windows_to_rgb
from medgemma_toolkit.testing.synthetic_cxr import make_cxr
from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, write_series

REF = Path(__file__).parent / "data" / "google_reference"


def ref(name: str) -> dict:
    return json.loads((REF / name).read_text())


def sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest()


def shuffled_reversed_series(directory, slices: int, seed: int):
    """A series whose InstanceNumber runs opposite to z, in files named in random order (as ct_ref.py wrote it)."""
    spec = SeriesSpec(slices=slices, rows=16, cols=16, reverse_instances=True)
    names = [f"{k:04d}.dcm" for k in random.Random(seed).sample(range(10000), slices)]
    return write_series(directory, spec, names=names)


CT = ref("ct_notebook.json")


@pytest.mark.parametrize("n", sorted(CT["series"], key=int))
def test_ct_slices_are_the_notebooks_in_its_order(tmp_path, n):
    e = CT["series"][n]
    shuffled_reversed_series(tmp_path, e["slices"], e["name_seed"])
    parts = load_parts(str(tmp_path), ImageOptions(), size=16)
    manifest = image_manifest(parts)
    assert [m["instance_number"] for m in manifest] == e["instance_numbers"]
    assert [m["label"] for m in manifest] == [f"SLICE {k}" for k in range(1, len(manifest) + 1)]
    if "window_sha256" in e:  # the notebook's float32 windowing, pixel for pixel
        assert [sha(p.image) for p in parts if isinstance(p, ImagePart)] == e["window_sha256"]


def test_position_order_is_a_named_option(tmp_path):
    e = CT["series"]["200"]
    shuffled_reversed_series(tmp_path, 200, e["name_seed"])
    manifest = image_manifest(load_parts(str(tmp_path), ImageOptions(slice_order="position"), size=16))
    numbers = [m["instance_number"] for m in manifest]
    assert numbers == sorted(numbers, reverse=True)  # along z, i.e. against the instance numbers here
    assert numbers != e["instance_numbers"]


def test_repeated_instance_numbers_fall_back_to_position(tmp_path):
    import pydicom

    paths = write_series(tmp_path, SeriesSpec(slices=6, rows=8, cols=8, reverse_instances=True))
    for p in paths:  # two stacks numbered separately: InstanceNumber no longer defines an order
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = int(ds.InstanceNumber) % 3 + 1
        ds.save_as(p)
    vol = load_series(series_files(str(tmp_path)))
    assert vol.ordered_by == "normal" and vol.order_fallback == "duplicate InstanceNumber"
    assert np.all(np.diff(vol.positions) > 0)


def test_notebook_window_over_the_whole_hu_range():
    lo, hi = CT["hu_range"]
    hu = np.arange(lo, hi + 1).astype(np.float64)
    assert sha(windows_to_rgb(hu, CT_WINDOW_PRESETS["notebook"])) == CT["hu_range_window_sha256"]


SERVER = ref("server_windows.json")


def test_server_preset_matches_the_serving_container():
    stored = np.arange(0, 4096, dtype=np.int16).reshape(64, 64)
    got = windows_to_rgb(stored.astype(np.float64) - 1024, CT_WINDOW_PRESETS["server"])
    assert sha(got) == SERVER["ct_server_window_sha256"]["sha256"]


@pytest.mark.parametrize("case", sorted(SERVER["cxr"]))
def test_cxr_container_windowed_is_the_04b60aca_container(tmp_path, case):
    """The container before 71a1135 applied the file's VOI window: kept as the named option."""
    kw = SERVER["cxr"][case]["kwargs"]
    ds = make_cxr(**kw)
    path = tmp_path / "cxr.dcm"
    ds.save_as(path, enforce_file_format=True)
    from medgemma_toolkit.imaging import load_image

    grey = np.asarray(load_image(path, ImageOptions(window="container-windowed")))[..., 0]
    assert sha(grey) == SERVER["cxr"][case]["sha256"]
    # and it differs from the full-range rescale
    full = np.asarray(dicom_to_rgb(ds, "cxr", ImageOptions(window="full")))[..., 0]
    assert sha(full) != SERVER["cxr"][case]["sha256"]


NEWEST = ref("server_a60a660.json")


@pytest.mark.parametrize("case", sorted(NEWEST["cxr"]))
def test_cxr_default_is_the_newest_container_without_window(tmp_path, case):
    """Default options (no --window) give the container's current CXR model image (71a1135..a60a660) exactly:
    grey levels, MONOCHROME1 inversion and the zero-padded square."""
    from medgemma_toolkit.imaging import load_image, pad_to_square

    e = NEWEST["cxr"][case]
    ds = make_cxr(**e["kwargs"])
    path = tmp_path / "cxr.dcm"
    ds.save_as(path, enforce_file_format=True)
    img = np.asarray(pad_to_square(load_image(path)))
    assert list(img.shape) == e["shape"]
    assert sha(img) == e["padded_rgb_sha256"]
    named = np.asarray(pad_to_square(load_image(path, ImageOptions(window="container"))))
    assert sha(named) == e["padded_rgb_sha256"]
    old = np.asarray(pad_to_square(load_image(path, ImageOptions(window="container-windowed"))))
    assert sha(old) != e["padded_rgb_sha256"]  # the windowed default it replaced


def cxr_variant(kind: str):
    """make_cxr() re-encoded as server_a60a660.json's cxr_variants say (the container's 8-bit and signed paths)."""
    ds = make_cxr()
    stored = np.frombuffer(ds.PixelData, np.uint16).reshape(ds.Rows, ds.Columns)
    if kind == "uint8_no_rescale":
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = (stored >> 4).astype(np.uint8).tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = (stored.astype(np.int16) - 2048).tobytes()
    return ds


@pytest.mark.parametrize("kind", ["uint8_no_rescale", "int16_no_rescale"])
def test_cxr_default_on_8_bit_and_signed_pixels(tmp_path, kind):
    """8-bit stored values are kept as they are (no stretch); signed ones shifted, then stretched: as the container."""
    from medgemma_toolkit.imaging import load_image, pad_to_square

    path = tmp_path / "v.dcm"
    cxr_variant(kind).save_as(path, enforce_file_format=True)
    assert sha(np.asarray(pad_to_square(load_image(path)))) == NEWEST["cxr_variants"][kind]["padded_rgb_sha256"]


def test_ct_unsigned_stored_matches_the_int32_fix():
    """64ee8e5 rescales CT to int32: before it, unsigned stored CT wrapped negative HU. Our HU never wrapped, so the
    server preset matches the fixed container and not the one before the fix."""
    stored = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
    got = sha(windows_to_rgb(stored.astype(np.float64) - 1024, CT_WINDOW_PRESETS["server"]))
    assert got == NEWEST["ct_unsigned_stored"]["sha256_a60a660"]
    assert got != NEWEST["ct_unsigned_stored"]["sha256_71a1135_before_int32_fix"]


# -- what the model saw: preview --json and ask --show-prompt, through the real CLI --------------------------------


@pytest.fixture(scope="module")
def ct200(tmp_path_factory):
    d = tmp_path_factory.mktemp("ct200")
    shuffled_reversed_series(d, 200, CT["series"]["200"]["name_seed"])
    return d


def test_preview_json_lists_the_notebooks_85_instances(ct200, tmp_path):
    from conftest import run_cli

    res = run_cli("preview", str(ct200), "-o", str(tmp_path / "p.png"), "--size", "16", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [e["instance_number"] for e in out["images"]] == CT["series"]["200"]["instance_numbers"]
    first = out["images"][0]
    assert set(first) == {"source", "instance_number", "sop_instance_uid", "label", "patch"}
    assert first["label"] == "SLICE 1" and first["patch"] is None and Path(first["source"]).parent == ct200
    assert first["sop_instance_uid"].startswith("sha256:")  # hashed like the server's (issue 28)
    assert SeriesSpec().series_uid not in res.stdout
    assert (tmp_path / "p.png").is_file()


def test_show_prompt_is_the_notebook_layout(ct200, tiny_model_dir):
    from conftest import run_cli

    want = ref("ct_prompt.json")
    res = run_cli(
        "ask",
        "-m",
        str(tiny_model_dir),
        "-i",
        str(ct200),
        "--preset",
        "medgemma-1.5",
        "--instruction",
        want["instruction"],
        "--show-prompt",
        want["question"],
    )
    assert res.returncode == 0, res.stderr
    shown = res.stdout[:-1]  # print's newline
    assert shown == want["rendered"]
    assert shown.index(want["instruction"]) < shown.index("<start_of_image>")
    assert shown.index("SLICE 85") < shown.index(want["question"])
    assert shown.count("<start_of_image>") == 85


def test_eval_records_keep_the_manifest(tiny_model, tmp_path):
    from medgemma_toolkit.eval.runner import EvalOptions, run_eval

    run_eval(tiny_model, EvalOptions(task="image_mcq", out=tmp_path / "r", max_new_tokens=2, progress=False, n_boot=50))
    recs = [json.loads(line) for line in (tmp_path / "r" / "records.jsonl").read_text().splitlines()]
    assert recs and all(len(r["images"]) == 1 for r in recs)
    by_source = {r["images"][0]["source"]: r["images"][0] for r in recs}
    assert "lesion_00.png" in by_source and by_source["lesion_00.png"]["instance_number"] is None
    dicom = by_source["CT_small.dcm"]
    assert dicom["instance_number"] is not None and dicom["label"] is None and dicom["patch"] is None
    assert dicom["sop_instance_uid"].startswith("sha256:")  # identifiers from the files are not written as is
