"""Hostile clients against the real `medgemma serve` on loopback, keyless (the default a local user runs).

Each test is one finding of the adversarial passes (issues 18 and 24): the attack is built at test time, sent to
127.0.0.1 only, bounded in count and time, and the test asserts the status, that `/health` still answers, and for
bombs the growth of the server's peak memory (`VmHWM`, reset before the attack through `/proc/PID/clear_refs`).
Issue 24's attacks run against a second server started with default settings (`default_server`), as reported.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.server
import io
import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from medgemma_toolkit.serve.launch import ServerProcess, free_port
from medgemma_toolkit.testing.hostile import deflate_bomb, j2k_dicom, j2k_frame, rle_series_zip
from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, write_series

MODEL = "tiny-medgemma"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MiB = 1024**2
MAX_PIXELS = 4_000_000  # per image
REQUEST_PIXELS = 10_000_000  # per request, all images together
BODY_TIMEOUT = 3.0  # seconds for a body, and for request headers


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """An image root with a small series, a series holding a link to a file outside the root, a 300-slice
    series, and a series whose one slice is corrupt; the outside file is in a sibling folder."""
    base = tmp_path_factory.mktemp("hostile_root")
    root, outside = base / "root", base / "outside"
    outside.mkdir()
    secret = write_series(outside, SeriesSpec(slices=1, rows=8, cols=8), names=["secret.dcm"])[0]
    write_series(root / "small", SeriesSpec(slices=3, rows=8, cols=8))
    write_series(root / "linky", SeriesSpec(slices=2, rows=8, cols=8))
    (root / "linky" / "zz_link.dcm").symlink_to(secret)
    write_series(root / "big", SeriesSpec(slices=300, rows=8, cols=8))
    names = ["a.dcm", "b.dcm", "Doe_Jane_slice.dcm"]
    paths = write_series(root / "broken", SeriesSpec(slices=3, rows=8, cols=8), names=names)
    paths[2].write_bytes(paths[2].read_bytes()[:300])
    return root


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory, image_root):
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with ServerProcess(
        tiny_model_dir,
        log,
        "--served-model-name",
        MODEL,
        "--max-batch-size",
        "8",
        "--batch-window-ms",
        "200",
        "--max-pixels",
        str(MAX_PIXELS),
        "--max-request-pixels",
        str(REQUEST_PIXELS),
        "--image-root",
        str(image_root),
        "--body-timeout",
        str(BODY_TIMEOUT),
        "--header-timeout",
        str(BODY_TIMEOUT),
        env=ONE_THREAD,
    ) as srv:
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


def chat(server, content, max_tokens: int = 2, timeout: float = 120, **kw) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=timeout, **kw)


def dicom_part(data: bytes) -> dict:
    return {
        "type": "image_url",
        "image_url": {"url": "data:application/dicom;base64," + base64.b64encode(data).decode()},
    }


# -- loopback means loopback ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
        ("GET", "/"),
        ("GET", "/health"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/medgemma/preview"),
    ],
)
def test_dns_rebinding_foreign_host_header_is_refused(server, method, path):
    r = httpx.request(method, server.url + path, headers={"Host": "evil.example"}, json={}, timeout=30)
    assert r.status_code == 403, (path, r.status_code)
    assert r.json()["error"]["code"] == "host_not_allowed"


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "LOCALHOST"])
def test_loopback_host_names_are_served(server, host):
    r = httpx.get(server.url + "/v1/models", headers={"Host": host.format(port=server.port)}, timeout=30)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL


@pytest.mark.parametrize(
    "ctype,content",
    [
        ("text/plain", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})),
        ("application/x-www-form-urlencoded", "model=tiny-medgemma&messages=hi"),
        ("multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=a\r\n\r\nb\r\n--x--\r\n"),
        (None, json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})),
    ],
)
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


def test_codestream_declaring_more_than_the_header_is_refused_before_decoding(server):
    # Rows=Columns=64, but the JPEG 2000 SIZ segment claims 20000x20000 (a 1.6 GB buffer to a trusting decoder).
    peak_reset(server)
    before = peak_bytes(server)
    r = chat(server, [dicom_part(j2k_dicom(64, 64, declared=(20000, 20000)))])
    growth = peak_bytes(server) - before
    assert r.status_code == 413, r.text[:300]
    assert "codestream declares 20000x20000" in r.json()["error"]["message"]
    assert growth < 100 * MiB, f"peak memory grew by {growth / MiB:.0f} MiB"
    # Under the limit but disagreeing with Rows/Columns: refused too (the decoder would trust the codestream).
    r = chat(server, [dicom_part(j2k_dicom(64, 64, declared=(128, 128)))])
    assert r.status_code == 400 and "DICOM header says 64x64" in r.json()["error"]["message"]
    assert chat(server, [dicom_part(j2k_dicom(64, 64))]).status_code == 200  # an honest one decodes
    assert healthy(server)


def test_a_corrupt_codestream_is_one_400_and_no_decoder_traceback_in_the_log(server):
    frame = j2k_frame(64, 64)
    r = chat(server, [dicom_part(j2k_dicom(64, 64, frame=frame[:40] + bytes(30)))])  # header kept, data cut
    assert r.status_code == 400 and "cannot decode DICOM pixel data" in r.json()["error"]["message"]
    time.sleep(0.3)
    assert "Traceback" not in server.log_text() and "ERROR pydicom" not in server.log_text()


def test_many_large_images_overdraw_the_request_budget_before_decoding_the_last(server):
    big = j2k_dicom(1800, 1800)  # 3.24 Mpx each, under the per-image limit; 750 bytes on the wire
    r = chat(server, [dicom_part(big)] * 4)  # 12.96 Mpx together, over the 10 Mpx request budget
    assert r.status_code == 413, r.text[:300]
    msg = r.json()["error"]["message"]
    assert msg.startswith("image 4") and "add up to over 10,000,000 pixels" in msg
    assert chat(server, [dicom_part(big)] * 3).status_code == 200  # within budget
    assert healthy(server)


def test_concurrent_previews_are_admitted_and_decoded_a_few_at_a_time(server):
    """Six heavy previews at once: all admitted (or refused busy), never more than `max_decoders` decoding at the
    same time (read from /health while they run), and /health answers throughout."""
    big = "data:application/dicom;base64," + base64.b64encode(j2k_dicom(1800, 1800)).decode()

    def preview(_):
        return httpx.post(server.url + "/v1/medgemma/preview", json={"image_url": {"url": big}}, timeout=120)

    seen: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(preview, i) for i in range(6)]
        while not all(f.done() for f in futures):
            h = httpx.get(server.url + "/health", timeout=10)
            assert h.status_code == 200  # answered while the previews decode
            seen.append(h.json()["decoding"])
            limit = h.json()["max_decoders"]
        statuses = [f.result().status_code for f in futures]
    assert set(statuses) <= {200, 429} and 200 in statuses, statuses
    assert 1 <= max(seen) <= limit < 6, (max(seen), limit)


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


# -- slow and hostile clients -----------------------------------------------------------------------------------------
def _slow_sender(server, declared: int = 100_000) -> socket.socket:
    """A connection that sent its headers and the first bytes of a body it promised to be `declared` long."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: %d\r\n\r\n{"model"' % declared
    )
    return s


def _metric(server, name: str) -> float:
    t = httpx.get(server.url + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)} (\S+)$", t, re.M)
    return float(m.group(1)) if m else 0.0


def test_slow_bodies_hold_no_admission_slot_and_time_out_with_408(server):
    slow = [_slow_sender(server) for _ in range(80)]  # more than the 72 admission slots (batch 8 + queue 64)
    try:
        time.sleep(0.5)
        assert chat(server, "hi").status_code == 200  # not 429: the trickling bodies wait outside admission
        assert healthy(server)
        slow[0].settimeout(30)
        answer = slow[0].recv(4096)  # the body never completes: 408 once the body timeout passes
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    finally:
        for s in slow:
            s.close()


def test_slow_headers_are_cut_off(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0")  # and never the rest
        assert s.recv(4096) == b""  # closed by the server once the header timeout passes
    finally:
        s.close()


def test_disconnect_mid_body_is_counted_as_499_not_500(server):
    name = 'medgemma_requests_total{path="/v1/chat/completions",status="%s"}'
    before_499, before_500 = _metric(server, name % 499), _metric(server, name % 500)
    _slow_sender(server).close()
    for _ in range(100):
        if _metric(server, name % 499) > before_499:
            break
        time.sleep(0.1)
    assert _metric(server, name % 499) == before_499 + 1
    assert _metric(server, name % 500) == before_500
    assert "unhandled" not in server.log_text()


def test_a_body_of_many_tiny_parts_is_refused_before_validation(server):
    parts = [{"type": "text", "text": ""}] * 200_000  # ~5 MB of JSON
    body = {"model": MODEL, "messages": [{"role": "user", "content": parts}]}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        f = pool.submit(httpx.post, server.url + "/v1/chat/completions", json=body, timeout=120)
        assert healthy(server)
        r = f.result()
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_parts"


def test_a_bearer_key_with_extra_spaces_is_not_the_key(tiny_model):
    import asyncio

    from medgemma_toolkit.serve import ServeConfig, create_app

    key = "k-0123456789"
    app = create_app(tiny_model, ServeConfig(api_key=key))

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x.example") as c:
            return [
                (await c.get("/v1/models", headers={"Authorization": f"Bearer {k}"})).status_code
                for k in (key, key + " ", " " + key, key + "\t")
            ]

    try:
        assert asyncio.run(main()) == [200, 401, 401, 401]  # a keyed server answers any Host header
    finally:
        app.state.batcher.stop()


# -- paths under --image-root --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path,needle",
    [
        ("small\u0000x", "not a usable file path"),
        ("a" * 5000, "not a usable file path"),
        ("linky", "link that leads outside"),
        ("big", "too many images"),
    ],
)
def test_hostile_local_paths_are_4xx(server, path, needle):
    r = chat(server, [{"type": "image_url", "image_url": {"url": path}}])
    assert r.status_code == 400, r.text[:300]
    assert needle in r.json()["error"]["message"]
    assert healthy(server)


def test_errors_name_only_the_path_the_client_gave(server):
    r = chat(server, [{"type": "image_url", "image_url": {"url": "broken"}}])
    assert r.status_code == 400, r.text[:300]
    msg = r.json()["error"]["message"]
    assert "Doe_Jane" not in msg and "slice" not in msg and "broken" in msg, msg
    assert chat(server, [{"type": "image_url", "image_url": {"url": "small"}}]).status_code == 200


# -- issue 24: every endpoint through one gate, on a server with default settings ---------------------------------------
class _Padding(http.server.BaseHTTPRequestHandler):
    """An allow-listed "PACS" whose every answer is a chunked reply with no Content-Length and 700 MB of padding;
    paths under /slow/ trickle it (64 KiB every 50 ms). `sent[path]` is what it managed to send."""

    protocol_version = "HTTP/1.1"
    sent: dict[str, int] = {}
    closed: set[str] = set()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=x')
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk, total = bytes(64 * 1024), 0
        try:
            while total < 700 * MiB:
                self.wfile.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                total += len(chunk)
                type(self).sent[self.path] = total
                if self.path.startswith("/slow/"):
                    time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            type(self).closed.add(self.path)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def pacs():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Padding)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture(scope="module")
def default_server(tiny_model_dir, tmp_path_factory, pacs):
    """`medgemma serve` with default limits, a tiny MedSigLIP, and the padding PACS allow-listed."""
    from medgemma_toolkit.testing.tiny_siglip import build_tiny_siglip

    siglip = build_tiny_siglip(tmp_path_factory.mktemp("hsig") / "tiny-siglip")
    log = tmp_path_factory.mktemp("hostile24") / "server.log"
    with ServerProcess(
        tiny_model_dir,
        log,
        "--served-model-name",
        MODEL,
        "--embed-model",
        str(siglip),
        "--allow-image-host",
        f"127.0.0.1:{pacs}",
        env=ONE_THREAD,
    ) as srv:
        yield srv


def post(server, path: str, body: dict, timeout: float = 120) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=timeout)


def attack(server, fn):
    """(fn's result, the growth of the server's peak memory while it ran)."""
    peak_reset(server)
    before = peak_bytes(server)
    out = fn()
    return out, peak_bytes(server) - before


def test_zip_series_of_huge_rle_slices_is_413_before_decoding(default_server):
    # 8 RLE slices of 8000x8000 (a 16 MB body): 512 M voxels, twice the default 256 M pixels a request may decode.
    url = "data:application/zip;base64," + base64.b64encode(rle_series_zip(8, 8000, 8000)).decode()
    r, growth = attack(
        default_server, lambda: post(default_server, "/v1/medgemma/model-input", {"image_url": {"url": url}})
    )
    assert r.status_code == 413, r.text[:300]
    assert "over this request's limit of 256,000,000 pixels" in r.json()["error"]["message"]
    assert growth < 300 * MiB, f"peak memory grew by {growth / MiB:.0f} MiB"
    assert healthy(default_server)


def test_zip_series_voxels_are_charged_to_the_request_budget(server):
    # The small-scale twin on the 10 Mpx server: 8 slices of 1200x1200 (11.5 M voxels), each under the 4 Mpx limit.
    url = "data:application/zip;base64," + base64.b64encode(rle_series_zip(8, 1200, 1200)).decode()
    r = httpx.post(server.url + "/v1/medgemma/model-input", json={"image_url": {"url": url}}, timeout=120)
    assert r.status_code == 413 and "10,000,000 pixels" in r.json()["error"]["message"], r.text[:300]
    small = "data:application/zip;base64," + base64.b64encode(rle_series_zip(4, 64, 64)).decode()
    r = httpx.post(server.url + "/v1/medgemma/model-input", json={"image_url": {"url": small}}, timeout=120)
    assert r.status_code == 200 and len(r.json()["images"]) == 4


def test_zero_shot_template_expansion_is_400_naming_the_limit(default_server):
    body = {"images": [png_uri(8, 8)], "labels": ["a" * 100, "b" * 100], "template": "{}" * 50_000}
    r, growth = attack(default_server, lambda: post(default_server, "/v1/medgemma/zero-shot", body))
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert err["param"] == "template" and "at most 2,000" in err["message"]
    body["template"] = "{} {}" * 300  # under the template limit, over the expanded size with 1000 labels
    body["labels"] = [f"label {i} " + "x" * 400 for i in range(1000)]
    r = post(default_server, "/v1/medgemma/zero-shot", body)
    assert r.status_code == 400 and "expand to" in r.json()["error"]["message"], r.text[:300]
    assert (
        post(default_server, "/v1/medgemma/zero-shot", {"images": [png_uri(8, 8)], "labels": ["x" * 501]}).json()[
            "error"
        ]["param"]
        == "labels"
    )
    assert growth < 100 * MiB
    assert healthy(default_server)


def png_uri(w: int, h: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_embeddings_of_sixteen_large_images_stay_bounded(default_server):
    # 16 black 4000x4000 PNGs (~1 MB body) were +1.8 GB: each is now MedSigLIP-sized right after decoding.
    items = [{"type": "image_url", "image_url": {"url": png_uri(4000, 4000)}}] * 16
    r, growth = attack(
        default_server,
        lambda: post(default_server, "/v1/embeddings", {"model": "tiny-siglip", "input": items}, timeout=300),
    )
    assert r.status_code == 200, r.text[:300]  # 256 M pixels: exactly the default budget, answered like chat would
    assert len(r.json()["data"]) == 16
    assert growth < 300 * MiB, f"peak memory grew by {growth / MiB:.0f} MiB"
    items.append(items[0])  # one more is over the image count and the pixel budget
    assert post(default_server, "/v1/embeddings", {"model": "tiny-siglip", "input": items}).status_code in (400, 413)
    assert healthy(default_server)


def test_embedding_bodies_hold_the_shared_reader_slots(default_server):
    def slow() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", default_server.port), timeout=30)
        s.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 33000000\r\n\r\n{"model"'
        )
        return s

    socks = [slow() for _ in range(256)]  # the default --max-body-readers
    try:
        time.sleep(1.0)
        r = post(default_server, "/v1/embeddings", {"model": "tiny-siglip", "input": "edema"})
        assert r.status_code == 429, r.text[:300]
        assert healthy(default_server)
    finally:
        for s in socks:
            s.close()
    time.sleep(0.5)
    assert post(default_server, "/v1/embeddings", {"model": "tiny-siglip", "input": "edema"}).status_code == 200


def test_dicomweb_chunked_reply_stops_at_the_byte_cap(default_server, pacs):
    url = f"dicomweb+http://127.0.0.1:{pacs}/fast/dicom-web/studies/1.2.3/series/4.5.6/instances/7.8.9"
    content = [{"type": "text", "text": "Findings?"}, {"type": "image_url", "image_url": {"url": url}}]
    t0 = time.monotonic()
    r, growth = attack(default_server, lambda: chat(default_server, content))
    assert r.status_code == 413, r.text[:300]
    assert "over the limit of 33,554,432 bytes" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 60
    assert growth < 300 * MiB, f"peak memory grew by {growth / MiB:.0f} MiB"
    assert _Padding.sent["/fast/dicom-web/studies/1.2.3/series/4.5.6/instances/7.8.9"] < 200 * MiB
    assert healthy(default_server)


def test_dicomweb_fetch_stops_when_the_client_leaves(default_server, pacs):
    path = "/slow/dicom-web/studies/1.2.3/series/4.5.6/instances/7.8.9"
    content = [{"type": "image_url", "image_url": {"url": f"dicomweb+http://127.0.0.1:{pacs}{path}"}}]
    with pytest.raises(httpx.TimeoutException):
        chat(default_server, content, timeout=2.0)  # the client gives up after 2 s (the reply would take ~25 s)
    deadline = time.monotonic() + 15
    while path not in _Padding.closed and time.monotonic() < deadline:
        time.sleep(0.2)
    assert path in _Padding.closed, "the server kept reading for a client that had left"
    assert _Padding.sent[path] < 16 * MiB
    assert healthy(default_server)


def test_deep_json_in_tool_call_arguments_is_400(server):
    deep = "[" * 200_000
    msgs = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    tools = [{"type": "function", "function": {"name": "f"}}]
    r = httpx.post(
        server.url + "/v1/chat/completions",
        timeout=60,
        json={"model": MODEL, "max_tokens": 2, "messages": msgs, "tools": tools},
    )
    assert r.status_code == 400 and "nested more than 64 levels" in r.json()["error"]["message"], r.text[:300]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "x": json.loads("[" * 65 + "]" * 65)}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert healthy(server)


def test_a_prompt_longer_than_the_context_is_refused_before_tokenizing(server):
    t0 = time.monotonic()
    r = chat(server, "lung " * 2_000_000)  # 10 M characters: no 4,096-token context can hold them
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "10,000,000 characters" in err["message"]
    assert time.monotonic() - t0 < 30
    assert healthy(server)


# -- the gate is the only way in --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tiny_model):
    from medgemma_toolkit.serve import ServeConfig, create_app

    a = create_app(tiny_model, ServeConfig())
    yield a
    a.state.batcher.stop()


def post_routes(app) -> list[str]:
    from medgemma_toolkit.serve.routes import leaf_routes

    return [r.path for r in leaf_routes(list(app.routes)) if "POST" in (getattr(r, "methods", None) or ())]


def test_every_post_route_is_behind_the_gate(app):
    from fastapi import APIRouter

    from medgemma_toolkit.serve.routes import GATE_MARK, check_gated, leaf_routes, ungated_routes

    paths = post_routes(app)
    assert {
        "/v1/chat/completions",
        "/v1/medgemma/localize",
        "/v1/medgemma/model-input",
        "/v1/embeddings",
        "/v1/medgemma/zero-shot",
        "/v1/medgemma/preview",
    } <= set(paths)
    # JSON only, except where a route declares another media type on purpose (an upload form, OpenAI's shape).
    declared = {"/v1/audio/transcriptions": "multipart/form-data"}
    for r in leaf_routes(list(app.routes)):
        if set(getattr(r, "methods", None) or ()) & {"POST", "PUT", "PATCH", "DELETE"}:
            assert getattr(r.endpoint, GATE_MARK).media_type == declared.get(r.path, "application/json"), r.path
    assert ungated_routes(app) == []
    # A route added the plain FastAPI way is found, and a server holding one does not start.
    router = APIRouter()

    @router.post("/v1/sneaky")
    async def sneaky() -> dict:
        return {}

    app.include_router(router)
    try:
        assert ungated_routes(app) == ["POST /v1/sneaky"]
        with pytest.raises(RuntimeError, match="outside the request gate"):
            check_gated(app)
    finally:
        app.router.routes.pop()


def test_a_gated_route_may_answer_the_gates_refusals_in_its_own_shape(app):
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel

    from medgemma_toolkit.serve.routes import gated_post, ungated_routes

    class Body(BaseModel):
        x: int

    router = APIRouter()

    @gated_post(
        router, "/v1/own-shape", Body, on_error=lambda e: JSONResponse({"error": e.message}, status_code=e.status)
    )
    async def own(request, body, state) -> dict:
        return {"x": body.x, "admitted": state.gate.admission.active}

    app.include_router(router)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            plain = await c.post("/v1/own-shape", content=b'{"x": 1}', headers={"Content-Type": "text/plain"})
            ok = await c.post("/v1/own-shape", json={"x": 1})
            return plain, ok

    try:
        assert ungated_routes(app) == []
        plain, ok = asyncio.run(main())
    finally:
        app.router.routes.pop()
    assert plain.status_code == 415 and set(plain.json()) == {"error"}
    assert ok.status_code == 200 and ok.json() == {"x": 1, "admitted": 1}
    assert app.state.server.gate.admission.active == 0  # the ticket was released


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_every_post_route_takes_json_only(app, ctype):
    body = json.dumps(
        {"model": MODEL, "image": "x", "objects": ["heart"] * 16, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            return {
                p: (await c.post(p, content=body, headers={"Content-Type": ctype} if ctype else {})).status_code
                for p in post_routes(app)
            }

    statuses = asyncio.run(main())
    assert set(statuses.values()) == {415}, statuses
