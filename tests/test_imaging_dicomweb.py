"""DICOMweb against a real Orthanc server started here on loopback (temporary config and storage)."""

from __future__ import annotations

import json
import logging
import socket

import numpy as np
import pytest
import requests
from conftest import CT_SERIES, PASSWORD, SMALL_SERIES, STUDY, USER, free_port, uri

from medgemma_toolkit.core.messages import ImagePart, TextPart
from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.imaging import ImageOptions, load_parts
from medgemma_toolkit.imaging.dicomweb import DicomWebError, DicomWebRef, _session, parse_dicomweb_uri
from medgemma_toolkit.testing.synthetic_dicom import FAKE_PHI


def test_parse_uris():
    r = parse_dicomweb_uri("dicomweb://pacs.example.org/dicom-web/studies/1.2/series/3.4")
    assert r == DicomWebRef("https://pacs.example.org/dicom-web", "pacs.example.org", "1.2", "3.4", None)
    r = parse_dicomweb_uri("dicomweb+http://127.0.0.1:8042/dicom-web/studies/1.2/series/3.4/instances/5.6")
    assert r.root == "http://127.0.0.1:8042/dicom-web" and r.instance == "5.6"
    r = parse_dicomweb_uri("https://h/wado/rs/studies/9/")
    assert r.root == "https://h/wado/rs" and r.study == "9" and r.series is None
    assert parse_dicomweb_uri("/data/ct/") is None and parse_dicomweb_uri("https://example.org/x.png") is None
    for bad in (
        "dicomweb://h/dicom-web/studies/1/series",
        "dicomweb://h/dicom-web/patients/1",
        "dicomweb://u:p@h/dicom-web/studies/1",
        "dicomweb://h/dicom-web/studies/1?x=1",
    ):
        with pytest.raises(BadInput):
            parse_dicomweb_uri(bad)


def test_bearer_token_from_environment_goes_to_the_dicomweb_origin_only(monkeypatch):
    monkeypatch.setenv("MEDGEMMA_DICOMWEB_TOKEN", "tok-123")
    s = _session(parse_dicomweb_uri("dicomweb://pacs.example/dicom-web/studies/1"))
    same = s.prepare_request(requests.Request("GET", "https://pacs.example/dicom-web/studies/1/series"))
    assert same.headers["Authorization"] == "Bearer tok-123"
    for elsewhere in (
        "https://evil.example/dicom-web/studies/1",
        "http://pacs.example/dicom-web/studies/1",
        "https://pacs.example:8443/dicom-web/studies/1",
    ):
        assert "Authorization" not in s.prepare_request(requests.Request("GET", elsewhere)).headers


def test_search_and_retrieve_series_matches_local(orthanc, series_dir, creds):
    remote = load_parts(uri(orthanc, "studies", STUDY, "series", CT_SERIES), ImageOptions(), 32)
    local = load_parts(str(series_dir / "ct"), ImageOptions(), 32)
    assert len(remote) == len(local) == 20
    for a, b in zip(remote, local):
        if isinstance(a, ImagePart):
            np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
        else:
            assert isinstance(a, TextPart) and a == b


def test_study_uri_takes_the_largest_series_and_instance_uri_one_image(orthanc, creds):
    parts = load_parts(uri(orthanc, "studies", STUDY), ImageOptions(max_slices=4), 32)
    assert [p.text for p in parts if isinstance(p, TextPart)] == ["SLICE 1", "SLICE 2", "SLICE 3", "SLICE 4"]
    sop = f"{CT_SERIES}.1.3"
    parts = load_parts(uri(orthanc, "studies", STUDY, "series", CT_SERIES, "instances", sop), ImageOptions(), 32)
    assert len(parts) == 1 and isinstance(parts[0], ImagePart)


def test_errors_are_one_line_without_uids_or_phi(orthanc, creds, monkeypatch):
    with pytest.raises(DicomWebError) as e:
        load_parts(uri(orthanc, "studies", "1.2.3.999"), ImageOptions(), 32)
    assert "127.0.0.1" in str(e.value) and "1.2.3.999" not in str(e.value)
    monkeypatch.delenv("MEDGEMMA_DICOMWEB_USER")
    with pytest.raises(DicomWebError, match="HTTP 401"):
        load_parts(uri(orthanc, "studies", STUDY, "series", CT_SERIES), ImageOptions(), 32)
    closed = f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web/studies/{STUDY}"
    with pytest.raises(DicomWebError, match="cannot connect") as e:
        load_parts(closed, ImageOptions(), 32)
    for err in (str(e.value),):
        assert all(v not in err for v in FAKE_PHI.values())


@pytest.mark.slow
def test_cli_ask_and_preview_on_orthanc_series(orthanc, tmp_path, cli, tiny_model_dir):
    env = {"MEDGEMMA_DICOMWEB_USER": USER, "MEDGEMMA_DICOMWEB_PASSWORD": PASSWORD}
    src = uri(orthanc, "studies", STUDY, "series", CT_SERIES)
    r = cli("preview", src, "-o", str(tmp_path / "p.png"), "--size", "32", env=env)
    assert r.returncode == 0, r.stderr
    assert "10 images" in r.stdout
    r = cli(
        "ask",
        "--model",
        str(tiny_model_dir),
        "--image",
        src,
        "--max-slices",
        "4",
        "--max-new-tokens",
        "3",
        "--json",
        "Any abnormality?",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["prompt_tokens"] > 4 * 16
    r = cli(
        "preview",
        src,
        "-o",
        str(tmp_path / "p.png"),
        env={"MEDGEMMA_DICOMWEB_USER": USER, "MEDGEMMA_DICOMWEB_PASSWORD": "wrong"},
    )
    assert r.returncode == 2 and r.stderr.startswith("error: DICOMweb") and "401" in r.stderr, r.stderr
    assert PASSWORD not in r.stderr


def test_size_caps(orthanc, creds, monkeypatch):
    import medgemma_toolkit.imaging.dicomweb as dw
    from medgemma_toolkit.errors import ImageTooLarge

    src = uri(orthanc, "studies", STUDY, "series", CT_SERIES)
    monkeypatch.setattr(dw, "MAX_TOTAL_BYTES", 5 * 32 * 32 * 2)  # five slices' worth of pixels
    with pytest.raises(ImageTooLarge, match="over"):
        load_parts(src, ImageOptions(), 32)
    monkeypatch.setattr(dw, "MAX_TOTAL_BYTES", 10**9)
    monkeypatch.setattr(dw, "MAX_INSTANCE_BYTES", 500)  # smaller than one instance's response
    with pytest.raises(ImageTooLarge, match="over the limit"):
        load_parts(src, ImageOptions(), 32)


def test_silent_server_times_out(monkeypatch, caplog):
    """A server that accepts connections but never answers: a timeout error, not a hang."""
    import threading

    import medgemma_toolkit.imaging.dicomweb as dw

    monkeypatch.setattr(dw, "TIMEOUT_S", (0.5, 0.5))
    monkeypatch.setattr(dw, "RETRIES", 1)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        port = srv.getsockname()[1]
        caplog.set_level(logging.DEBUG)
        with pytest.raises(DicomWebError, match="timed out"):
            load_parts(f"dicomweb+http://127.0.0.1:{port}/dicom-web/studies/{STUDY}", ImageOptions(), 32)
        assert STUDY not in caplog.text  # retries are not logged with the request path
    finally:
        stop.set()
        t.join(2)
        for c in conns:
            c.close()
        srv.close()


def test_plain_http_url_form(orthanc, creds):
    parts = load_parts(f"{orthanc}/dicom-web/studies/{STUDY}/series/{SMALL_SERIES}", ImageOptions(), 32)
    assert [p.text for p in parts if isinstance(p, TextPart)] == ["SLICE 1", "SLICE 2", "SLICE 3"]
