"""The server's opt-in `medgemma.sr`: the official openai client asks for it (`extra_body`), the SR comes back as a
base64 DICOM part citing exactly the instances the model saw (inline bytes, a zipped series, files under the image
root, a DICOMweb series on a real Orthanc); dciodvfy and highdicom check it; the server's log holds no PHI."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import openai
import pydicom
import pytest
from conftest import CT_SERIES, PASSWORD, STUDY, USER, uri
from PIL import Image

from medgemma_toolkit.imaging import ImageOptions, load_parts
from medgemma_toolkit.imaging.manifest import image_manifest
from medgemma_toolkit.localize import to_pixels
from medgemma_toolkit.serve.launch import ServerProcess
from medgemma_toolkit.testing.synthetic_cxr import make_cxr
from medgemma_toolkit.testing.synthetic_dicom import FAKE_PHI, SeriesSpec, write_series

KEY = "test-key-sr-0123456789"
MODEL = "tiny-sr"
BOX_ANSWER = 'Final Answer: ```json[{"box_2d": [250, 100, 750, 600], "label": "right lung"}]```'
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
MR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR (the TID 1500 report)


def dciodvfy_errors(data: bytes, tmp: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy is not installed: apt-get install -y dicom3tools (scripts/test.sh does)")
    path = tmp / "check.dcm"
    path.write_bytes(data)
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


def cxr_bytes(frames: int = 1) -> bytes:
    ds = make_cxr(rows=48, cols=40)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.310", "1.2.826.0.1.3680043.8.498.311"
    ds.StudyDate, ds.StudyTime = "20240102", "101530"
    for k, v in FAKE_PHI.items():
        setattr(ds, k, v)
    if frames > 1:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
        ds.NumberOfFrames = frames
        ds.PixelData = ds.PixelData * frames
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "application/dicom") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_uri() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (80, 80, 80)).save(buf, "PNG")
    return data_uri(buf.getvalue(), "image/png")


def refs(sr) -> list[str]:
    return [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for c in sr.ContentSequence
        if c.ValueType == "TEXT"
        for item in getattr(c, "ContentSequence", [])
        if item.ValueType == "IMAGE"
    ]


@pytest.fixture(scope="module")
def box_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint rewired so that greedy decoding answers with one box around the right lung."""
    from medgemma_toolkit.testing.scripted import build_scripted_checkpoint

    return build_scripted_checkpoint(
        tiny_model_dir, tmp_path_factory.mktemp("boxes") / "boxes", BOX_ANSWER, added_tokens=True
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("image-root")
    write_series(d / "ct", SeriesSpec(slices=6, rows=16, cols=16))
    (d / "cxr.dcm").write_bytes(cxr_bytes())
    return d


@pytest.fixture(scope="module")
def server(box_model_dir, root, orthanc, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-sr") / "server.log"
    host = orthanc.split("://", 1)[1]
    srv = ServerProcess(
        box_model_dir, log, "--api-key", KEY, "--served-model-name", MODEL, "--image-root", str(root),
        "--allow-image-host", host, "--log-prompts",
        env={"MEDGEMMA_DICOMWEB_USER": USER, "MEDGEMMA_DICOMWEB_PASSWORD": PASSWORD},
    )  # fmt: skip
    with srv:
        yield srv


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def ask(client: openai.OpenAI, *urls: str, text: str = "Describe.", **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": u}} for u in urls] + [{"type": "text", "text": text}]
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        max_tokens=4,
        extra_body={"medgemma": {"sr": True, **extra}},
    )
    return r.model_dump()


def read_sr(field: dict, tmp: Path):
    assert field["media_type"] == "application/dicom"
    data = base64.b64decode(field["data"])
    assert field["bytes"] == len(data)
    assert dciodvfy_errors(data, tmp) == []
    return hd.sr.srread(io.BytesIO(data))


def test_chat_sr_of_inline_dicom_cites_the_instance_and_logs_no_phi(client, server, tmp_path):
    blob = cxr_bytes()
    out = ask(client, data_uri(blob))
    field = out["medgemma"]["sr"]
    assert field["sop_class_uid"] == SR_CLASS
    sr = read_sr(field, tmp_path)
    src = pydicom.dcmread(io.BytesIO(blob))
    assert refs(sr) == [src.SOPInstanceUID]
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.PatientID == FAKE_PHI["PatientID"]
    finding = [c.TextValue for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeMeaning == "Finding"]
    assert finding == [out["choices"][0]["message"]["content"] or "(no answer)"]
    log = server.log_text()
    assert "Describe." in log  # --log-prompts is on: the log is written, and still holds no patient value
    for value in (*FAKE_PHI.values(), src.SOPInstanceUID, src.StudyInstanceUID, field["data"][:40]):
        assert value not in log


def test_chat_sr_of_a_zipped_series_and_of_a_folder_under_the_root(client, root, tmp_path):
    files = sorted((root / "ct").glob("*.dcm"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in files:
            zf.write(f, f"ct/{f.name}")
    want = [e["sop_instance_uid"] for e in image_manifest(load_parts(str(root / "ct"), ImageOptions(), 32))]
    assert len(want) == 6
    for url in (data_uri(buf.getvalue(), "application/zip"), "ct"):
        sr = read_sr(ask(client, url)["medgemma"]["sr"], tmp_path)
        assert refs(sr) == want
    sr = read_sr(ask(client, "cxr.dcm")["medgemma"]["sr"], tmp_path)  # one file under the root
    assert refs(sr) == [pydicom.dcmread(root / "cxr.dcm").SOPInstanceUID]


def test_chat_sr_of_a_dicomweb_series_cites_the_fetched_instances(client, orthanc, series_dir, tmp_path):
    sampled = image_manifest(load_parts(str(series_dir / "ct"), ImageOptions(max_slices=10), 32))
    sr = read_sr(ask(client, uri(orthanc, "studies", STUDY, "series", CT_SERIES))["medgemma"]["sr"], tmp_path)
    assert refs(sr) == [e["sop_instance_uid"] for e in sampled]
    assert sr.StudyInstanceUID == STUDY


@pytest.mark.parametrize(
    "urls, extra, stream, reason",
    [
        (["PNG"], {}, False, "image 1 is not a DICOM instance"),
        ([], {}, False, "the request has no image"),
        (["DCM"], {}, True, "not available with stream: true"),
        (["NOUID"], {}, False, "image 1: DICOM without StudyInstanceUID, SeriesInstanceUID"),
    ],
)
def test_chat_sr_without_dicom_is_a_400_naming_the_reason(server, urls, extra, stream, reason):
    bare = io.BytesIO()
    make_cxr(rows=8, cols=8).save_as(bare, enforce_file_format=True)
    subst = {"PNG": png_uri(), "DCM": data_uri(cxr_bytes()), "NOUID": data_uri(bare.getvalue())}
    content = [{"type": "image_url", "image_url": {"url": subst[u]}} for u in urls] + [{"type": "text", "text": "Q?"}]
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": stream,
            "max_tokens": 2, "medgemma": {"sr": True, **extra}}  # fmt: skip
    r = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "medgemma.sr" and reason in err["message"] and err["code"] == "invalid_value"


def localize(server, image: str, sr: bool = True) -> httpx.Response:
    body = {"model": MODEL, "image": image, "objects": ["right lung"], "medgemma": {"sr": sr}}
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.post(server.url + "/v1/medgemma/localize", json=body, headers=headers, timeout=120)


@pytest.mark.parametrize("frames, frame", [(1, None), (3, 2)])
def test_localize_sr_one_region_on_the_instance_and_frame(server, tmp_path, frames, frame):
    blob = cxr_bytes(frames)
    r = localize(server, data_uri(blob))
    assert r.status_code == 200, r.text
    field = r.json()["medgemma"]["sr"]
    assert field["sop_class_uid"] == MR_CLASS
    sr = read_sr(field, tmp_path)
    (group,) = sr.content.get_planar_roi_measurement_groups()
    ref = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == pydicom.dcmread(io.BytesIO(blob)).SOPInstanceUID
    assert getattr(ref, "ReferencedFrameNumber", None) == frame
    x0, y0, x1, y1 = to_pixels((250, 100, 750, 600), 40, 48)
    assert np.allclose(group.roi.value, [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], atol=1e-4)


def test_localize_sr_of_a_file_under_the_root_and_refusals(server, root, tmp_path):
    r = localize(server, "cxr.dcm")
    assert r.status_code == 200, r.text
    (group,) = read_sr(r.json()["medgemma"]["sr"], tmp_path).content.get_planar_roi_measurement_groups()
    uid = pydicom.dcmread(root / "cxr.dcm").SOPInstanceUID
    assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
    r = localize(server, png_uri())
    assert r.status_code == 400 and r.json()["error"]["param"] == "medgemma.sr", r.text
    assert "not a DICOM instance" in r.json()["error"]["message"]
    r = localize(server, png_uri(), sr=False)  # without the field: a PNG is fine, and no SR comes back
    assert r.status_code == 200 and "medgemma" not in r.json()
    assert json.dumps(r.json())  # plain JSON


def test_inline_headers_of_a_deflated_file_are_read_under_the_bound():
    """Client bytes in the deflated transfer syntax go through imaging's bounded inflater, and the pixels are not
    kept (the headers live until the answer is done)."""
    from medgemma_toolkit.sr.inline import headers_from_bytes

    ds = pydicom.dcmread(io.BytesIO(cxr_bytes()))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    (header,) = headers_from_bytes([buf.getvalue(), b"not dicom"]).values()
    assert header.SOPInstanceUID == ds.SOPInstanceUID and "PixelData" not in header


def test_localize_sr_of_a_dicomweb_instance(server, orthanc, series_dir, tmp_path):
    """An allow-listed DICOMweb instance: the region references it; a series of several is a 400 in one line."""
    first = pydicom.dcmread(sorted((series_dir / "ct").glob("*.dcm"))[0])
    r = localize(server, uri(orthanc, "studies", STUDY, "series", CT_SERIES, "instances", first.SOPInstanceUID))
    assert r.status_code == 200, r.text
    (group,) = read_sr(r.json()["medgemma"]["sr"], tmp_path).content.get_planar_roi_measurement_groups()
    assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    r = localize(server, uri(orthanc, "studies", STUDY, "series", CT_SERIES))
    assert r.status_code == 400 and "holds more than one instance" in r.json()["error"]["message"], r.text
