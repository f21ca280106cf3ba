"""Shared fixtures: tiny random MedGemma-architecture checkpoints, ways to run the real CLI, a real Orthanc DICOMweb
server and a GGUF export shared by several modules (fixtures live here, never imported from another test module)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, write_series

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


def run_cli(
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `medgemma ARGS...` as a real subprocess (the installed entry point's module)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "medgemma_toolkit", *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )


def run_cli_inproc(
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
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
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext(),
        ):
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


# -- shared by several test modules ----------------------------------------------------------------------------------
# A real DICOMweb server (Orthanc) on loopback, loaded with a CT series and a small series.
USER, PASSWORD = "alice", "wonderland-7"
STUDY = "1.2.826.0.1.3680043.8.498.2"
CT_SERIES = "1.2.826.0.1.3680043.8.498.1"
SMALL_SERIES = "1.2.826.0.1.3680043.8.498.5"
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster on loopback (a head and one worker node, 1 CPU each, each its own `ray start`
    process session) whose workers import this source tree; torn down by killing exactly those sessions (never
    `ray stop`, which would stop every Ray of this user on the machine). About 30 s to start: mark users slow."""
    import tempfile

    import medgemma_toolkit
    from medgemma_toolkit.testing.ray_cluster import start_cluster

    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    cluster = start_cluster(temp, Path(medgemma_toolkit.__file__).resolve().parents[1])
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pacs")
    write_series(d / "ct", SeriesSpec(slices=10, rows=32, cols=32))
    write_series(d / "small", SeriesSpec(slices=3, rows=32, cols=32, series_uid=SMALL_SERIES))
    return d


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, series_dir):
    """Orthanc with the DICOMweb plugin on free loopback ports, basic auth on, loaded with two series."""
    if not os.path.exists(ORTHANC):
        pytest.fail("Orthanc is not installed: apt-get install -y orthanc orthanc-dicomweb (scripts/test.sh does)")
    work = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "medgemma-test",
        "StorageDirectory": str(work / "db"),
        "IndexDirectory": str(work / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    cfg = work / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(work / "orthanc.log", "w")
    proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        for _ in range(150):
            try:
                if requests.get(f"{base}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"Orthanc exited with {proc.returncode}: {(work / 'orthanc.log').read_text()[-500:]}")
            time.sleep(0.1)
        else:
            pytest.fail("Orthanc did not answer within 15 s")
        for f in sorted(series_dir.rglob("*.dcm")):
            r = requests.post(f"{base}/instances", data=f.read_bytes(), auth=(USER, PASSWORD), timeout=10)
            r.raise_for_status()
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("MEDGEMMA_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDGEMMA_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.delenv("MEDGEMMA_DICOMWEB_TOKEN", raising=False)


def uri(base: str, *path: str) -> str:
    return "dicomweb+http://" + base.split("://", 1)[1] + "/dicom-web/" + "/".join(path)


# GGUF export through the real CLI, once per session, shared by the llama.cpp backend tests.
def exported(tmp_path_factory, checkpoint: Path, key: str, *extra: str) -> Path:
    """Export once per test session (shared by the llamacpp backend tests) through the real CLI."""
    out = tmp_path_factory.getbasetemp() / f"gguf-{key}"
    done = out / "export.json"
    if not done.is_file():
        r = run_cli(
            "export",
            "gguf",
            str(checkpoint),
            "-o",
            str(out),
            "--outtype",
            "f32",
            "--mmproj-outtype",
            "f32",
            "--name",
            key,
            *extra,
            timeout=900,
        )
        assert r.returncode == 0, r.stderr
    return out


# Prompts of unlike lengths (a word to a paragraph) and answer limits, one per row: the batched greedy decoders
# (pruning, buckets, the preallocated cache) are checked row by row against `generate_alone` on them.
DECODE_QUESTIONS = [
    "Is there an effusion?",
    "Describe the heart size in this radiograph, the mediastinum, both lungs, the pleural spaces, the bones and "
    "the soft tissues, and say which of these findings needs follow-up and how soon it should be done.",
    "Edema?",
    "What is sepsis and how is it treated in the first hour?",
    "x",
]
DECODE_LIMITS = [5, 24, 11, 18, 30]


def generate_alone(mg, req, drop_stop: bool = False) -> list[int]:
    """New tokens of plain `model.generate` on one request alone: the oracle the batched decoders are held to (same
    greedy tokens row by row). `drop_stop` drops a final stop token, as our decoders report it."""
    import torch

    be = mg.backend
    text = be.render(req.prompt)
    images = req.prompt.all_images()
    if images:
        inputs = be.processor(text=[text], images=[images], return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(be.model.dtype)
    else:
        inputs = be.tokenizer([text], return_tensors="pt", add_special_tokens=False)
    stop = {"stop_strings": list(req.params.stop), "tokenizer": be.tokenizer} if req.params.stop else {}
    with torch.inference_mode():
        out = be.model.generate(
            **inputs,
            max_new_tokens=req.params.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=be.stop_ids,
            pad_token_id=be.tokenizer.pad_token_id,
            **stop,
        )
    ids = out[0, inputs["input_ids"].shape[1] :].tolist()
    return ids[:-1] if drop_stop and ids and ids[-1] in be.stop_ids else ids


def sr_batch_rows(tmp_path: Path, write_cxr) -> tuple[Path, list[Path]]:
    """A `batch --sr` input: a 5-slice CT series asked twice (all slices, then two), a CXR (written by `write_cxr`)
    and a PNG, as rows.jsonl naming the files one by one. Returns (rows file, the CT slices)."""
    from PIL import Image

    files = write_series(tmp_path / "ct", SeriesSpec(slices=5, rows=16, cols=16))
    write_cxr(tmp_path / "cxr.dcm")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    slices = [f"ct/{f.name}" for f in files]  # rows name files (a series' slices given one by one)
    rows = [
        {"id": "a", "question": "Any nodule?", "images": slices},
        {"id": "b", "question": "Where is the CXR?", "image": "cxr.dcm"},
        {"id": "c", "question": "Any mass?", "images": slices[:2]},
        {"id": "d", "question": "A photo?", "image": "x.png"},
    ]
    inp = tmp_path / "rows.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return inp, files
