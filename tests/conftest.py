"""Shared fixtures: tiny random MedGemma-architecture checkpoints and ways to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny multimodal checkpoint (Gemma 3 + SigLIP + projector) with the Gemma 3 chat template."""
    from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma

    return build_tiny_medgemma(tmp_path_factory.mktemp("tiny") / "tiny-medgemma")


@pytest.fixture(scope="session")
def tiny_text_model_dir(tmp_path_factory) -> Path:
    """A tiny text-only `Gemma3ForCausalLM` checkpoint (like medgemma-27b-text-it)."""
    from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma

    return build_tiny_medgemma(tmp_path_factory.mktemp("tinytext") / "tiny-text", text_only=True)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """The tiny multimodal checkpoint loaded once through the public API."""
    from medgemma_toolkit import MedGemma

    return MedGemma.load(str(tiny_model_dir))


def run_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 300,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `medgemma ARGS...` as a real subprocess (the installed entry point's module)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "medgemma_toolkit", *args],
        input=input, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )


@pytest.fixture
def cli():
    return run_cli


SCRIPT = "<unused94>thought The heart is large.<unused95>Cardiomegaly."


@pytest.fixture(scope="session")
def scripted_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint rewired so that greedy decoding of any chat prompt yields `SCRIPT` (a thought + answer)."""
    from medgemma_toolkit.testing.scripted import build_scripted_checkpoint

    return build_scripted_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("scripted") / "scripted", SCRIPT)
