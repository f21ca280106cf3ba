"""DICOMweb never follows a redirect and never sends its credentials to another host (issue 18, finding 3).

Two tiny loopback HTTP servers: an allow-listed "PACS" that answers every request with 302 to a second server,
which records what reaches it. Driven through the imaging layer (what the CLI, eval and training use) and through
the server's app, with bearer and basic credentials.
"""

from __future__ import annotations

import asyncio
import http.server
import threading

import httpx
import pytest

from medgemma_toolkit.imaging import ImageOptions, load_parts
from medgemma_toolkit.imaging.dicomweb import DicomWebError
from medgemma_toolkit.serve.launch import free_port

SECRET_TOKEN = "tok-very-secret-42"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict] = []
    redirect_to: str | None = None

    def do_GET(self):
        type(self).seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
        if self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(handler: type) -> tuple[http.server.ThreadingHTTPServer, int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


@pytest.fixture
def pacs_and_elsewhere():
    """(pacs port, what reached the elsewhere server, what reached the pacs)."""
    elsewhere_h = type("Elsewhere", (_Recorder,), {"seen": [], "redirect_to": None})
    other, other_port = _serve(elsewhere_h)
    pacs_h = type("Pacs", (_Recorder,), {"seen": [], "redirect_to": f"http://127.0.0.1:{other_port}"})
    pacs, pacs_port = _serve(pacs_h)
    yield pacs_port, elsewhere_h.seen, pacs_h.seen
    pacs.shutdown()
    other.shutdown()


@pytest.mark.parametrize(
    "creds",
    [
        {"MEDGEMMA_DICOMWEB_TOKEN": SECRET_TOKEN},
        {"MEDGEMMA_DICOMWEB_USER": "alice", "MEDGEMMA_DICOMWEB_PASSWORD": "pw-secret"},
    ],
)
def test_imaging_layer_refuses_a_redirect_and_keeps_credentials_home(pacs_and_elsewhere, monkeypatch, creds):
    port, elsewhere, pacs = pacs_and_elsewhere
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(DicomWebError) as info:
        load_parts(f"dicomweb+http://127.0.0.1:{port}/dicom-web/studies/1.2.3/series/4.5.6", ImageOptions(), 32)
    msg = str(info.value)
    assert "redirect" in msg and "HTTP 302" in msg and "1.2.3" not in msg
    assert pacs and all(r["authorization"] for r in pacs)  # the allow-listed host did get the credentials
    assert elsewhere == []  # nothing, credentials or not, reached the redirect's target


def test_server_answers_a_dicomweb_redirect_with_an_error_and_fetches_nothing_elsewhere(
    pacs_and_elsewhere, monkeypatch, tiny_model
):
    from medgemma_toolkit.serve import ServeConfig, create_app

    port, elsewhere, _ = pacs_and_elsewhere
    monkeypatch.setenv("MEDGEMMA_DICOMWEB_TOKEN", SECRET_TOKEN)
    app = create_app(tiny_model, ServeConfig(allow_image_hosts=(f"127.0.0.1:{port}",)))
    url = f"dicomweb+http://127.0.0.1:{port}/dicom-web/studies/1.2.3/series/4.5.6"

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            return await c.post(
                "/v1/chat/completions",
                timeout=60,
                json={
                    "model": app.state.model_id,
                    "max_tokens": 2,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "Findings?"},
                                {"type": "image_url", "image_url": {"url": url}},
                            ],
                        }
                    ],
                },
            )

    try:
        r = asyncio.run(main())
    finally:
        app.state.batcher.stop()
    assert r.status_code == 502, r.text[:300]
    assert "redirect" in r.json()["error"]["message"] and SECRET_TOKEN not in r.text
    assert elsewhere == []
