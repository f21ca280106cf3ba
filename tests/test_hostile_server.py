"""Hostile clients against the real `medgemma serve` on loopback, keyless (the default a local user runs).

Each test is one finding of the adversarial pass (issue 18): the attack is built at test time, sent to 127.0.0.1
only, bounded in count and time, and the test asserts the status, that `/health` still answers, and for bombs the
growth of the server's peak memory (`VmHWM`, reset before the attack through `/proc/PID/clear_refs`).
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
from pathlib import Path

import httpx
import pytest

from medgemma_toolkit.serve.launch import ServerProcess
from medgemma_toolkit.testing.hostile import deflate_bomb

MODEL = "tiny-medgemma"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MiB = 1024**2


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with ServerProcess(tiny_model_dir, log, "--served-model-name", MODEL, "--max-batch-size", "8",
                       "--batch-window-ms", "200", env=ONE_THREAD) as srv:
        yield srv


def peak_reset(server) -> None:
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # VmHWM := current RSS


def peak_bytes(server) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def healthy(server) -> bool:
    return httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"


def chat(server, content, max_tokens: int = 2, **kw) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120, **kw)


def dicom_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:application/dicom;base64," + base64.b64encode(data).decode()}}


# -- loopback means loopback ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/"),
                                         ("GET", "/health"), ("POST", "/v1/chat/completions"),
                                         ("POST", "/v1/medgemma/preview")])
def test_dns_rebinding_foreign_host_header_is_refused(server, method, path):
    r = httpx.request(method, server.url + path, headers={"Host": "evil.example"}, json={}, timeout=30)
    assert r.status_code == 403, (path, r.status_code)
    assert r.json()["error"]["code"] == "host_not_allowed"


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "LOCALHOST"])
def test_loopback_host_names_are_served(server, host):
    r = httpx.get(server.url + "/v1/models", headers={"Host": host.format(port=server.port)}, timeout=30)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL


@pytest.mark.parametrize("ctype,content", [
    ("text/plain", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})),
    ("application/x-www-form-urlencoded", "model=tiny-medgemma&messages=hi"),
    ("multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=a\r\n\r\nb\r\n--x--\r\n"),
    (None, json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})),
])
def test_cross_site_content_types_are_415(server, ctype, content):
    headers = {"Content-Type": ctype} if ctype else {}
    for path in ("/v1/chat/completions", "/v1/medgemma/preview"):
        r = httpx.post(server.url + path, content=content.encode(), headers=headers, timeout=30)
        assert r.status_code == 415, (path, ctype, r.status_code)
        assert r.json()["error"]["code"] == "unsupported_media_type"
    assert chat(server, "hi").status_code == 200  # application/json still works


@pytest.mark.parametrize("path", ["/", "/static/index.html"])
def test_every_html_response_carries_the_csp(server, path):
    r = httpx.get(server.url + path, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


# -- bombs ---------------------------------------------------------------------------------------------------------
def test_deflate_bomb_is_refused_without_inflating(server):
    bomb = deflate_bomb(512)  # 16x16 image header, 512 MiB of zeros behind it: ~0.5 MB on the wire
    assert len(bomb) < MiB
    peak_reset(server)
    before = peak_bytes(server)
    r = chat(server, [{"type": "text", "text": "Findings?"}, dicom_part(bomb)])
    growth = peak_bytes(server) - before
    assert 400 <= r.status_code < 500, r.text[:300]
    assert "decompression bomb" in r.json()["error"]["message"]
    assert growth < 200 * MiB, f"peak memory grew by {growth / MiB:.0f} MiB"
    assert healthy(server)


# -- batches fail row by row -----------------------------------------------------------------------------------------
def test_over_context_prompt_is_400_and_its_five_batch_mates_get_200(server):
    long_text = " ".join(f"finding{i % 97} lobe{i % 13}" for i in range(6000))  # far beyond the 4,096 context
    questions = ["Is the heart enlarged?", "Any effusion?", "Describe the lungs.", "Normal?", "Fracture?"]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        long_f = pool.submit(chat, server, long_text)
        normal = [pool.submit(chat, server, q, 3) for q in questions]
        long_r, rs = long_f.result(), [f.result() for f in normal]
    assert long_r.status_code == 400, long_r.text[:300]
    err = long_r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "4,096" in err["message"]
    assert [r.status_code for r in rs] == [200] * 5
    assert all(r.json()["choices"][0]["message"]["content"] is not None for r in rs)
    assert healthy(server)
