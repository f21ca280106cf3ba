"""Google's serving-container API (Vertex `predict`) on `medgemma serve`.

Request and response bodies come from tests/data/google_reference/vertex_examples.json, each with the verdict of
Google's own schema files (vertex_schemata/*.yaml at a60a660, validated with jsonschema in a scratch directory).
The end-to-end tests start the real server (`medgemma serve`) on a tiny checkpoint and read DICOM from the real
Orthanc DICOMweb server that tests/test_imaging_dicomweb.py starts.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import pytest
from conftest import CT_SERIES, PASSWORD, STUDY, USER
from PIL import Image

from medgemma_toolkit.backends.base import Completion
from medgemma_toolkit.serve.errors import APIError
from medgemma_toolkit.serve.launch import ServerProcess
from medgemma_toolkit.serve.schemas import ImageContent
from medgemma_toolkit.serve.vertex import (
    envelope,
    error_body,
    join_instances,
    prediction,
    split_instances,
    to_chat_request,
)

EXAMPLES = json.loads((Path(__file__).parent / "data" / "google_reference" / "vertex_examples.json").read_text())
REQUESTS, RESPONSES = EXAMPLES["requests"], EXAMPLES["responses"]
KEY = "vertex-key-0123456789"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# -- the translation (serve/vertex.py), against the schema's verdicts ------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, e in REQUESTS.items() if e["schema_valid"] and n != "image_gcs"))
def test_every_schema_valid_request_translates(name):
    body = REQUESTS[name]["body"]
    chat = to_chat_request(body, "served")
    assert chat.model == "served" and len(chat.messages) == len(body["messages"])
    images_in = sum(
        (len(v) if p["type"] != "image_dicom" else 1) if isinstance(v, list) else 1  # a DICOM instance list: one set
        for m in body["messages"]
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] != "text"
        for v in [p["image"] if p["type"] == "image" else next(iter(p[p["type"]].values()))]
    )
    images_out = sum(
        isinstance(c, ImageContent) for m in chat.messages if isinstance(m.content, list) for c in m.content
    )
    assert images_out == images_in  # a list of URLs is that many images, in order
    given = body.get("max_tokens") or body.get("max_completion_tokens")
    assert (chat.max_tokens or chat.max_completion_tokens) == (given or 500)  # the container's default: 500


@pytest.mark.parametrize("name", sorted(n for n, e in REQUESTS.items() if not e["schema_valid"]))
def test_every_schema_invalid_request_is_a_400(name):
    with pytest.raises(APIError) as e:
        to_chat_request(REQUESTS[name]["body"], "served", "instances[0]")
    assert e.value.status == 400 and e.value.message.startswith("instances[0]")


def test_image_gcs_is_refused_clearly():
    with pytest.raises(APIError, match="image_gcs .*not supported by this server") as e:
        to_chat_request(REQUESTS["image_gcs"]["body"], "served", "instances[0]")
    assert e.value.status == 400 and "messages[0].content[1]" in e.value.message


def test_envelope_and_errors_have_the_schemas_shapes():
    ok = prediction(Completion("<unused94>thought\nhmm<unused95>No acute findings.", "stop", 270, 5), "m")
    want = RESPONSES["success"]["body"]
    assert RESPONSES["success"]["schema_valid"] and set(ok) == set(want)
    assert set(ok["choices"][0]) == set(want["choices"][0]) and set(ok["usage"]) == set(want["usage"])
    assert ok["choices"][0]["message"] == {"role": "assistant", "content": "No acute findings."}  # no extra keys
    assert ok["usage"]["total_tokens"] == 275 and ok["object"] == "chat.completion"
    assert not RESPONSES["success_with_reasoning"]["schema_valid"]  # why the thought is not sent back here
    for status, kind in ((400, "error"), (429, "error_transient")):
        err, want = error_body("x " * 600, status), RESPONSES[kind]["body"]
        assert RESPONSES[kind]["schema_valid"] and set(err["error"]) == set(want["error"])
        assert err["error"]["type"] == want["error"]["type"] and len(err["error"]["message"]) <= 1024
    assert envelope([ok], True) == {"predictions": ok}  # one instance: an object, as the container answers
    assert envelope([ok, ok], True) == {"predictions": [ok, ok]} and envelope([ok], False) == ok


def test_instance_lists_of_one_series_are_read_as_one_set():
    s = "https://pacs.example.org/dw/studies/1/series/2"
    assert join_instances([f"{s}/instances/3", f"{s}/instances/4", f"{s}/instances/5"]) == [f"{s}/instances/3,4,5"]
    other = "https://pacs.example.org/dw/studies/1/series/9/instances/1"
    assert join_instances([f"{s}/instances/3", other, f"{s}/instances/4", s]) == [
        f"{s}/instances/3",
        other,
        f"{s}/instances/4",
        s,
    ]


def test_instances_envelope():
    assert split_instances({"instances": [{"messages": []}]}) == ([{"messages": []}], True)
    assert split_instances({"messages": []}) == ([{"messages": []}], False)
    for bad in ({"instances": []}, {"instances": {}}, {"instances": [{}], "extra": 1}, []):
        with pytest.raises(APIError):
            split_instances(bad)


# -- the real server ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory, orthanc):
    log = tmp_path_factory.mktemp("vertex") / "server.log"
    srv = ServerProcess(
        tiny_model_dir,
        log,
        "--api-key",
        KEY,
        "--served-model-name",
        "tiny",
        "--max-batch-size",
        "4",
        "--max-images",
        "3",
        "--allow-image-host",
        "127.0.0.1",
        env={
            "MEDGEMMA_DICOMWEB_USER": USER,
            "MEDGEMMA_DICOMWEB_PASSWORD": PASSWORD,
            "AIP_PREDICT_ROUTE": "/v1/endpoints/7/deployedModels/9:predict",
            "AIP_HEALTH_ROUTE": "/v1/endpoints/7/deployedModels/9",
            **ONE_THREAD,
        },
    )
    with srv:
        yield srv


def post(server, body, path: str = "/predict", key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=120)


def dicom_uri(orthanc_url: str, instance: bool = True) -> str:
    path = f"/dicom-web/studies/{STUDY}/series/{CT_SERIES}" + (f"/instances/{CT_SERIES}.1.3" if instance else "")
    return orthanc_url + path


def instance(*parts, **params) -> dict:
    return {"@requestFormat": "chatCompletions", "messages": [{"role": "user", "content": list(parts)}], **params}


TEXT = {"type": "text", "text": "Findings?"}


def test_predict_with_an_image_dicom_part_is_answered(server, orthanc):
    dicom = {"type": "image_dicom", "image_dicom": {"dicom_source": dicom_uri(orthanc)}}
    r = post(server, {"instances": [instance(TEXT, dicom, max_tokens=4)]})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"]
    assert pred["object"] == "chat.completion" and isinstance(pred["choices"][0]["message"]["content"], str)
    assert pred["usage"]["completion_tokens"] <= 4 and pred["model"] == "tiny"
    # the same answer as the chat route gives for the same image and question (greedy)
    chat = httpx.post(
        server.url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "max_tokens": 4,
            "messages": [
                {"role": "user", "content": [TEXT, {"type": "image_url", "image_url": {"url": dicom_uri(orthanc)}}]}
            ],
        },
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    ).json()
    assert pred["choices"][0]["message"]["content"] == chat["choices"][0]["message"]["content"]
    assert pred["usage"] == {k: chat["usage"][k] for k in pred["usage"]}
    # Vertex's own route name (AIP_PREDICT_ROUTE) answers too, and a bare request gets a bare answer
    again = post(server, instance(TEXT, dicom, max_tokens=4), path="/v1/endpoints/7/deployedModels/9:predict")
    assert again.status_code == 200 and again.json()["choices"][0]["message"] == pred["choices"][0]["message"]


def test_a_list_of_ct_instances_is_one_volume(server, orthanc):
    """The container reads a list of one series' instances as that series: a CT set is a volume with SLICE labels."""
    sops = [f"{dicom_uri(orthanc, instance=False)}/instances/{CT_SERIES}.1.{k}" for k in (2, 3, 4)]
    listed = {"type": "image_dicom", "image_dicom": {"dicom_source": sops}}
    r = post(server, {"instances": [instance(TEXT, listed, max_tokens=2)]})
    assert r.status_code == 200, r.text
    single = {"type": "image_dicom", "image_dicom": {"dicom_source": sops[0]}}
    one = post(server, {"instances": [instance(TEXT, single, max_tokens=2)]}).json()["predictions"]
    none = post(server, {"instances": [instance(TEXT, max_tokens=2)]}).json()["predictions"]
    image_cost = one["usage"]["prompt_tokens"] - none["usage"]["prompt_tokens"]
    # three images, and the volume's instruction and "SLICE n" labels beside them
    assert r.json()["predictions"]["usage"]["prompt_tokens"] - none["usage"]["prompt_tokens"] > 3 * image_cost
    seen = httpx.post(
        server.url + "/v1/medgemma/model-input",
        json={"image_url": {"url": join_instances(sops)[0]}},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert seen.status_code == 200, seen.text
    assert [e["label"] for e in seen.json()["images"]] == ["SLICE 1", "SLICE 2", "SLICE 3"]


def test_several_instances_each_answered_or_failed_in_place(server, orthanc):
    png = io.BytesIO()
    Image.new("RGB", (20, 10), (9, 99, 199)).save(png, format="PNG")
    b64 = base64.b64encode(png.getvalue()).decode()
    far = {"type": "image_dicom", "image_dicom": {"dicom_source": "https://pacs.example.org/dw/studies/1/series/2"}}
    body = {
        "instances": [
            instance(TEXT, {"type": "image_bytes", "image_bytes": {"input_bytes": b64}}, max_tokens=3),
            instance(TEXT, far, max_tokens=3),
            instance(
                {"type": "image_url", "image_url": {"url": [f"data:image/png;base64,{b64}"] * 2}}, TEXT, max_tokens=3
            ),
        ]
    }
    r = post(server, body)
    assert r.status_code == 200, r.text
    first, second, third = r.json()["predictions"]
    assert first["object"] == third["object"] == "chat.completion"
    assert third["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]  # two images in the third
    assert second == {"error": {"message": second["error"]["message"], "object": "error", "type": "BadRequestError"}}
    assert "not allowed" in second["error"]["message"]  # the operator's host allow-list, as for chat


def test_errors_in_the_containers_shape(server, orthanc):
    gcs = post(server, {"instances": [REQUESTS["image_gcs"]["body"]]})
    assert gcs.status_code == 400 and gcs.json()["error"]["type"] == "BadRequestError"
    assert "image_gcs" in gcs.json()["error"]["message"] and set(gcs.json()["error"]) == {"message", "object", "type"}
    one_bad = post(server, {"instances": [instance(TEXT), REQUESTS["unknown_field"]["body"]]})
    assert one_bad.status_code == 400 and "instances[1]" in one_bad.json()["error"]["message"]  # checked up front
    series = {"type": "image_dicom", "image_dicom": {"dicom_source": dicom_uri(orthanc, instance=False)}}
    limit = post(server, {"instances": [instance(TEXT, series, max_tokens=2)]})  # 10 slices; the server takes 3
    assert limit.status_code == 400 and "too many images" in limit.json()["error"]["message"]
    raw = httpx.post(
        server.url + "/predict",
        content=b"{not json",
        timeout=30,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert raw.status_code == 400 and raw.json()["error"]["object"] == "error"
    assert post(server, {"instances": [instance(TEXT)] * 5}).status_code == 400  # more than --max-batch-size
    assert post(server, {"instances": [instance(TEXT)]}, key=None).status_code == 401  # behind the same key


def test_health_route(server):
    r = httpx.get(
        server.url + "/v1/endpoints/7/deployedModels/9", timeout=10, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert r.status_code == 200 and r.text == "ok"
