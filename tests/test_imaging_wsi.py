"""Whole-slide images: level choice, tissue mask, tiling, sampling — on synthetic pyramidal TIFFs and DICOM WSI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medgemma_toolkit.core.messages import ImagePart
from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.imaging import ImageOptions, load_parts
from medgemma_toolkit.imaging.wsi import choose_level, open_slide, otsu_threshold, tile_slide
from medgemma_toolkit.testing.synthetic_slide import slide_pixels, write_pyramid_tiff

W, H = 3584, 2688
BOXES = [(100, 100, 1500, 1000), (2000, 1800, 1200, 800)]


@pytest.fixture(scope="module")
def slide_img():
    return slide_pixels(W, H, BOXES)


@pytest.fixture(scope="module")
def tiff_10x(tmp_path_factory, slide_img):
    """Generic pyramidal TIFF, level 0 at 1 µm/px (10X): patches come from level 0."""
    return write_pyramid_tiff(tmp_path_factory.mktemp("wsi") / "slide.tif", slide_img, mpp=1.0, aperio=False)


@pytest.fixture(scope="module")
def svs_40x(tmp_path_factory, slide_img):
    """SVS-style TIFF at 0.25 µm/px (40X): the 4x-downsampled level is nearest 10X."""
    return write_pyramid_tiff(tmp_path_factory.mktemp("wsi") / "slide.svs", slide_img, mpp=0.25)


def expected_tissue_patches(patch: int = 896, min_tissue: float = 0.25) -> list[tuple[int, int]]:
    """Independent: area of each whole patch covered by the known tissue boxes."""
    out = []
    for r in range(H // patch):
        for c in range(W // patch):
            x0, y0 = c * patch, r * patch
            covered = 0
            for bx, by, bw, bh in BOXES:
                ox = max(0, min(x0 + patch, bx + bw) - max(x0, bx))
                oy = max(0, min(y0 + patch, by + bh) - max(y0, by))
                covered += ox * oy
            if covered / patch**2 >= min_tissue:
                out.append((x0, y0))
    return out


def test_otsu_threshold_splits_two_modes():
    vals = np.concatenate([np.full(1000, 10), np.full(500, 200)]).astype(np.uint8)
    t = otsu_threshold(vals)
    assert 10 <= t < 200


def test_tiles_are_the_tissue_patches_with_exact_pixels(tiff_10x, slide_img):
    slide = open_slide(str(tiff_10x))
    assert choose_level(slide) == 0
    res = tile_slide(slide, ImageOptions(patch_order="spatial"))
    coords = [(p.x, p.y) for p in res.patches]
    assert coords == expected_tissue_patches() and res.tissue_patches == 4 and res.grid == (4, 3)
    for p in res.patches:
        np.testing.assert_array_equal(np.asarray(p.image), slide_img[p.y : p.y + 896, p.x : p.x + 896])


def test_level_nearest_10x_on_40x_slide(svs_40x, slide_img):
    slide = open_slide(str(svs_40x))
    assert slide.mpp == pytest.approx(0.25)
    assert choose_level(slide) == 1
    res = tile_slide(slide, ImageOptions())
    assert res.level == 1 and res.mpp == pytest.approx(1.0)
    # Level 1 is 896x672: one patch, the bottom padded with glass white.
    (p,) = res.patches
    arr = np.asarray(p.image)
    np.testing.assert_array_equal(arr[:672], slide_img[::4, ::4])
    assert (arr[672:] == 255).all()


def test_sampling_is_seeded_and_capped(tiff_10x):
    slide = open_slide(str(tiff_10x))
    a = [(p.x, p.y) for p in tile_slide(slide, ImageOptions(max_patches=2, patch_seed=1)).patches]
    b = [(p.x, p.y) for p in tile_slide(slide, ImageOptions(max_patches=2, patch_seed=1)).patches]
    assert a == b and len(a) == 2 and set(a) <= set(expected_tissue_patches())
    seeds = {
        tuple((p.x, p.y) for p in tile_slide(slide, ImageOptions(max_patches=2, patch_seed=s)).patches)
        for s in range(8)
    }
    assert len(seeds) > 1  # the seed matters
    spatial = [(p.x, p.y) for p in tile_slide(slide, ImageOptions(max_patches=3, patch_order="spatial")).patches]
    assert spatial == sorted(spatial, key=lambda xy: (xy[1], xy[0]))


def test_load_parts_labels_and_blank_slide(tiff_10x, tmp_path):
    parts = load_parts(str(tiff_10x), ImageOptions(patch_order="spatial"), 64)
    assert all(isinstance(p, ImagePart) and p.image.size == (64, 64) for p in parts)
    assert [p.label for p in parts] == [f"x={x} y={y} L0" for x, y in expected_tissue_patches()]
    from medgemma_toolkit.imaging.manifest import image_manifest

    seen = image_manifest(parts)  # what the model saw: each patch's level-0 [x, y, level], the slide as source
    assert [e["patch"] for e in seen] == [[x, y, 0] for x, y in expected_tissue_patches()]
    assert all(e["source"] == str(tiff_10x) and e["label"] is None for e in seen)
    blank = write_pyramid_tiff(tmp_path / "blank.tif", np.full((1024, 1024, 3), 240, np.uint8), mpp=1.0, aperio=False)
    with pytest.raises(BadInput, match="no tissue"):
        load_parts(str(blank), ImageOptions(), 64)


def test_plain_tiff_stays_a_2d_image(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", np.full((40, 60, 3), 100, np.uint8))
    parts = load_parts(str(tmp_path / "plain.tif"), ImageOptions(), 32)
    assert len(parts) == 1 and parts[0].label == ""


def test_corrupt_slide_is_a_clear_error(tmp_path):
    (tmp_path / "bad.svs").write_bytes(b"II*\x00" + b"\x00" * 64)
    with pytest.raises(BadInput, match="cannot open as a whole-slide image"):
        load_parts(str(tmp_path / "bad.svs"), ImageOptions(), 32)


@pytest.fixture(scope="module")
def dicom_wsi(tmp_path_factory, svs_40x):
    """A DICOM WSI written by the test: the SVS converted with wsidicomizer (through tiffslide)."""
    import pydicom.config

    # Importing wsidicomizer switches pydicom to its v4 "future" behaviour for the whole process, which breaks
    # other code reading pixels the v3 way: switch it back once the slide is written.
    try:
        from wsidicomizer import WsiDicomizer
        from wsidicomizer.sources import TiffSlideSource

        out = tmp_path_factory.mktemp("dicomwsi") / "slide"
        WsiDicomizer.convert(
            svs_40x, out, workers=1, include_label=False, include_overview=False, preferred_source=TiffSlideSource
        )
    finally:
        pydicom.config.future_behavior(False)
    return out


def test_dicom_wsi_matches_the_tiff(dicom_wsi, slide_img):
    slide = open_slide(str(dicom_wsi))
    assert slide is not None and slide.mpp == pytest.approx(0.25) and choose_level(slide) == 1
    (p,) = tile_slide(slide, ImageOptions()).patches
    assert (p.x, p.y, p.level) == (0, 0, 1)
    diff = np.abs(np.asarray(p.image)[:672].astype(int) - slide_img[::4, ::4].astype(int))
    assert diff.mean() < 3  # re-encoded (lossy JPEG) by the converter


@pytest.mark.slow
def test_cli_preview_and_ask_on_slides(tiff_10x, dicom_wsi, tmp_path, cli, tiny_model_dir):
    out = tmp_path / "slide.png"
    r = cli("preview", str(tiff_10x), "-o", str(out), "--size", "64", "--patch-order", "spatial")
    assert r.returncode == 0, r.stderr
    assert "4 images" in r.stdout
    r = cli("preview", str(dicom_wsi), "-o", str(tmp_path / "dicom_wsi.png"), "--size", "64")
    assert r.returncode == 0 and "1 image " in r.stdout, r.stderr
    for src in (tiff_10x, dicom_wsi):
        r = cli(
            "ask",
            "--model",
            str(tiny_model_dir),
            "--image",
            str(src),
            "--max-patches",
            "2",
            "--max-new-tokens",
            "3",
            "--json",
            "Describe the tissue.",
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["prompt_tokens"] > 2 * 16
    r = cli("preview", str(tiff_10x), "-o", str(out), "--patch-order", "sideways")
    assert r.returncode == 2 and "--patch-order" in r.stderr


@pytest.mark.parametrize("where", [0.3, 0.5, 0.8])
def test_damaged_tiles_give_documented_errors(tiff_10x, tmp_path, where):
    from medgemma_toolkit.errors import MedGemmaError

    data = bytearray(tiff_10x.read_bytes())
    pos = int(len(data) * where)
    data[pos : pos + 4096] = bytes(range(256)) * 16  # garbage inside compressed tile data
    bad = tmp_path / "damaged.tif"
    bad.write_bytes(bytes(data))
    try:
        load_parts(str(bad), ImageOptions(), 32)
    except MedGemmaError as e:
        assert "\n" not in str(e)
