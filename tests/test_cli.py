"""The real `medgemma` CLI end to end on tiny checkpoints: text, PNG, DICOM, multi-image, JSON, chat, preview, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SCRIPT, run_cli
from PIL import Image
from pydicom.data import get_testdata_file
from test_imaging import write_dicom

PHI = ("Doe", "Jane", "PHI-123456", "19700101")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(d / "cxr.png")
    Image.fromarray((rng.random((64, 48)) * 255).astype(np.uint8), "L").save(d / "prior.jpg")
    write_dicom(d / "phi.dcm", (rng.random((32, 32)) * 4000).astype(np.uint16))
    return d


def ok_json(res):
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_ask_text_json(tiny_model_dir):
    out = ok_json(
        run_cli("ask", "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--json", "Is the heart enlarged?")
    )
    assert out["completion_tokens"] == 6 and out["preset"] == "medgemma-v1@2"
    assert set(out) >= {"text", "thought", "model", "preset", "timings", "prompt_tokens", "completion_tokens"}
    assert out["timings"]["load_s"] > 0 and out["demo_model"] is False


def test_ask_png_dicom_and_multi_image(tiny_model_dir, images, cli):
    base = ok_json(cli("ask", "-m", str(tiny_model_dir), "--max-new-tokens", "4", "--json", "Describe."))
    one = ok_json(
        cli(
            "ask",
            "-m",
            str(tiny_model_dir),
            "-i",
            str(images / "cxr.png"),
            "--max-new-tokens",
            "4",
            "--json",
            "Describe.",
        )
    )
    # 16 soft tokens + <start_of_image> + <end_of_image> per image (the tiny model's mm_tokens_per_image is 16)
    assert one["prompt_tokens"] - base["prompt_tokens"] >= 18
    two = ok_json(
        cli(
            "ask",
            "-m",
            str(tiny_model_dir),
            "-i",
            str(images / "cxr.png"),
            "-i",
            str(images / "prior.jpg"),
            "--max-new-tokens",
            "4",
            "--json",
            "Describe.",
        )
    )
    assert two["prompt_tokens"] - one["prompt_tokens"] >= 18
    dcm = cli("ask", "-m", str(tiny_model_dir), "-i", str(images / "phi.dcm"), "--max-new-tokens", "4", "Describe.")
    assert dcm.returncode == 0, dcm.stderr
    ct = cli(
        "ask",
        "-m",
        str(tiny_model_dir),
        "-i",
        get_testdata_file("CT_small.dcm", download=False),
        "--window",
        "40,400",
        "--max-new-tokens",
        "3",
        "--json",
        "Organ?",
    )
    assert ok_json(ct)["completion_tokens"] == 3


def test_thinking_split_end_to_end(scripted_model_dir, cli):
    out = ok_json(cli("ask", "-m", str(scripted_model_dir), "--json", "Is the heart enlarged?"))
    assert out["raw"] == SCRIPT
    assert out["thought"] == "The heart is large." and out["text"] == "Cardiomegaly."
    plain = cli("ask", "-m", str(scripted_model_dir), "Is the heart enlarged?")
    assert plain.stdout.strip() == "Cardiomegaly."  # a thought that appears anyway is never shown as the answer
    assert "heart is large" not in plain.stdout + plain.stderr
    think = cli("ask", "-m", str(scripted_model_dir), "--think", "Is the heart enlarged?")
    assert think.stdout.strip() == "Cardiomegaly." and "[thought] The heart is large." in think.stderr


def test_chat_repl_multi_turn(scripted_model_dir, images, cli):
    session = f"/image {images / 'cxr.png'}\nFirst question?\n/think\nSecond question?\n/reset\n/quit\n"
    res = cli("chat", "-m", str(scripted_model_dir), input=session)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert sum(line == "Cardiomegaly." for line in lines) == 2
    assert "(attached" in res.stdout and "(thinking on)" in res.stdout and "[thought] The heart is large." in res.stdout
    assert "(conversation cleared)" in res.stdout


def test_preview_writes_model_input(tiny_model_dir, images, tmp_path, cli):
    out = tmp_path / "p.png"
    res = cli("preview", str(images / "cxr.png"), "-o", str(out), "--model", str(tiny_model_dir))
    assert res.returncode == 0, res.stderr
    got = Image.open(out)
    assert got.size == (64, 64)
    from medgemma_toolkit.imaging import load_image, to_model_image

    assert np.array_equal(np.asarray(got), np.asarray(to_model_image(load_image(images / "cxr.png"), 64)))
    res = cli("preview", str(images / "phi.dcm"), "-o", str(tmp_path / "d.png"))
    assert res.returncode == 0 and Image.open(tmp_path / "d.png").size == (896, 896)


def test_models_lists_variants_offline(tmp_path, tiny_model_dir):
    env = {"MEDGEMMA_HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    out = ok_json(run_cli("models", "--json", env=env))
    names = [r["name"] for r in out]
    assert names[:5] == [
        "medgemma-4b-pt",
        "medgemma-4b-it",
        "medgemma-27b-text-it",
        "medgemma-27b-it",
        "medgemma-1.5-4b-it",
    ]
    assert not any(r["present"] for r in out)
    assert out[1]["memory_gib"]["bf16"] > out[1]["memory_gib"]["4bit"] > 0
    assert run_cli("models", "register", "medgemma-4b-it", str(tiny_model_dir), env=env).returncode == 0
    out = ok_json(run_cli("models", "--json", env=env))
    assert out[1]["present"] and out[1]["source"] == "registered"
    # the registered name now resolves, and takes the variant's preset
    ans = ok_json(run_cli("ask", "-m", "medgemma-4b-it", "--max-new-tokens", "2", "--json", "Hi", env=env))
    assert ans["model"] == "medgemma-4b-it"


@pytest.mark.slow
def test_hf_cache_snapshot_is_found(tmp_path, tiny_model_dir):
    import shutil

    snap = tmp_path / "hf" / "hub" / "models--google--medgemma-1.5-4b-it" / "snapshots" / "abc123"
    shutil.copytree(tiny_model_dir, snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    env = {"MEDGEMMA_HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    ans = ok_json(run_cli("ask", "-m", "medgemma-1.5-4b-it", "--max-new-tokens", "2", "--json", "Hi", env=env))
    assert ans["preset"] == "medgemma-1.5@2"
    # with no --model, the best variant found locally is used instead of the demo model
    ans = ok_json(run_cli("ask", "--max-new-tokens", "2", "--json", "Hi", env=env))
    assert ans["model"] == "medgemma-1.5-4b-it" and not ans["demo_model"]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares huge dimensions but holds a few bytes of data (a decompression-bomb stand-in)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0]
    for p in PHI:
        assert p not in res.stderr + res.stdout


def _image(path, data: bytes) -> list[str]:
    path.write_bytes(data)
    return ["-i", str(path)]


def _half(path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def _dicom_without_pixels(tmp_path) -> list[str]:
    import pydicom

    write_dicom(tmp_path / "nopix.dcm", np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(tmp_path / "nopix.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    return ["-i", str(tmp_path / "nopix.dcm")]


# (extra `ask` arguments built in tmp_path from the module's images, words the one error line must hold)
ASK_ERRORS = [
    pytest.param(lambda t, im: ["-i", str(t / "missing.png")], ("not found",), id="missing-image"),
    pytest.param(lambda t, im: _image(t / "notes.txt", b"not an image"), ("not a readable image",), id="not-an-image"),
    pytest.param(
        lambda t, im: _image(t / "trunc.png", _half(im / "cxr.png")), ("corrupt or truncated",), id="truncated-png"
    ),
    pytest.param(lambda t, im: _image(t / "trunc.dcm", (im / "phi.dcm").read_bytes()[:400]), (), id="truncated-dicom"),
    pytest.param(lambda t, im: _dicom_without_pixels(t), ("no pixel data",), id="dicom-without-pixels"),
    # a decompression bomb: a tiny PNG declaring 30000 x 30000 pixels
    pytest.param(
        lambda t, im: _image(t / "bomb.png", png_header_only(30000, 30000)), ("pixel",), id="decompression-bomb"
    ),
    pytest.param(lambda t, im: ["--window", "wide"], ("--window",), id="unknown-window"),
    pytest.param(lambda t, im: ["--quantize", "4bit"], ("CUDA",), id="4bit-without-cuda"),
]


@pytest.mark.parametrize("setup, needles", ASK_ERRORS)
def test_ask_bad_input_is_one_line(setup, needles, tiny_model_dir, images, tmp_path, cli):
    _one_line_error(
        cli("ask", "-m", str(tiny_model_dir), "--max-new-tokens", "2", *setup(tmp_path, images), "Q"), *needles
    )


def test_model_errors_are_one_line(tiny_text_model_dir, images, tmp_path, cli):
    _one_line_error(cli("ask", "-m", str(tiny_text_model_dir), "-i", str(images / "cxr.png"), "Q"), "text-only")
    _one_line_error(cli("ask", "-m", "no-such-model", "Q"), "unknown model")
    # The real process: HF_HOME is read when huggingface_hub is imported.
    _one_line_error(
        run_cli("ask", "-m", "medgemma-27b-it", "Q", env={"HF_HOME": str(tmp_path / "empty")}),
        "medgemma-27b-it",
        "huggingface",
        "register",
    )
