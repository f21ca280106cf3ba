"""`medgemma asr-finetune`: CTC fine-tuning of a tiny random `lasr_ctc` checkpoint on espeak-ng speech.

The loss falls on a tiny set, the result loads in `transcribe`, and a run killed with SIGKILL after a checkpoint
resumes from it to the end with a continuous loss log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SENTENCES = ["no pneumothorax", "small left pleural effusion", "the heart size is normal", "lungs are clear"]


@pytest.fixture(scope="module")
def asr_dir(tmp_path_factory) -> Path:
    from medgemma_toolkit.testing.tiny_asr import build_tiny_asr

    return build_tiny_asr(tmp_path_factory.mktemp("asr") / "tiny-medasr")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: apt-get install -y espeak-ng (scripts/test.sh does)")
    d = tmp_path_factory.mktemp("dictations")
    for i, s in enumerate(SENTENCES):
        subprocess.run(["espeak-ng", "-w", str(d / f"d{i}.wav"), s], check=True, capture_output=True)
        (d / f"d{i}.txt").write_text(s)
    return d


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "loss_log.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_loss_falls_and_the_model_transcribes(cli, asr_dir, data, tmp_path):
    run = tmp_path / "run"
    r = cli(
        "asr-finetune", "--model", str(asr_dir), "--data", str(data), "-o", str(run), "--max-steps", "16",
        "--batch-size", "4", "--grad-accum", "1", "--learning-rate", "3e-3", "--warmup-steps", "0", "--save-steps", "8",
        "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    prov = json.loads(r.stdout)
    losses = [v for _, v in _losses(run)]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert prov["task"] == "asr-ctc" and prov["recordings"] == len(SENTENCES) and prov["dropped_short"] == 0
    t = cli("transcribe", "--model", str(run / "model"), str(data / "d0.wav"), "--json")
    assert t.returncode == 0, t.stderr


def test_kill_9_then_resume_finishes_with_a_continuous_log(cli, asr_dir, data, tmp_path):
    from medgemma_toolkit.train import checkpoints as ck

    run = tmp_path / "run"
    args = ["asr-finetune", "--model", str(asr_dir), "--data", str(data), "-o", str(run), "--max-steps", "60",
            "--batch-size", "2", "--grad-accum", "1", "--learning-rate", "1e-3", "--save-steps", "3", "-q"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medgemma_toolkit", *args], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (run / "checkpoints").is_dir() or not ck.complete_checkpoints(run / "checkpoints"):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "model").exists()
    resumed_from = ck.complete_checkpoints(run / "checkpoints")[-1][0]
    r = cli("asr-finetune", "--data", str(data), "-o", str(run), "--resume", "--json")
    assert r.returncode == 0, r.stderr
    prov = json.loads(r.stdout)
    assert prov["resumed_from_step"] >= resumed_from >= 3
    steps = [s for s, _ in _losses(run)]
    assert steps == list(range(1, 61))  # cut back to the checkpoint, then continued: no gap, no repeat
    assert (run / "model" / "config.json").is_file()
