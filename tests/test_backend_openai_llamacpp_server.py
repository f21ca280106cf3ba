"""`openai` backend against a third-party upstream: llama-cpp-python's own OpenAI-compatible server on loopback,
serving a GGUF exported from the tiny checkpoint (so nothing of ours runs on the server side)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python's server extra")

from conftest import exported

from medgemma_toolkit import MedGemma
from medgemma_toolkit.serve.launch import free_port


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory, tiny_model_dir):
    gguf = exported(tmp_path_factory, tiny_model_dir, "tiny") / "tiny-f32.gguf"
    port = free_port()
    log = open(tmp_path_factory.mktemp("lcs") / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "2",
            "--model_alias",
            "tiny-gguf",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, "llama_cpp.server exited"
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.mark.slow
def test_text_answer_and_stream_from_llama_cpp_server(llama_server):
    mg = MedGemma.load(None, upstream=llama_server)  # --model omitted: the server's only model
    assert mg.backend.info.name == "tiny-gguf" and mg.preset.name == "medgemma-v1"
    a = mg.ask("Is there cardiomegaly?", max_new_tokens=8)
    assert a.finish_reason == "length" and a.completion_tokens == 8 and a.text
    pieces, final = [], None
    for item in mg.backend.stream(mg.request("Is there a pleural effusion?", max_new_tokens=6)):
        if isinstance(item, str):
            pieces.append(item)
        else:
            final = item
    assert final is not None and "".join(pieces) == final.text and final.completion_tokens == 6
