"""bf16 weights with float32 arithmetic (`--dtype bfloat16-weights`, runtime/bf16_weights.py), for CPUs without bf16
instructions, and `--dtype auto` choosing it where float32 does not fit the memory available.

The oracle is a float32 model holding the same (bf16-rounded) weights: upcasting bf16 is exact, so a prefill must
give its logits; decode rows multiply in bf16 and are held to `F.linear` in bf16 on the same tensors.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SCRIPT

from medgemma_toolkit import MedGemma
from medgemma_toolkit.core.options import LoadOptions
from medgemma_toolkit.errors import BackendUnavailable
from medgemma_toolkit.loading import check_memory, fit_cpu_dtype, load_backend
from medgemma_toolkit.models.footprint import checkpoint_need
from medgemma_toolkit.models.resolve import resolve_model
from medgemma_toolkit.runtime.bf16_weights import MODE, UPCAST_ELEMENTS, UPCAST_ROWS, keep_bf16_weights, weight_bytes

F = torch.nn.functional


def _layer(out_features: int, in_features: int) -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features).to(torch.bfloat16)
    assert keep_bf16_weights(layer) == 1
    return layer


def test_few_rows_multiply_in_bf16_and_many_through_an_exact_upcast():
    layer = _layer(96, 64)
    assert layer.weight.dtype == torch.bfloat16 and layer.bias.dtype == torch.float32
    w, b = layer.weight, layer.bias
    with torch.inference_mode():
        for shape in [(1, 64), (2, 3, 64), (UPCAST_ROWS - 1, 64)]:  # decode: bf16 in, bf16 out, float32 returned
            x = torch.randn(*shape)
            want = F.linear(x.to(torch.bfloat16), w, b.to(torch.bfloat16)).float()
            assert layer(x).dtype == torch.float32 and torch.equal(layer(x), want)
        for shape in [(UPCAST_ROWS, 64), (4, 70, 64)]:  # prefill: float32 on the upcast weight
            x = torch.randn(*shape)
            assert torch.equal(layer(x), F.linear(x, w.float(), b))


def test_a_layer_larger_than_the_upcast_slice_is_upcast_a_slice_at_a_time():
    layer = _layer(UPCAST_ELEMENTS // 256 + 1000, 256)  # one slice and a remainder of 1,000 outputs
    x = torch.randn(UPCAST_ROWS + 3, 256)
    with torch.inference_mode():
        got = layer(x)
        want = F.linear(x, layer.weight.float(), layer.bias)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_gemma_s_embedding_scale_is_the_float32_one():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextScaledWordEmbedding

    torch.manual_seed(0)
    ref = Gemma3TextScaledWordEmbedding(300, 2560, 0, embed_scale=2560**0.5)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # as from_pretrained(dtype=bfloat16) builds it: sqrt(2560) -> 50.5
    try:
        emb = Gemma3TextScaledWordEmbedding(300, 2560, 0, embed_scale=2560**0.5)
    finally:
        torch.set_default_dtype(prev)
    with torch.no_grad():
        ref.weight.copy_(ref.weight.to(torch.bfloat16).float())
        emb.weight.copy_(ref.weight)
    assert emb.embed_scale.item() != ref.embed_scale.item()
    keep_bf16_weights(emb)
    ids = torch.tensor([[1, 7, 299]])
    assert torch.equal(emb(ids), ref(ids))


def _round_through_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 model's floating parameters rounded through bf16, as the bf16 load holds them (in place)."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16).float()
    return model


def _float32_twin(path: Path):
    """The multimodal float32 model of `path` with the bf16 load's weights."""
    from transformers import AutoModelForImageTextToText

    return _round_through_bf16(AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32).eval())


def test_a_prefill_gives_the_logits_of_a_float32_model_with_the_same_weights(tiny_model_dir):
    mg = MedGemma.load(str(tiny_model_dir), dtype=MODE)
    be = mg.backend
    assert be.info.extra["dtype"] == MODE and be.dtype == torch.float32
    for name, p in be.model.named_parameters():
        owner = be.model.get_submodule(name.rsplit(".", 1)[0])
        big = isinstance(owner, (torch.nn.Linear, torch.nn.Embedding)) and name.endswith("weight")
        assert p.dtype == (torch.bfloat16 if big else torch.float32), name
    half, full = weight_bytes(be.model)
    assert half > 4 * full  # nearly all of the weights stay in bf16
    twin = _float32_twin(tiny_model_dir)
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    prompt = mg.request("Describe the heart and both lungs in this radiograph.", [image]).prompt
    inputs = be._encode([prompt]).to("cpu")
    assert inputs["input_ids"].shape[1] >= UPCAST_ROWS
    with torch.inference_mode():
        got = be.model(**inputs).logits
        want = twin(**inputs).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_answers_scores_and_batches_match_a_float32_load(scripted_model_dir, tiny_text_model_dir):
    script = MedGemma.load(str(scripted_model_dir), dtype=MODE)
    answer = script.ask("Is the heart enlarged?", think=True, max_new_tokens=40)
    assert answer.raw == SCRIPT and answer.text == "Cardiomegaly."
    # Log-likelihood reads the output layer's (bf16) weight in float32 chunks: the float32 twin's numbers.
    mg = MedGemma.load(str(tiny_text_model_dir), dtype=MODE)
    ref = MedGemma.load(str(tiny_text_model_dir), dtype="float32")
    _round_through_bf16(ref.backend.model)
    pairs = [(mg.request(q).prompt, c) for q, c in [("Sepsis?", " yes"), ("Edema of the legs?", " no"), ("x", " 4")]]
    assert mg.backend.loglikelihood(pairs, batch_size=2) == pytest.approx(ref.backend.loglikelihood(pairs), abs=1e-4)
    one = [mg.ask(q, max_new_tokens=6).completion_tokens for q in ("Edema?", "What is sepsis?")]
    both = [a.completion_tokens for a in mg.ask_batch(["Edema?", "What is sepsis?"], max_new_tokens=6)]
    assert one == both == [6, 6]


def _stored_in_bf16(src: Path, dst: Path) -> Path:
    """A copy of `src` whose safetensors hold bf16, as MedGemma's checkpoints do (the tiny one is float32)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(f).items()}
        save_file(tensors, f, metadata={"format": "pt"})
    return dst


def test_auto_keeps_bf16_weights_only_where_float32_does_not_fit(tiny_model_dir, tmp_path):
    path = _stored_in_bf16(tiny_model_dir, tmp_path / "bf16")
    resolved = resolve_model(str(path))
    full, half = checkpoint_need(path, "float32"), checkpoint_need(path, "bfloat16")
    assert full is not None and half is not None and half.peak < full.peak
    auto = LoadOptions(device="cpu")
    between = (full.peak + half.peak) // 2
    assert fit_cpu_dtype(resolved, "transformers", auto, available=between).dtype == MODE
    assert fit_cpu_dtype(resolved, "transformers", auto, available=full.peak).dtype == "auto"  # float32 fits
    # Nothing fits: the refusal names the smaller need (and a GGUF export, not a dtype that would not fit either).
    assert fit_cpu_dtype(resolved, "transformers", auto, available=half.peak - 1).dtype == MODE
    with pytest.raises(BackendUnavailable, match="GGUF export") as e:
        check_memory(
            resolved, "transformers", fit_cpu_dtype(resolved, "transformers", auto, half.peak - 1), half.peak - 1
        )
    assert f"{half.peak / 1024**3:.1f} GiB" in str(e.value) and "--dtype" not in str(e.value).split("(", 1)[1]
    for other in (dataclasses.replace(auto, dtype="float32"), dataclasses.replace(auto, dtype="bfloat16")):
        assert fit_cpu_dtype(resolved, "transformers", other, available=between) is other  # the user's choice
    assert fit_cpu_dtype(resolved, "llamacpp", auto, available=between) is auto


def test_the_choice_reaches_the_backend_and_the_cli(tiny_model_dir, cli):
    be, _, _ = load_backend(str(tiny_model_dir), LoadOptions(device="cpu", dtype=MODE))
    assert be.info.extra["dtype"] == MODE
    r = cli("ask", "Is there an effusion?", "--model", str(tiny_model_dir), "--dtype", MODE, "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    r = cli("ask", "Effusion?", "--model", str(tiny_model_dir), "--dtype", "bfloat16-weight", "--max-new-tokens", "4")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "--dtype" in r.stderr
    r = cli("ask", "Effusion?", "--model", str(tiny_model_dir), "--dtype", MODE, "--quantize", "4bit")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "--quantize 4bit" in r.stderr


def test_the_openvino_tower_converts_from_bf16_weights(tiny_model_dir, tmp_path, monkeypatch):
    """`--vision-runtime openvino` exports the tower through these layers: torch.export sees `F.linear` on the upcast
    weights (oneDNN's op has no OpenVINO conversion), and the answer is the torch tower's."""
    from PIL import Image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # a fresh conversion, not one cached by another test
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    ov = MedGemma.load(str(tiny_model_dir), dtype=MODE, vision_runtime="openvino")
    got = ov.ask("Describe the image.", [image], max_new_tokens=6)
    assert ov.backend.vision.runtime == "openvino" and ov.backend.vision.images == 1, ov.backend.vision
    assert ov.backend.vision.fallbacks == 0
    ref = MedGemma.load(str(tiny_model_dir), dtype=MODE, vision_runtime="torch")
    assert got.raw == ref.ask("Describe the image.", [image], max_new_tokens=6).raw
