"""MedSigLIP (`embed`, `classify`, the Python API) on tiny random SiglipModel checkpoints, against transformers.

Oracles: transformers' own `SiglipModel` forward and `SiglipProcessor` on the same pixels (the quick-start
notebook's path), and the resize formula of Google's quick-start notebook (`tf.image.resize(method="bilinear",
antialias=False)`: half-pixel centres, edge-clamped, then `astype(np.uint8)`), written out below index by index.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from pydicom.data import get_testdata_file

from medgemma_toolkit.embed.preprocess import notebook_resize
from medgemma_toolkit.testing.tiny_siglip import build_tiny_siglip


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("siglip") / "tiny-siglip")


@pytest.fixture(scope="module")
def ms(siglip_dir):
    from medgemma_toolkit import MedSigLIP

    return MedSigLIP.load(str(siglip_dir), batch_size=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sigimgs")
    rng = np.random.default_rng(1)
    for k in range(5):
        Image.fromarray((rng.random((40 + 3 * k, 57, 3)) * 255).astype(np.uint8)).save(d / f"im{k}.png")
    import shutil

    shutil.copy(get_testdata_file("CT_small.dcm", download=False), d / "b.dcm")
    return d


def tf_bilinear_no_antialias(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TensorFlow's ResizeBilinear with half_pixel_centers (what tf.image.resize 'bilinear', antialias=False runs):
    in = (out + 0.5) * in_size / out_size - 0.5; lower = max(floor(in), 0); upper = min(ceil(in), in_size - 1);
    weight = in - floor(in). Then the notebook's `.astype(np.uint8)` truncates."""
    h, w = img.shape[:2]
    src = img.astype(np.float64)
    out = np.zeros((out_h, out_w, img.shape[2]))
    for y in range(out_h):
        fy = (y + 0.5) * h / out_h - 0.5
        y0, y1, wy = max(int(np.floor(fy)), 0), min(int(np.ceil(fy)), h - 1), fy - np.floor(fy)
        for x in range(out_w):
            fx = (x + 0.5) * w / out_w - 0.5
            x0, x1, wx = max(int(np.floor(fx)), 0), min(int(np.ceil(fx)), w - 1), fx - np.floor(fx)
            top = src[y0, x0] + (src[y0, x1] - src[y0, x0]) * wx
            bottom = src[y1, x0] + (src[y1, x1] - src[y1, x0]) * wx
            out[y, x] = top + (bottom - top) * wy
    return out.astype(np.uint8)


@pytest.mark.parametrize("shape", [(40, 57), (100, 70), (32, 32), (9, 200)])
def test_notebook_resize_is_tf_bilinear_without_antialiasing(shape):
    from medgemma_toolkit.embed.preprocess import notebook_resize

    arr = (np.random.default_rng(2).random((*shape, 3)) * 255).astype(np.uint8)
    ours = notebook_resize(Image.fromarray(arr), (32, 32)).astype(int)
    ref = tf_bilinear_no_antialias(arr, 32, 32).astype(int)
    # float32 (torch) vs float64 (here) may land on either side of an integer before truncation: off by one, rarely
    assert np.abs(ours - ref).max() <= 1
    assert (ours == ref).mean() > 0.99


def test_pixels_equal_the_processor_on_notebook_resized_images(ms):
    """The notebook resizes first, then the processor only rescales and normalises: our pixels are its pixels."""
    from medgemma_toolkit.embed.preprocess import notebook_resize, to_pixels

    img = Image.fromarray((np.random.default_rng(3).random((50, 77, 3)) * 255).astype(np.uint8))
    resized = Image.fromarray(notebook_resize(img, ms.pre.size))
    ref = ms.processor(images=[resized], return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(to_pixels(img, ms.pre), ref, atol=1e-6)
    assert -1.0 <= ref.min() and ref.max() <= 1.0  # SigLIP's [-1, 1]


def test_embeddings_and_zero_shot_equal_transformers(ms, siglip_dir, files):
    """The quick-start notebook's own path: processor(text, images, padding="max_length") -> SiglipModel."""
    from transformers import SiglipModel, SiglipProcessor

    from medgemma_toolkit.embed.preprocess import notebook_resize

    model = SiglipModel.from_pretrained(str(siglip_dir)).eval()
    proc = SiglipProcessor.from_pretrained(str(siglip_dir))
    paths = [str(files / f"im{k}.png") for k in range(5)]
    imgs = [Image.fromarray(notebook_resize(Image.open(p), (32, 32))) for p in paths]
    labels = ["pleural effusion", "normal chest x-ray", "cardiomegaly"]
    inputs = proc(text=labels, images=imgs, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    emb = ms.embed_images(paths)
    assert emb.vectors.shape == (5, 32) and [e["source"] for e in emb.entries] == paths
    np.testing.assert_allclose(emb.vectors, out.image_embeds.numpy(), atol=2e-6)
    np.testing.assert_allclose(ms.embed_texts(labels).vectors, out.text_embeds.numpy(), atol=2e-6)
    rows = ms.zero_shot(paths, labels)
    want = torch.softmax(out.logits_per_image, dim=1).numpy()
    got = np.array([[r["scores"][lab] for lab in labels] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
    sig = ms.zero_shot(paths, labels, scoring="sigmoid")
    np.testing.assert_allclose(
        [[r["scores"][lab] for lab in labels] for r in sig], torch.sigmoid(out.logits_per_image).numpy(), atol=1e-5
    )
    assert [r["top"] for r in rows] == [labels[i] for i in out.logits_per_image.argmax(dim=1).tolist()]


def test_processor_resize_and_direct_pixels(siglip_dir, files):
    """resize='processor' hands images to the checkpoint's processor; the vectors are the image tower's pooled
    output on exactly those pixels, L2-normalised."""
    from transformers import SiglipModel, SiglipProcessor

    from medgemma_toolkit import MedSigLIP

    ms = MedSigLIP.load(str(siglip_dir), resize="processor", workers=0)
    model = SiglipModel.from_pretrained(str(siglip_dir)).eval()
    proc = SiglipProcessor.from_pretrained(str(siglip_dir))
    paths = [str(files / f"im{k}.png") for k in range(3)]
    px = proc(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pooled = model.get_image_features(pixel_values=px).pooler_output
    np.testing.assert_allclose(ms.embed_images(paths).vectors, torch.nn.functional.normalize(pooled).numpy(), atol=2e-6)


def test_sources_bytes_pil_series_and_order(ms, files, tmp_path):
    from medgemma_toolkit.imaging import ImageOptions
    from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, write_series

    write_series(tmp_path / "ct", SeriesSpec(slices=6))
    png = files / "im0.png"
    emb = ms.embed_images(
        [png.read_bytes(), Image.open(png), str(tmp_path / "ct"), str(png)], ImageOptions(max_slices=4)
    )
    assert len(emb.vectors) == 3 + 4
    assert [e["input"] for e in emb.entries] == [0, 1, 2, 2, 2, 2, 3]
    assert [e["label"] for e in emb.entries if e["input"] == 2] == ["SLICE 1", "SLICE 2", "SLICE 3", "SLICE 4"]
    assert all(e["instance_number"] is not None for e in emb.entries if e["input"] == 2)
    # the same picture from bytes, a PIL image and a path gives the same vector, whatever the batch it fell in
    np.testing.assert_allclose(emb.vectors[0], emb.vectors[1], atol=1e-6)
    np.testing.assert_allclose(emb.vectors[0], emb.vectors[-1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)


def test_done_when_embed_and_classify_cli(tmp_path, files):
    """A SiglipModel of another size than the fixtures': two vectors of its embedding size; one score per label."""
    d = build_tiny_siglip(tmp_path / "other", image_size=48, patch_size=16, hidden_size=24, layers=1, seed=7)
    Image.open(files / "im1.png").save(tmp_path / "a.png")
    (tmp_path / "b.dcm").write_bytes((files / "b.dcm").read_bytes())
    res = run_cli("embed", "-m", str(d), "--image", "a.png", "--image", "b.dcm", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["dim"] == 24 and [len(i["embedding"]) for i in out["items"]] == [24, 24]
    assert [i["source"] for i in out["items"]] == ["a.png", "b.dcm"] and out["items"][1]["instance_number"] == 1
    res = run_cli("classify", "-m", str(d), "--image", "a.png", "--labels", "x,y", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["results"]) == 1 and list(out["results"][0]["scores"]) == ["x", "y"]
    assert out["scoring"] == "softmax" and abs(sum(out["results"][0]["scores"].values()) - 1) < 1e-9


def test_embed_writes_parquet_and_npy(siglip_dir, files, tmp_path, cli):
    import pyarrow.parquet as pq

    args = ["embed", "-m", str(siglip_dir), "-i", str(files / "im0.png"), "-i", str(files / "b.dcm"), "--text", "edema"]
    j = cli(*args, "--json")
    assert j.returncode == 0, j.stderr
    want = np.array([i["embedding"] for i in json.loads(j.stdout)["items"]], dtype=np.float32)
    assert cli(*args, "--out", str(tmp_path / "e.parquet")).returncode == 0
    table = pq.read_table(tmp_path / "e.parquet").to_pylist()
    assert [r["kind"] for r in table] == ["image", "image", "text"] and table[2]["text"] == "edema"
    np.testing.assert_array_equal(np.array([r["embedding"] for r in table], dtype=np.float32), want)
    res = cli(*args, "--out", str(tmp_path / "e.npy"))
    assert res.returncode == 0 and "wrote" in res.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), want)
    rows = [json.loads(line) for line in (tmp_path / "e.npy.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows[:2]] == [str(files / "im0.png"), str(files / "b.dcm")]


def test_bad_input_is_one_line(siglip_dir, tiny_model_dir, files, tmp_path, cli):
    m = ["-m", str(siglip_dir)]
    cases = [
        (["classify", *m, "-i", str(files / "im0.png")], "labels"),
        (["classify", *m, "-i", str(files / "im0.png"), "--labels", "a", "--template", "no slot"], "{}"),
        (["classify", *m, "-i", str(files / "im0.png"), "--labels", "a,b", "--scoring", "max"], "scoring"),
        (["embed", *m], "--image"),
        (["embed", *m, "-i", str(tmp_path / "missing.png")], "not found"),
        (["embed", *m, "-i", str(files / "im0.png"), "--out", str(tmp_path / "x.csv")], ".parquet"),
        (["embed", "-m", str(tiny_model_dir), "-i", str(files / "im0.png")], "not a SigLIP checkpoint"),
        (["embed", *m, "-i", str(files / "im0.png"), "--resize", "lanczos"], "--resize"),
        (["ask", "-m", str(siglip_dir), "hi"], None),
    ]
    for args, needle in cases:
        res = cli(*args)
        assert res.returncode != 0, args
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.stderr, (args, res.stderr)
        if needle:
            assert needle in lines[0], (args, lines)


def test_variant_table_and_offline_resolution(siglip_dir, tmp_path, cli):
    """medsiglip-448 is a variant found on disk like MedGemma's ($MEDGEMMA_MODEL_PATH here); `ask` refuses it."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(siglip_dir, root / "medsiglip-448")
    env = {"MEDGEMMA_MODEL_PATH": str(root), "MEDGEMMA_HOME": str(tmp_path / "home")}
    rows = json.loads(cli("models", "--json", env=env).stdout)
    row = next(r for r in rows if r["name"] == "medsiglip-448")
    assert row["hub_id"] == "google/medsiglip-448" and row["modality"] == "embedding" and row["image_size"] == 448
    assert row["present"] and row["source"] == "search-path"
    png = tmp_path / "a.png"
    Image.new("RGB", (20, 30), (200, 10, 10)).save(png)
    res = cli("embed", "-i", str(png), "--json", env=env)  # no --model: medsiglip-448, found offline
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["model"] == "medsiglip-448"
    res = cli("ask", "-m", "medsiglip-448", "hello", env=env)
    assert res.returncode == 2 and "embedding model" in res.stderr
    gone = cli(
        "embed",
        "-i",
        str(png),
        env={"MEDGEMMA_MODEL_PATH": str(tmp_path / "none"), "MEDGEMMA_HOME": str(tmp_path / "home")},
    )
    assert gone.returncode == 2 and "huggingface.co/google/medsiglip-448" in gone.stderr


def test_whole_slide_gives_one_embedding_per_tissue_patch(ms, tmp_path):
    """A pyramidal TIFF slide: one vector per sampled 896-px tissue patch (imaging's sampling), each with its
    level-0 patch coordinates; each equals the vector of that patch's own pixels given as an image."""
    from medgemma_toolkit.imaging import ImageOptions
    from medgemma_toolkit.testing.synthetic_slide import slide_pixels, write_pyramid_tiff

    img = slide_pixels(2688, 1792, [(100, 100, 1500, 1000)])
    slide = write_pyramid_tiff(tmp_path / "s.tif", img, mpp=1.0, aperio=False)
    emb = ms.embed_images([str(slide)], ImageOptions(patch_order="spatial", max_patches=4))
    patches = [e["patch"] for e in emb.entries]
    assert 1 <= len(patches) <= 4 and all(p is not None and p[2] == 0 for p in patches)
    x, y = patches[0][:2]
    crop = Image.fromarray(img[y : y + 896, x : x + 896]).resize((32, 32), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(emb.vectors[0], ms.embed_images([crop]).vectors[0], atol=1e-5)


def test_bare_siglipmodel_folder_embeds_images_and_says_why_not_texts(tmp_path, files):
    """A folder written by `SiglipModel.save_pretrained` alone (no processor files): images embed with SigLIP's
    fixed preprocessing (equal to transformers' default SiglipImageProcessor at that size, run here directly);
    classify fails with one line naming the missing tokenizer."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    cfg = SiglipConfig(
        text_config=dict(
            vocab_size=99,
            hidden_size=40,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=40,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=42,
            patch_size=14,
        ),
    )
    SiglipModel(cfg).save_pretrained(tmp_path / "bare")
    r = run_cli(
        "embed",
        "--model",
        str(tmp_path / "bare"),
        "--image",
        str(files / "im0.png"),
        "--image",
        str(files / "b.dcm"),
        "--resize",
        "processor",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    items = json.loads(r.stdout)["items"]
    assert len(items) == 2 and all(len(it["embedding"]) == 40 for it in items)
    model = SiglipModel.from_pretrained(tmp_path / "bare").eval()
    px = SiglipImageProcessor(size={"height": 42, "width": 42})(
        images=[Image.open(files / "im0.png").convert("RGB")], return_tensors="pt"
    )["pixel_values"]
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=px)
    ref = torch.as_tensor(getattr(ref, "pooler_output", ref))
    ref = (ref / ref.norm(dim=-1, keepdim=True))[0].numpy()
    np.testing.assert_allclose(np.array(items[0]["embedding"]), ref, atol=1e-5)
    c = run_cli("classify", "--model", str(tmp_path / "bare"), "--image", str(files / "im0.png"), "--labels", "x,y")
    assert c.returncode != 0 and "no tokenizer" in c.stderr and "Traceback" not in c.stderr
    # A processor saved at transformers' default 224 px beside this 42 px model: the model's size wins (its
    # position embeddings allow no other), and the vector is the same as above.
    SiglipImageProcessor().save_pretrained(tmp_path / "bare")
    r2 = run_cli(
        "embed", "--model", str(tmp_path / "bare"), "--image", str(files / "im0.png"), "--resize", "processor", "--json"
    )
    assert r2.returncode == 0, r2.stderr
    np.testing.assert_allclose(np.array(json.loads(r2.stdout)["items"][0]["embedding"]), ref, atol=1e-5)


def test_auto_dtype_is_bf16_only_for_wide_towers_on_bf16_cpus(ms, siglip_dir, files, tmp_path):
    """`dtype="auto"` follows MedGemma's CPU inference rule (bf16 where the CPU has bf16 matrix instructions and the
    tower is >= 512 wide); fp32 vectors are the notebook path's within 1e-6, bf16 ones within cosine 0.999."""
    from medgemma_toolkit import MedSigLIP
    from medgemma_toolkit.runtime.torch_setup import cpu_auto_dtype, cpu_flags

    assert ms.info()["dtype"] == "float32"  # the 32-wide fixture: too narrow to gain from bf16
    wide = build_tiny_siglip(tmp_path / "wide", hidden_size=768, layers=1)
    paths = [str(files / f"im{k}.png") for k in range(3)]
    auto = MedSigLIP.load(str(wide))
    assert auto.info()["dtype"] == cpu_auto_dtype(cpu_flags(), 768)
    fp32 = MedSigLIP.load(str(wide), dtype="float32")
    assert fp32.info()["dtype"] == "float32"
    from transformers import SiglipModel

    model = SiglipModel.from_pretrained(str(wide)).eval()
    px = fp32.processor(images=[notebook_resize(Image.open(p), fp32.pre.size) for p in paths], return_tensors="pt")
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.vision_model(**px).pooler_output, dim=-1).numpy()
    np.testing.assert_allclose(fp32.embed_images(paths).vectors, want, atol=1e-6)
    assert np.min(np.sum(auto.embed_images(paths).vectors * want, axis=1)) >= 0.999
