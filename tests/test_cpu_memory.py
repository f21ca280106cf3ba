"""CPU dtype choice and memory estimates: `--dtype auto` on CPUs with and without bf16 matrix instructions, the
memory a model needs (checked against parameter counts computed independently, on meta-device models of the exact
configs), and the one-line refusal before loading what will not fit."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import run_cli

from medgemma_toolkit.models import footprint
from medgemma_toolkit.models.footprint import GIB, checkpoint_need, gguf_need, params_need, refusal, variant_needs
from medgemma_toolkit.models.variants import BY_NAME
from medgemma_toolkit.runtime.torch_setup import cpu_auto_dtype, cpu_flags, pick_device_dtype

# medgemma-4b-it's config.json values (as benchmarks/gpu/medgemma4b_check.py builds its random model)
TEXT_4B = dict(
    vocab_size=262_208,
    hidden_size=2560,
    intermediate_size=10_240,
    num_hidden_layers=34,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
)
VISION_4B = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=896,
    patch_size=14,
    vision_use_head=False,
)
# flags lines as the kernel prints them (trimmed): a Sapphire Rapids Xeon, a Zen 4 EPYC, a Skylake laptop
SPR = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\nbugs\t\t: sysret_ss_attrs\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"


def test_auto_dtype_follows_the_cpus_bf16_instructions():
    assert cpu_flags(SPR) >= {"amx_bf16", "avx512_bf16"} and "bugs" not in cpu_flags(ZEN4)
    assert cpu_flags("no flags here") == frozenset()
    for info, want in ((SPR, "bfloat16"), (ZEN4, "bfloat16"), (SKYLAKE, "float32")):
        assert cpu_auto_dtype(cpu_flags(info), 2560) == want  # MedGemma 4B's width
        assert cpu_auto_dtype(cpu_flags(info), 640) == want  # the demo model's
        assert cpu_auto_dtype(cpu_flags(info), 64) == "float32"  # a test-sized model gains nothing


def test_pick_device_dtype_on_this_cpu():
    """The expectation comes from torch's own CPU detection (cpuinfo, not /proc/cpuinfo's text, which the code
    parses), so a broken flag parser or rule fails here."""
    import torch

    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    here = torch.bfloat16 if native_bf16 else torch.float32
    assert pick_device_dtype("cpu", "auto", 2560, inference=True)[1] == here
    assert pick_device_dtype("cpu", "auto", 64, inference=True)[1] == torch.float32  # too narrow to gain
    assert pick_device_dtype("cpu", "auto", 2560)[1] == torch.float32  # training keeps fp32 on CPU
    assert pick_device_dtype("cpu", "float32", 2560, inference=True)[1] == torch.float32
    assert pick_device_dtype("cpu", "bfloat16", 64, inference=True)[1] == torch.bfloat16


def _meta_counts() -> tuple[int, int]:
    """(all parameters, vision tower + projector) of MedGemma 4B, counted on a meta-device model."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    cfg = Gemma3Config(
        text_config=Gemma3TextConfig(**TEXT_4B), vision_config=SiglipVisionConfig(**VISION_4B), mm_tokens_per_image=256
    )
    with torch.device("meta"):
        m = Gemma3ForConditionalGeneration(cfg)
    total = sum(p.numel() for p in m.parameters())
    vision = sum(p.numel() for n, p in m.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n)
    return total, vision


def test_memory_estimates_match_parameter_counts():
    total, vision = _meta_counts()
    assert footprint.VISION_PARAMS == vision
    v = BY_NAME["medgemma-4b-it"]
    assert v.params_b * 1e9 == pytest.approx(total, rel=0.005)
    # bf16 from bf16 safetensors: 2 bytes a parameter, nothing converted while loading
    need = params_need(total, "transformers", "bfloat16")
    assert need.weights == 2 * total
    assert need.peak == int(2 * total + footprint.RUNTIME_GIB["transformers"] * GIB + 0.05 * 2 * total)
    # fp32 from the same bf16 files: 4 bytes a parameter plus the mapped bf16 copy while converting (~24 GiB)
    fp32 = params_need(total, "transformers", "float32")
    assert fp32.weights == 4 * total and fp32.peak - need.peak > 4 * total - GIB
    assert 23 < fp32.peak / GIB < 27
    # GGUF: text at its quantisation, the vision tower + projector in the f16 mmproj
    q8 = params_need(total, "llamacpp", "q8_0", vision)
    assert q8.weights == int((total - vision) * 34 / 32 + vision * 2)
    shown = variant_needs(v.params_b, v.multimodal)
    assert shown["llamacpp q4_k_m"] < shown["llamacpp q8_0"] < shown["transformers bfloat16"] < 10
    assert variant_needs(27.0, False)["llamacpp q4_k_m"] < 24  # 27B text in Q4_K_M: a 24/32 GB machine


def test_checkpoint_need_counts_the_real_checkpoint(tiny_model_dir):
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    n = sum(p.numel() for p in model.parameters())  # shared (tied) tensors once, as safetensors stores them
    stored = {p.dtype for p in model.parameters()}
    assert stored == {torch.float32}
    fp32 = checkpoint_need(tiny_model_dir, "float32")
    bf16 = checkpoint_need(tiny_model_dir, "bfloat16")
    assert fp32 is not None and bf16 is not None
    assert fp32.weights == 4 * n and bf16.weights == 2 * n
    assert bf16.peak - bf16.weights > 4 * n  # converting from the fp32 files keeps them mapped while loading
    assert checkpoint_need(tiny_model_dir / "nowhere", "float32") is None


def test_gguf_need_is_the_files_plus_runtime(tmp_path):
    model, mmproj = tmp_path / "m-q4_k_m.gguf", tmp_path / "mmproj-m-f16.gguf"
    model.write_bytes(b"\0" * 1000)
    mmproj.write_bytes(b"\0" * 500)
    assert gguf_need(model).weights == 1000
    assert gguf_need(model, mmproj).weights == 1500
    # not real GGUFs: no KV shape to read, so no KV term
    assert gguf_need(model, mmproj).peak == int(1500 + footprint.RUNTIME_GIB["llamacpp"] * GIB + 0.25 * 1500)


def test_kv_term_follows_the_job_and_the_sliding_window():
    """Gemma 3 4B: 34 layers, 5 of them global; f16 K+V of 4 heads x 256 = 4 KiB a cell and layer. One question
    (1024 cells) costs 136 MiB; serve --parallel 8 (16,384 cells) 2.2 GiB with a full-size sliding-window cache, but
    its 29 local layers keep 8 x 1024 + 512 cells each with a windowed one."""
    kv = footprint.GEMMA3_4B_KV
    cell = 2 * 4 * 512  # bytes per cell and layer
    assert kv.bytes(1024) == 34 * cell * 1024
    full = footprint.KvShape(kv.layers, kv.kv_dim).bytes(16384, 8)
    assert full == 34 * cell * 16384
    assert kv.bytes(16384, 8) == 5 * cell * 16384 + 29 * cell * (8 * 1024 + 512)
    assert full - kv.bytes(16384, 8) > 0.8 * GIB  # 0.85 GiB less
    q4 = variant_needs(4.3, True)["llamacpp q4_k_m"]
    assert q4 <= 4.5  # the goal for one image question through the 4B Q4_K_M export


def test_refusal_line_and_available_memory(tmp_path):
    need = params_need(4_300_000_000, "transformers", "float32")
    line = refusal(need, "medgemma-4b-it through transformers", 20 * GIB, "try --dtype bfloat16")
    assert line is not None and "\n" not in line
    assert (
        f"needs about {need.peak / GIB:.1f} GiB" in line
        and 25 < need.peak / GIB < 27
        and "only 20.0 GiB" in line
        and "--no-memory-check" in line
    )
    assert refusal(need, "x", 64 * GIB, "") is None and refusal(need, "x", None, "") is None
    meminfo = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n"
    assert footprint.available_bytes(meminfo, str(tmp_path)) == 20000000 * 1024  # no cgroup files: MemAvailable
    (tmp_path / "memory.max").write_text(f"{8 * GIB}\n")
    (tmp_path / "memory.current").write_text(f"{2 * GIB}\n")
    assert footprint.available_bytes(meminfo, str(tmp_path)) == 6 * GIB  # a container's limit is tighter
    (tmp_path / "memory.max").write_text("max\n")
    assert footprint.available_bytes(meminfo, str(tmp_path)) == 20000000 * 1024


def _huge_checkpoint(path: Path) -> Path:
    """A checkpoint whose safetensors header declares 2 x 10^12 bf16 parameters (no data: never loadable)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "hidden_size": 2560}))
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1_000_000, 2_000_000], "data_offsets": [0, 0]}}).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_cli_refuses_what_does_not_fit_in_one_line(tmp_path):
    ckpt = _huge_checkpoint(tmp_path / "huge")
    r = run_cli("ask", "--model", str(ckpt), "--device", "cpu", "Which organ produces insulin?")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "needs about" in lines[-1] and "Traceback" not in r.stderr
    # the override goes on to load, which then fails on the empty weights: a different error
    r = run_cli("ask", "--model", str(ckpt), "--device", "cpu", "--no-memory-check", "Which organ produces insulin?")
    assert r.returncode != 0 and "needs about" not in r.stderr


def test_cli_refuses_a_gguf_larger_than_memory(tmp_path):
    pytest.importorskip("llama_cpp")
    # a GGUF larger than memory (a sparse file: no disk used) is refused before llama.cpp maps it
    gguf = tmp_path / "big-q4_k_m.gguf"
    with open(gguf, "wb") as f:
        f.truncate(1 << 42)
    r = run_cli("ask", "--model", str(gguf), "Hi")
    assert (
        r.returncode == 2
        and f"needs about {4096 * 1.25 + footprint.RUNTIME_GIB['llamacpp']:.1f} GiB"
        in r.stderr.strip().splitlines()[-1]
    )
