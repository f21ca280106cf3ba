"""`POST /v1/audio/transcriptions` on the real `medgemma serve` app (started with a MedASR model), driven by the
official `openai` client in the three formats; bad uploads get 4xx through the same gate as every other route."""

import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import soundfile as sf

MAX_BODY = 2 * 1024**2


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    import uvicorn

    from medgemma_toolkit.asr.transcribe import Transcriber
    from medgemma_toolkit.serve import ServeConfig, create_app
    from medgemma_toolkit.serve.launch import free_port
    from medgemma_toolkit.testing.tiny_asr import build_tiny_asr

    d = build_tiny_asr(tmp_path_factory.mktemp("asr") / "tiny-medasr")
    t = Transcriber.load(str(d), device="cpu")
    app = create_app(tiny_model, ServeConfig(max_body_bytes=MAX_BODY))
    app.state.transcriber = t
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert th.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", t
    srv.should_exit = True
    th.join(timeout=10)


def test_without_a_speech_model_the_route_is_404(tiny_model):
    from fastapi.testclient import TestClient

    from medgemma_toolkit.serve import ServeConfig, create_app

    with TestClient(create_app(tiny_model, ServeConfig()), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF", "audio/wav")}, data={"model": "x"})
    assert r.status_code == 404 and "--asr-model" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: apt-get install -y espeak-ng (scripts/test.sh does)")
    p = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(p), "No acute cardiopulmonary abnormality."], check=True)
    return p


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_official_client_json_text_and_verbose(server, speech):
    url, transcriber = server
    want = transcriber.transcribe([speech])[0]
    c = _client(url)
    with speech.open("rb") as f:
        r = c.audio.transcriptions.create(model="medasr", file=f)
    assert r.text == want.text and r.text
    with speech.open("rb") as f:
        txt = c.audio.transcriptions.create(model="medasr", file=f, response_format="text")
    assert str(txt).strip() == want.text
    with speech.open("rb") as f:
        v = c.audio.transcriptions.create(
            model="medasr", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert v.text == want.text and v.language == "english"
    assert abs(v.duration - sf.info(str(speech)).duration) < 0.01
    assert [w.word for w in v.words] == [w.text for w in want.words]
    assert " ".join(s.text for s in v.segments) == want.text


@pytest.mark.parametrize(
    "files,data,status,needle",
    [
        ({"file": ("x.wav", b"definitely not audio" * 50, "audio/wav")}, {"model": "medasr"}, 400, "not a readable"),
        ({"file": ("x.wav", b"", "audio/wav")}, {"model": "medasr"}, 400, "empty"),
        ({"file": ("x.wav", b"0" * (MAX_BODY + 10), "audio/wav")}, {"model": "medasr"}, 413, "at most"),
        (None, {"model": "medasr"}, 415, "multipart"),  # a urlencoded form: the gate refuses the media type
        ({"file": ("x.wav", b"RIFF", "audio/wav")}, {"response_format": "srt"}, 400, "response_format"),
        ({"file": ("x.wav", b"RIFF", "audio/wav")}, {"language": "fr"}, 400, "English only"),
    ],
)
def test_bad_uploads_are_4xx(server, files, data, status, needle):
    url, _ = server
    r = httpx.post(url + "/v1/audio/transcriptions", files=files, data=data, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_truncated_upload_is_400(server, speech):
    url, _ = server
    cut = speech.read_bytes()[:3000]
    r = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("s.wav", cut, "audio/wav")}, timeout=30)
    assert r.status_code == 400 and "at least 0.25 s" in r.json()["error"]["message"]


def test_a_body_cut_mid_part_is_400(server, speech):
    url, _ = server
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + speech.read_bytes()[:9000]
    )
    r = httpx.post(
        url + "/v1/audio/transcriptions",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=XyZ"},
        timeout=30,
    )
    assert r.status_code == 400


def test_no_transcript_text_reaches_the_server_logs(server, speech, caplog):
    """The transcript is PHI: every log record the server writes while transcribing (access log, errors, our own
    loggers at DEBUG) is free of it."""
    import logging

    url, transcriber = server
    want = transcriber.transcribe([speech])[0].text
    assert want
    with caplog.at_level(logging.DEBUG):
        with speech.open("rb") as f:
            r = _client(url).audio.transcriptions.create(model="medasr", file=f)
        assert r.text == want
        bad = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("x.wav", b"nope" * 100, "audio/wav")})
        assert bad.status_code == 400
    ours = [rec for rec in caplog.records if rec.name.startswith(("medgemma_toolkit", "uvicorn"))]
    # The server's access lines were captured (so the check below looks at what the server really logged)...
    assert any("path=/v1/audio/transcriptions status=200" in rec.getMessage() for rec in ours)
    assert any("path=/v1/audio/transcriptions status=400" in rec.getMessage() for rec in ours)
    # ...and none of them holds a word of the transcript.
    logged = "\n".join(rec.getMessage() for rec in ours)
    for word in {w for w in want.split() if len(w) > 3}:
        assert word not in logged, word
