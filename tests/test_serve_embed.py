"""`medgemma serve --embed-model`: /v1/embeddings through the official `openai` client and /v1/medgemma/zero-shot,
compared with the Python API on the same inputs; same auth, limits, error shape and PHI-free logs as chat."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import openai
import pydicom
import pytest
from PIL import Image

from medgemma_toolkit.serve.launch import InProcessServer, ServerProcess
from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, write_series
from medgemma_toolkit.testing.tiny_siglip import build_tiny_siglip

KEY = "test-key-0123456789"
PHI = {"PatientName": "Zyxwort^Quillamena", "PatientID": "PHI-ID-5550123", "InstitutionName": "Saint Phiberta"}
SECRET_TEXT = "patient Quillamena has effusion"


def png(color=(200, 30, 30), w: int = 40, h: int = 30) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(sum(color))
    a = (rng.random((h, w, 3)) * 60).astype(np.uint8) + np.array(color, np.uint8) // 2
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("ssig") / "tiny-siglip")


@pytest.fixture(scope="module")
def ms(siglip_dir):
    from medgemma_toolkit import MedSigLIP

    return MedSigLIP.load(str(siglip_dir))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("eroot")
    write_series(r / "ct", SeriesSpec(slices=5))
    return r


@pytest.fixture(scope="module")
def server(tiny_model_dir, siglip_dir, root, tmp_path_factory):
    log = tmp_path_factory.mktemp("eserve") / "server.log"
    srv = ServerProcess(
        tiny_model_dir,
        log,
        "--api-key",
        KEY,
        "--embed-model",
        str(siglip_dir),
        "--max-images",
        "6",
        "--image-root",
        str(root),
        "--max-body-mb",
        "1",
        env={"OMP_NUM_THREADS": "1"},
    )
    with srv:
        yield srv


def post(server, path, body, key=KEY):
    h = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    return httpx.post(server.url + path, content=json.dumps(body).encode(), headers=h, timeout=120)


def test_openai_client_texts_and_images(server, ms):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    texts = ["pleural effusion", "normal chest x-ray"]
    r = client.embeddings.create(model="tiny-siglip", input=texts)  # the client asks for base64 and decodes it
    assert r.model == "tiny-siglip" and [d.index for d in r.data] == [0, 1] and r.usage.prompt_tokens > 0
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), ms.embed_texts(texts).vectors, atol=1e-6)
    red = png()
    mixed = client.embeddings.create(
        model="tiny-siglip",
        input=[{"type": "image_url", "image_url": {"url": uri(red)}}, "edema"],  # type: ignore[list-item]
        encoding_format="float",
    )
    got = np.array([d.embedding for d in mixed.data])
    np.testing.assert_allclose(got[0], ms.embed_images([red]).vectors[0], atol=1e-6)
    np.testing.assert_allclose(got[1], ms.embed_texts(["edema"]).vectors[0], atol=1e-6)


def test_series_under_image_root_gives_one_item_per_slice(server, ms, root):
    from medgemma_toolkit.imaging import ImageOptions

    res = post(
        server,
        "/v1/embeddings",
        {"model": "tiny-siglip", "input": [{"type": "image_url", "image_url": {"url": "ct"}}, "x"]},
    )
    assert res.status_code == 200, res.text
    data = res.json()["data"]
    assert [d["input"] for d in data] == [0] * 5 + [1] and [d["index"] for d in data] == list(range(6))
    assert [d["medgemma"]["label"] for d in data[:5]] == [f"SLICE {k}" for k in range(1, 6)]
    want = ms.embed_images([str(root / "ct")], ImageOptions(max_slices=85)).vectors
    np.testing.assert_allclose(np.array([d["embedding"] for d in data[:5]]), want, atol=1e-5)


def test_zero_shot_matches_the_api(server, ms):
    labels = ["pleural effusion", "normal chest x-ray", "cardiomegaly"]
    imgs = [png(), png((10, 200, 40))]
    res = post(
        server, "/v1/medgemma/zero-shot", {"images": [uri(i) for i in imgs], "labels": labels, "scoring": "sigmoid"}
    )
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["labels"] == labels and body["scoring"] == "sigmoid" and body["model"] == "tiny-siglip"
    want = ms.zero_shot(imgs, labels, scoring="sigmoid")
    for got, ref in zip(body["results"], want):
        assert got["top"] == ref["top"]
        np.testing.assert_allclose([got["scores"][k] for k in labels], [ref["scores"][k] for k in labels], atol=1e-6)


def test_errors_auth_limits_and_phi_free_log(server, tmp_path):
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.save_as(tmp_path / "phi.dcm")
    dcm = uri((tmp_path / "phi.dcm").read_bytes(), "application/dicom")
    ok = post(
        server,
        "/v1/embeddings",
        {"model": "tiny-siglip", "input": [{"type": "image_url", "image_url": {"url": dcm}}, SECRET_TEXT]},
    )
    assert ok.status_code == 200 and len(ok.json()["data"]) == 2
    cases = [
        (post(server, "/v1/embeddings", {"model": "tiny-siglip", "input": "x"}, key=None), 401, "invalid_api_key"),
        (post(server, "/v1/embeddings", {"model": "other", "input": "x"}), 404, "model_not_found"),
        (post(server, "/v1/embeddings", {"model": "tiny-siglip", "input": []}), 400, "invalid_value"),
        (post(server, "/v1/embeddings", {"model": "tiny-siglip", "input": ["a"] * 2049}), 400, "invalid_value"),
        (post(server, "/v1/embeddings", {"model": "tiny-siglip", "input": "x", "dimensions": 7}), 400, "invalid_value"),
        (
            post(
                server,
                "/v1/embeddings",
                {
                    "model": "tiny-siglip",
                    "input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}],
                },
            ),
            400,
            "invalid_image",
        ),
        (
            post(
                server,
                "/v1/embeddings",
                {"model": "tiny-siglip", "input": [{"type": "image_url", "image_url": {"url": uri(png())}}] * 7},
            ),
            400,
            "too_many_images",
        ),
        (
            post(
                server,
                "/v1/embeddings",
                {"model": "tiny-siglip", "input": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]},
            ),
            400,
            "image_source_not_allowed",
        ),
        (post(server, "/v1/medgemma/zero-shot", {"images": [uri(png())], "labels": ["a", "a"]}), 400, "invalid_value"),
        (
            post(server, "/v1/medgemma/zero-shot", {"images": [uri(png())], "labels": ["a"], "template": "none"}),
            400,
            None,
        ),
        (post(server, "/v1/embeddings", {"model": "tiny-siglip", "input": "x" * 2_000_000}), 413, "request_too_large"),
    ]
    for res, status, code in cases:
        assert res.status_code == status, (status, res.text)
        err = res.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and (code is None or err["code"] == code), err
    log = server.log_text()
    assert "/v1/embeddings" in log and "embeddings texts=1 images=1" in log
    for secret in [*PHI.values(), "Quillamena", SECRET_TEXT]:
        assert secret not in log


def test_without_embed_model_the_routes_say_so(tiny_model):
    from medgemma_toolkit.serve import ServeConfig, create_app

    with InProcessServer(create_app(tiny_model, ServeConfig())) as srv:
        res = httpx.post(srv.url + "/v1/embeddings", json={"model": "m", "input": "x"}, timeout=30)
    assert res.status_code == 404 and "--embed-model" in res.json()["error"]["message"]
