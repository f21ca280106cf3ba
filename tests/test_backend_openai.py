"""`openai` backend against a live loopback upstream: our own `medgemma serve` on the tiny checkpoint.

The upstream is the real server; the flaky/slow behaviours (503s, a stall) come from a small real HTTP proxy put
between the backend and it, so retries and timeouts are exercised over real sockets.
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pydicom
import pytest
from conftest import run_cli
from PIL import Image

from medgemma_toolkit import MedGemma
from medgemma_toolkit.backends.openai_backend import UpstreamError
from medgemma_toolkit.errors import BackendUnavailable, CapabilityError
from medgemma_toolkit.serve.launch import ServerProcess, free_port

MODEL = "tiny-upstream"
QUESTION = "Describe this X-ray."


@pytest.fixture(scope="module")
def upstream(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("upstream") / "server.log"
    with ServerProcess(tiny_model_dir, log, "--served-model-name", MODEL, "--max-batch-size", "4") as srv:
        yield srv


@pytest.fixture(scope="module")
def remote(upstream) -> MedGemma:
    return MedGemma.load(None, upstream=upstream.url)


@pytest.fixture(scope="module")
def cxr_png(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "cxr.png"
    Image.effect_noise((48, 40), 60).convert("RGB").save(p)
    return p


@pytest.fixture(scope="module")
def ct_dicom(tmp_path_factory) -> Path:
    src = pydicom.data.get_testdata_file("CT_small.dcm")
    return Path(src)


class _Proxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the upstream; fails the first `fail_first` POSTs with 503, or stalls each by `delay_s`."""

    target = ""
    fail_first = 0
    delay_s = 0.0
    posts = 0
    lock = threading.Lock()

    def do_GET(self):
        self._forward(None)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            type(self).posts += 1
            n = type(self).posts
        if n <= self.fail_first:
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "overloaded", "type": "server_error"}}')
            return
        time.sleep(self.delay_s)
        self._forward(body)

    def _forward(self, body):
        req = urllib.request.Request(
            self.target + self.path, data=body, method=self.command, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                data, status, ctype = r.read(), r.status, r.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as e:
            data, status, ctype = e.read(), e.code, "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy(upstream):
    handler = type("Proxy", (_Proxy,), {"target": upstream.url, "posts": 0, "lock": threading.Lock()})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_text_matches_local_backend(remote, tiny_model):
    assert remote.backend.info.backend == "openai"
    assert remote.backend.info.image_size == tiny_model.backend.info.image_size  # read from the upstream's card
    got = remote.ask("Is there cardiomegaly?", max_new_tokens=12)
    want = tiny_model.ask("Is there cardiomegaly?", max_new_tokens=12)
    assert got.raw == want.raw
    assert got.completion_tokens == want.completion_tokens > 0


def test_image_and_dicom_sent_as_data_uris(remote, tiny_model, cxr_png, ct_dicom):
    for src in (cxr_png, ct_dicom):
        got = remote.ask(QUESTION, images=[str(src)], max_new_tokens=10)
        want = tiny_model.ask(QUESTION, images=[str(src)], max_new_tokens=10)
        assert got.raw == want.raw, src.name  # PNG is lossless: the upstream sees our exact pixels


def test_streaming_deltas_add_up(remote):
    req = remote.request(QUESTION, max_new_tokens=16)
    pieces, final = [], None
    for item in remote.backend.stream(req):
        if isinstance(item, str):
            pieces.append(item)
        else:
            final = item
    assert final is not None and len(pieces) >= 2
    assert "".join(pieces) == final.text


def test_batch_runs_concurrently_and_in_order(remote, tiny_model):
    questions = ["Is there cardiomegaly?", "Is there an effusion?", "Describe the lungs."]
    got = remote.ask_batch(questions, max_new_tokens=8)
    want = [tiny_model.ask(q, max_new_tokens=8) for q in questions]
    assert [a.raw for a in got] == [a.raw for a in want]


def test_retries_on_503(proxy, tiny_model, monkeypatch):
    handler, url = proxy
    handler.fail_first = 2
    monkeypatch.setenv("MEDGEMMA_UPSTREAM_RETRIES", "3")
    mg = MedGemma.load(MODEL, upstream=url)
    got = mg.ask("Is there an effusion?", max_new_tokens=8)
    assert handler.posts == 3  # two 503s, then the answer
    assert got.raw == tiny_model.ask("Is there an effusion?", max_new_tokens=8).raw


def test_503_beyond_retries_is_an_error(proxy, monkeypatch):
    handler, url = proxy
    handler.fail_first = 10
    monkeypatch.setenv("MEDGEMMA_UPSTREAM_RETRIES", "1")
    mg = MedGemma.load(MODEL, upstream=url)
    with pytest.raises(UpstreamError) as e:
        mg.ask("Is there an effusion?", max_new_tokens=4)
    assert "503" in str(e.value) and "overloaded" in str(e.value)
    assert handler.posts == 2


def test_timeout(proxy, monkeypatch):
    handler, url = proxy
    handler.delay_s = 5.0
    monkeypatch.setenv("MEDGEMMA_UPSTREAM_TIMEOUT", "0.5")
    monkeypatch.setenv("MEDGEMMA_UPSTREAM_RETRIES", "0")
    mg = MedGemma.load(MODEL, upstream=url)
    with pytest.raises(BackendUnavailable, match="timed out"):
        mg.ask("Is there an effusion?", max_new_tokens=4)


def test_completion_prompt_with_image_is_refused(remote, cxr_png):
    # A completion (base-model) prompt with an image cannot be expressed in the OpenAI API.
    from medgemma_toolkit.backends.base import GenerationRequest
    from medgemma_toolkit.core.messages import Prompt

    req = GenerationRequest(Prompt(text="<start_of_image> x", images=[Image.open(cxr_png)]))
    with pytest.raises(CapabilityError):
        remote.backend.generate([req])


def test_unreachable_upstream_is_one_line(tmp_path):
    port = free_port()  # nothing listens here
    r = run_cli("ask", "--upstream", f"http://127.0.0.1:{port}", "hello", env={"MEDGEMMA_UPSTREAM_RETRIES": "0"})
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unreachable" in r.stderr and "Traceback" not in r.stderr


def test_unknown_upstream_model_is_one_line(upstream):
    r = run_cli("ask", "--upstream", upstream.url, "--model", "no-such-model", "hello")
    assert r.returncode == 2 and "no model 'no-such-model'" in r.stderr and r.stderr.strip().count("\n") == 0


def test_cli_ask_through_upstream(upstream, tiny_model, cxr_png):
    r = run_cli("ask", "--upstream", upstream.url, "--image", str(cxr_png), QUESTION, "--max-new-tokens", "10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == tiny_model.ask(QUESTION, images=[str(cxr_png)], max_new_tokens=10).text


@pytest.mark.slow
def test_serve_in_front_of_upstream(upstream, tiny_model, tmp_path, ct_dicom):
    """`medgemma serve --backend openai --upstream URL` chained in front, driven by the official client."""
    import base64

    log = tmp_path / "front.log"
    with ServerProcess(MODEL, log, "--backend", "openai", "--upstream", upstream.url) as front:
        client = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Is there cardiomegaly?"}],
            max_tokens=12,
            temperature=0,
        )
        assert r.choices[0].message.content == tiny_model.ask("Is there cardiomegaly?", max_new_tokens=12).text
        dcm = "data:application/dicom;base64," + base64.b64encode(ct_dicom.read_bytes()).decode()
        r = client.chat.completions.create(
            model=MODEL,
            max_tokens=10,
            temperature=0,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": dcm}}],
                }
            ],
        )
        want = tiny_model.ask(QUESTION, images=[str(ct_dicom)], max_new_tokens=10).text
        assert r.choices[0].message.content == want
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe the lungs."}],
            max_tokens=12,
            temperature=0,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == tiny_model.ask("Describe the lungs.", max_new_tokens=12).text


@pytest.mark.slow
def test_eval_against_upstream_matches_local(upstream, tiny_model_dir, tmp_path):
    """`medgemma eval --upstream URL` scores the deployed model with the same protocol as a local run."""
    import json

    runs = {}
    for name, args in (("remote", ["--upstream", upstream.url]), ("local", ["--model", str(tiny_model_dir)])):
        out = tmp_path / name
        r = run_cli(
            "eval",
            *args,
            "--task",
            "medqa",
            "--limit",
            "3",
            "--max-new-tokens",
            "6",
            "--out",
            str(out),
            "--no-cache",
            "--bootstrap",
            "50",
        )
        assert r.returncode == 0, r.stderr
        runs[name] = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    assert [r["raw"] for r in runs["remote"]] == [r["raw"] for r in runs["local"]]
    assert len(runs["remote"]) == 3
