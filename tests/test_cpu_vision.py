"""The CPU fast path for the vision tower (runtime/cpu_vision.py): OpenVINO's tower gives the torch tower's image
features and the same greedy answer, is chosen by itself on a CPU with bf16 weights, is cached per weights, and
falls back to torch (one warning) when conversion fails. Tiny random checkpoints; OpenVINO converts them in seconds."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from medgemma_toolkit import MedGemma
from medgemma_toolkit.core.options import LoadOptions
from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.testing.synthetic_cxr import make_cxr


@pytest.fixture(scope="module")
def vision_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint with a non-zero projector: a fresh Gemma 3 projector is all zeros, so its image features
    (and any comparison of them) would be zero whatever the tower computed."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    out = tmp_path_factory.mktemp("vision") / "tiny-vision"
    shutil.copytree(tiny_model_dir, out)
    model = Gemma3ForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        proj = model.model.multi_modal_projector
        proj.mm_input_projection_weight.normal_(0, 1.0)
        proj.mm_soft_emb_norm.weight.normal_(0, 1.0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def cxr_png(tmp_path_factory) -> Path:
    from PIL import Image

    ds = make_cxr(rows=96, cols=80)
    arr = ds.pixel_array.astype("float32")
    arr = (255 * (arr - arr.min()) / max(1.0, float(arr.max() - arr.min()))).astype("uint8")
    path = tmp_path_factory.mktemp("img") / "cxr.png"
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Conversions go to a cache of this module's own, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "ov-cache"))


def load(path: Path, runtime: str, dtype: str = "float32") -> MedGemma:
    return MedGemma.load(str(path), LoadOptions(device="cpu", dtype=dtype, vision_runtime=runtime))


def features(mg: MedGemma, image: Path):
    """The projected image features of `image`, through whatever tower the backend runs."""
    import torch
    from PIL import Image

    backend = mg.backend
    px = backend.processor.image_processor(Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = backend.model.model.get_image_features(px.to(backend.model.dtype)).pooler_output
    return out.float().flatten()


def cosine(a, b) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("dtype,min_cos", [("float32", 0.99999), ("bfloat16", 0.999)])
def test_openvino_features_match_the_torch_tower(vision_model_dir, cxr_png, dtype, min_cos):
    ref = load(vision_model_dir, "torch", dtype)
    fast = load(vision_model_dir, "openvino", dtype)
    assert ref.backend.vision.runtime == "torch"
    assert fast.backend.vision.runtime == "openvino"
    a, b = features(ref, cxr_png), features(fast, cxr_png)
    assert float(a.norm()) > 0
    assert cosine(a, b) >= min_cos
    assert fast.backend.vision.images == 1 and fast.backend.vision.fallbacks == 0
    assert ref.backend.vision.images == 0


def test_same_greedy_answer_through_the_fast_path(vision_model_dir, cxr_png):
    ref = load(vision_model_dir, "torch")
    fast = load(vision_model_dir, "openvino")
    q = "Describe this chest X-ray."
    a = ref.ask(q, images=[str(cxr_png)], max_new_tokens=12)
    b = fast.ask(q, images=[str(cxr_png)], max_new_tokens=12)
    assert a.text == b.text and a.completion_tokens == b.completion_tokens
    assert fast.backend.vision.images >= 1  # the answer really came through OpenVINO's tower


def test_auto_picks_openvino_on_cpu_bf16_and_torch_for_fp32(vision_model_dir, cxr_png):
    bf16 = load(vision_model_dir, "auto", "bfloat16")
    assert bf16.backend.vision.runtime == "openvino"
    assert bf16.backend.info.extra["vision_tower"] == "openvino"
    answer = bf16.ask("What is shown?", images=[str(cxr_png)], max_new_tokens=2)
    assert bf16.backend.vision.images == 1
    assert answer.timings["vision_tower"] == "openvino"  # what --json shows
    fp32 = load(vision_model_dir, "auto", "float32")
    assert fp32.backend.vision.runtime == "torch"
    assert fp32.backend.info.extra["vision_tower"] == "torch"


def test_conversion_is_cached_per_weights(vision_model_dir, tiny_model_dir, cxr_png, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    base = tmp_path / "medgemma_toolkit" / "openvino"
    first = load(vision_model_dir, "openvino")
    features(first, cxr_png)
    assert "converting the vision tower" in capfd.readouterr().err
    assert len(list(base.glob("siglip-*"))) == 1
    again = load(vision_model_dir, "openvino")
    features(again, cxr_png)
    assert "converting" not in capfd.readouterr().err  # compiled from the saved IR
    assert again.backend.vision.images == 1
    # Only the projector differs from tiny_model_dir, and it is not in the IR: the same conversion serves both.
    features(load(tiny_model_dir, "openvino"), cxr_png)
    assert len(list(base.glob("siglip-*"))) == 1
    # Other tower weights (as a merged LoRA would give): a conversion of their own.
    changed = load(vision_model_dir, "openvino")
    import torch

    with torch.no_grad():
        changed.backend.model.model.vision_tower.encoder.layers[0].mlp.fc1.weight.mul_(1.5)
    features(changed, cxr_png)
    assert len(list(base.glob("siglip-*"))) == 2


def test_failed_conversion_falls_back_to_torch(vision_model_dir, cxr_png, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be created: conversion fails
    fast = load(vision_model_dir, "openvino")
    ref = load(vision_model_dir, "torch")
    with caplog.at_level(logging.WARNING, logger="medgemma_toolkit.runtime.cpu_vision"):
        b = features(fast, cxr_png)
    assert fast.backend.vision.runtime == "torch"
    assert "conversion failed" in fast.backend.vision.reason
    assert [r for r in caplog.records if "conversion failed" in r.getMessage()]
    assert cosine(b, features(ref, cxr_png)) > 0.99999


def test_bad_vision_runtime_is_one_line_before_loading(vision_model_dir):
    with pytest.raises(BadInput, match="--vision-runtime must be one of"):
        load(vision_model_dir, "onnx")


def test_cli_rejects_a_bad_vision_runtime(cli, vision_model_dir, cxr_png):
    r = cli("ask", "-m", str(vision_model_dir), "-i", str(cxr_png), "--vision-runtime", "onnx", "What?")
    assert r.returncode != 0
    assert "--vision-runtime must be one of" in r.stderr
    assert "Traceback" not in r.stderr


_PROBE = """
import sys
if sys.argv[1] == "guarded":
    from medgemma_toolkit.runtime.cpu_vision import import_openvino
    import_openvino()
import openvino.tools.ovc as ovc
print("consent", bool(ovc.telemetry.consent))
"""


@pytest.mark.parametrize("mode,consent", [("plain", True), ("guarded", False)])
def test_openvino_telemetry_is_declined_before_import(tmp_path, mode, consent):
    """OpenVINO sends a usage event at import unless a consent file says no (oracle: the plain import in a fresh
    home consents). Through `import_openvino` nothing consents and nothing is written under the home folder."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"consent {consent}" in out.stdout
    if not consent:
        assert list(home.iterdir()) == []  # no consent or client-id file written for us
