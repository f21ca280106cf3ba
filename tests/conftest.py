"""Shared fixtures: tiny random MedGemma-architecture checkpoints and ways to run the real CLI."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import time
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


def run_cli_inproc(*args: str, input: str | None = None, env: dict[str, str] | None = None,
                   cwd: str | Path | None = None, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """`medgemma ARGS...` through the same `main` in this process: no interpreter and torch start-up per call.

    Same result shape as `run_cli`. Use `run_cli` where the real process matters: the installed entry point,
    signals, kill -9, environment read at import time (HF_HOME, HF_DATASETS_CACHE)."""
    from medgemma_toolkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_stdin = dict(os.environ), sys.stdin
    # Log records reach the captured stderr as they would a process's (the CLI's own format), so tests that look
    # for PHI or for stray lines on stderr see them in process too.
    log = logging.StreamHandler(err)
    log.setLevel(logging.WARNING)
    log.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(log)
    try:
        os.environ.update(env or {})
        if input is not None:
            sys.stdin = io.StringIO(input)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                (contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext()):
            try:
                main(list(args))
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        logging.getLogger().removeHandler(log)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(["medgemma", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    """`medgemma ARGS...` in this process (see `run_cli_inproc`)."""
    return run_cli_inproc


def wait_until(predicate, timeout: float = 30.0, every: float = 0.05) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False): a condition, not a guessed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


SCRIPT = "<unused94>thought The heart is large.<unused95>Cardiomegaly."


@pytest.fixture(scope="session")
def scripted_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint rewired so that greedy decoding of any chat prompt yields `SCRIPT` (a thought + answer)."""
    from medgemma_toolkit.testing.scripted import build_scripted_checkpoint

    return build_scripted_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("scripted") / "scripted", SCRIPT)
