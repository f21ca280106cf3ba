"""DICOM results back into the hospital: SRs written with highdicom, checked by dciodvfy and highdicom's reader,
stored over STOW-RS on a real Orthanc and read back over QIDO-RS and WADO-RS."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import CT_SERIES, PASSWORD, SCRIPT, STUDY, USER, run_cli, sr_batch_rows, uri
from PIL import Image

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.imaging import ImageOptions, load_parts
from medgemma_toolkit.imaging.manifest import image_manifest
from medgemma_toolkit.localize import to_pixels
from medgemma_toolkit.sr import AlgorithmInfo, Region, answer_report, evidence_for, measurement_report, read_header
from medgemma_toolkit.sr.regions import finding_site
from medgemma_toolkit.sr.stow import parse_stow_url
from medgemma_toolkit.testing.synthetic_cxr import make_cxr
from medgemma_toolkit.testing.synthetic_dicom import FAKE_PHI, SeriesSpec, write_series

BOX_ANSWER = 'Final Answer: ```json[{"box_2d": [250, 100, 750, 600], "label": "right lung"}]```'
CXR_STUDY, CXR_SERIES = "1.2.826.0.1.3680043.8.498.300", "1.2.826.0.1.3680043.8.498.301"
ALGO = AlgorithmInfo("tiny-medgemma", "medgemma-4b-it", "sha256:0123456789abcdef", "cxr-localize@1", "0.0.1")


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy (Debian dicom3tools) prints for `path` (it exits 0 either way)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy is not installed: apt-get install -y dicom3tools (scripts/test.sh does)")
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


def write_cxr(path: Path, phi: bool = True) -> Path:
    ds = make_cxr(rows=48, cols=40)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = CXR_STUDY, CXR_SERIES
    ds.StudyDate, ds.StudyTime = "20240102", "101530"
    if phi:
        for k, v in FAKE_PHI.items():
            setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def pacs(orthanc) -> str:
    """The base URL of a real Orthanc (DICOMweb under /dicom-web) that wants basic auth (conftest.py's, started once
    for this module)."""
    return orthanc


@pytest.fixture
def pacs_creds(monkeypatch) -> None:
    monkeypatch.setenv("MEDGEMMA_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDGEMMA_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.delenv("MEDGEMMA_DICOMWEB_TOKEN", raising=False)


@pytest.fixture(scope="module")
def box_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint rewired so that greedy decoding answers with one box around the right lung."""
    from medgemma_toolkit.testing.scripted import build_scripted_checkpoint

    return build_scripted_checkpoint(
        tiny_model_dir, tmp_path_factory.mktemp("boxes") / "boxes", BOX_ANSWER, added_tokens=True
    )


def test_finding_site_codes_from_dicoms_dictionary():
    site = finding_site("right lung")
    assert site is not None
    assert site.value.value == "39607008"  # SCT Lung
    lat = [i for i in site.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "272741003"]
    assert lat and lat[0].ConceptCodeSequence[0].CodeValue == "24028007"  # Right
    assert finding_site("heart").value.value == "80891009"
    assert finding_site("the thing in the corner") is None


def test_measurement_report_round_trip(tmp_path):
    src = read_header(write_cxr(tmp_path / "cxr.dcm"))
    sr = measurement_report(src, [Region("right lung", (4.0, 0.0, 24.0, 48.0)), Region("odd", (0, 1, 2, 3))], ALGO)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    back = hd.sr.srread(tmp_path / "sr.dcm")
    groups = back.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2
    roi = groups[0].roi
    assert roi.value_type == hd.sr.ValueTypeValues.SCOORD and roi.GraphicType == "POLYLINE"
    assert np.allclose(roi.value, [[4, 0], [24, 0], [24, 48], [4, 48], [4, 0]])
    ref = roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID and ref.ReferencedSOPClassUID == src.SOPClassUID
    assert "right lung" in str(groups[0].tracking_identifier)
    assert groups[0].finding_sites[0].value.value == "39607008" and not groups[1].finding_sites
    # Patient and study as the source has them; new series and instance; unverified, preliminary, marked as AI
    for key in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber"):
        assert str(back.get(key)) == str(src.get(key)), key
    assert back.SeriesInstanceUID != src.SeriesInstanceUID and back.SOPInstanceUID != src.SOPInstanceUID
    assert (back.VerificationFlag, back.PreliminaryFlag, back.CompletionFlag) == (
        "UNVERIFIED",
        "PRELIMINARY",
        "PARTIAL",
    )
    assert "AI generated, not reviewed" in back.SeriesDescription


def test_answer_in_any_script_is_written_as_utf8(tmp_path):
    """A model answers in any script (a random one emits any token): the SR declares UTF-8 and keeps the text exactly,
    where the source's character set (none: ASCII) could not encode it."""
    files = write_series(tmp_path / "ct", SeriesSpec(slices=3, rows=16, cols=16))
    answer = "Épanchement pleural — 胸水 ✓ 🫁"
    sr = answer_report("Any effusion?", answer, [read_header(files[0])], ALGO, thought=None)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    back = pydicom.dcmread(tmp_path / "sr.dcm")
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert answer in [getattr(i, "TextValue", None) for i in _walk(back.ContentSequence)]


def _walk(items):
    for item in items:
        yield item
        yield from _walk(getattr(item, "ContentSequence", []))


def test_answer_report_on_de_identified_series(tmp_path):
    """No patient attributes at all in the source (as after `deid`): the SR has them empty, and is still valid."""
    files = write_series(tmp_path / "ct", SeriesSpec(slices=5, rows=16, cols=16, phi={}))
    for f in files:
        ds = pydicom.dcmread(f)
        for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
            if key in ds:
                del ds[key]
        ds.save_as(f)
    evidence = [read_header(f) for f in files[1:4]]
    sr = answer_report("Any nodule?", "No nodule is seen.", evidence, ALGO, thought=None)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    back = hd.sr.srread(tmp_path / "sr.dcm")
    assert isinstance(back, hd.sr.ComprehensiveSR)
    assert str(back.PatientName) == "" and back.PatientID == ""
    texts = {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in back.ContentSequence if i.ValueType == "TEXT"
    }
    assert texts["Request"] == "Any nodule?" and texts["Finding"] == "No nodule is seen."
    assert "AI generated, not reviewed" in texts["Comment"]
    cited = [_image_refs(back)]
    assert cited[0] == [ds.SOPInstanceUID for ds in evidence]
    listed = [
        r.ReferencedSOPInstanceUID
        for s in back.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for r in se.ReferencedSOPSequence
    ]
    assert sorted(listed) == sorted(ds.SOPInstanceUID for ds in evidence)
    algo = {
        i.ConceptNameCodeSequence[0].CodeValue: i.TextValue
        for i in back.ContentSequence
        if i.ValueType == "TEXT" and i.RelationshipType == "HAS CONCEPT MOD"
    }
    assert algo["111001"] == "tiny-medgemma" and algo["111003"] == "sha256:0123456789abcdef"


def _image_refs(sr) -> list[str]:
    """SOP Instance UIDs of the IMAGE items under the Finding, in order."""
    finding = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121071"][0]
    return [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in finding.ContentSequence]


def test_evidence_refuses_a_changed_file(tmp_path):
    f = write_cxr(tmp_path / "cxr.dcm")
    entry = {"source": str(f), "sop_instance_uid": "1.2.3.4"}
    with pytest.raises(BadInput, match="changed since it was read"):
        evidence_for([entry])
    with pytest.raises(BadInput, match="needs a DICOM source"):
        evidence_for([{"source": str(f), "sop_instance_uid": None}])


def test_stow_urls():
    assert parse_stow_url("http://127.0.0.1:8042/dicom-web/").root == "http://127.0.0.1:8042/dicom-web"
    assert parse_stow_url("dicomweb://pacs.example.org/dw").root == "https://pacs.example.org/dw"
    for bad in ("ftp://x/dw", "http://u:p@x/dw", "http://x/dw?a=1", "http://x/dw/studies/1.2.3", "pacs"):
        with pytest.raises(BadInput):
            parse_stow_url(bad)


def test_localize_sr_stored_in_orthanc_reads_back_identical(pacs, pacs_creds, box_model_dir, tmp_path, cli):
    """The issue's "done when": localize --sr --stow; the SR is in Orthanc, valid, with one region on cxr.dcm."""
    from dicomweb_client.api import DICOMwebClient

    cxr = write_cxr(tmp_path / "cxr.dcm")
    out = tmp_path / "out.dcm"
    res = run_cli(  # the installed entry point in its own process, as the command runs
        "localize",
        "--model",
        str(box_model_dir),
        "--image",
        str(cxr),
        "right lung",
        "--sr",
        str(out),
        "--stow",
        f"{pacs}/dicom-web",
        "--json",
        env={"MEDGEMMA_DICOMWEB_USER": USER, "MEDGEMMA_DICOMWEB_PASSWORD": PASSWORD},
    )
    assert res.returncode == 0, res.stderr
    stored = json.loads(res.stdout)["stored"]
    assert [s["stored"] for s in stored] == [True]
    assert "stored" in res.stderr and str(out) in res.stderr
    for value in FAKE_PHI.values():  # no patient values in what the command says
        assert value not in res.stderr and value not in res.stdout
    assert CXR_STUDY not in res.stderr
    assert dciodvfy_errors(out) == []
    sr = hd.sr.srread(out)
    (group,) = sr.content.get_planar_roi_measurement_groups()
    assert (
        group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == read_header(cxr).SOPInstanceUID
    )
    x0, y0, x1, y1 = to_pixels((250, 100, 750, 600), 40, 48)  # the answer's box in the image's own pixels
    assert np.allclose(group.roi.value, [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], atol=1e-4)
    assert (x0, y0) == (0.8, 12.0)  # 100/1000 of the 48-px square, less the 4 px of padding on the left

    client = DICOMwebClient(f"{pacs}/dicom-web")
    client._session.auth = (USER, PASSWORD)
    found = client.search_for_instances(CXR_STUDY, fields=["00080018"], search_filters={"Modality": "SR"})
    assert [f["00080018"]["Value"][0] for f in found] == [sr.SOPInstanceUID]
    back = client.retrieve_instance(CXR_STUDY, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    local = pydicom.dcmread(out)
    assert back == local  # every data element equal (file meta aside)


def test_localize_sc_burns_the_overlay_in_and_stores_both(pacs, pacs_creds, box_model_dir, tmp_path, cli):
    """--sc: a Secondary Capture whose pixels are exactly the drawn overlay (what `-o` writes), stored beside the SR."""
    from medgemma_toolkit.imaging import load_image
    from medgemma_toolkit.localize.overlay import draw_boxes

    cxr = write_cxr(tmp_path / "cxr.dcm")
    sr_path, sc_path = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
    res = cli("localize", "-m", str(box_model_dir), "-i", str(cxr), "right lung", "--sr", str(sr_path),
              "--sc", str(sc_path), "--stow", f"{pacs}/dicom-web", "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [s["file"] for s in out["stored"]] == [str(sr_path), str(sc_path)]
    assert dciodvfy_errors(sc_path) == []
    sc = pydicom.dcmread(sc_path)
    box = tuple(out["boxes"][0]["xyxy"])
    want = np.asarray(draw_boxes(load_image(cxr), [("right lung", box)]))
    assert sc.pixel_array.shape == (48, 40, 3) and np.array_equal(sc.pixel_array, want)
    assert sc.BurnedInAnnotation == "YES" and "AI generated, not reviewed" in sc.SeriesDescription
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == read_header(cxr).SOPInstanceUID
    assert (sc.PatientID, sc.StudyInstanceUID) == (FAKE_PHI["PatientID"], CXR_STUDY)


def test_ask_sr_cites_exactly_the_sampled_slices(tiny_model_dir, tmp_path, cli):
    files = write_series(tmp_path / "ct_series", SeriesSpec(slices=12, rows=16, cols=16))
    out = tmp_path / "ask.dcm"
    res = cli(
        "ask",
        "-m",
        str(tiny_model_dir),
        "--image",
        str(tmp_path / "ct_series"),
        "Any nodule?",
        "--max-slices",
        "4",
        "--max-new-tokens",
        "4",
        "--sr",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "4 source instances" in res.stderr
    assert dciodvfy_errors(out) == []
    sampled = image_manifest(load_parts(str(tmp_path / "ct_series"), ImageOptions(max_slices=4), 32))
    want = [e["sop_instance_uid"] for e in sampled]
    assert len(want) == 4 and len(files) == 12
    sr = hd.sr.srread(out)
    assert _image_refs(sr) == want
    listed = {
        r.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for r in se.ReferencedSOPSequence
    }
    assert listed == set(want)
    assert sr.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID


@pytest.mark.parametrize(
    "args, message",
    [
        (["ask", "Q?", "--image", "{png}", "--sr", "{out}"], "an SR needs a DICOM source"),
        (["localize", "--image", "{png}", "lung", "--sr", "{out}"], "an SR needs a DICOM source"),
        (["ask", "Q?", "--sr", "{out}"], "no --image given"),
        (["localize", "--image", "{dcm}", "lung", "--stow", "http://127.0.0.1:9/dw"], "give --sr OUT.dcm too"),
        (["localize", "--image", "{dcm}", "lung", "--sr", "{out}", "--stow", "ftp://x/dw"], "DICOMweb root"),
    ],
)
def test_bad_sr_inputs_fail_before_any_model_loads(tmp_path, cli, args, message):
    """The model named does not exist: the input check must come first and say one line."""
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    write_cxr(tmp_path / "cxr.dcm")
    subst = {"{png}": str(tmp_path / "x.png"), "{out}": str(tmp_path / "o.dcm"), "{dcm}": str(tmp_path / "cxr.dcm")}
    res = cli(*[subst.get(a, a) for a in args], "-m", str(tmp_path / "no-such-model"))
    assert res.returncode != 0
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "o.dcm").exists()


def test_stow_command(pacs, pacs_creds, tmp_path, cli):
    sr = measurement_report(read_header(write_cxr(tmp_path / "cxr.dcm")), [Region("heart", (1, 1, 5, 5))], ALGO)
    sr.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    res = cli("stow", str(tmp_path / "a.dcm"), "--to", f"{pacs}/dicom-web")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == [f"stored {tmp_path / 'a.dcm'} on 127.0.0.1"]
    (tmp_path / "b.txt").write_text("not dicom")
    res = cli("stow", str(tmp_path / "b.txt"), "--to", f"{pacs}/dicom-web")
    assert res.returncode != 0 and "not a DICOM file" in res.stderr


def test_stow_without_credentials_is_one_line(pacs, tmp_path, cli, monkeypatch):
    for k in ("MEDGEMMA_DICOMWEB_USER", "MEDGEMMA_DICOMWEB_PASSWORD", "MEDGEMMA_DICOMWEB_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    write_cxr(tmp_path / "cxr.dcm")
    res = cli("stow", str(tmp_path / "cxr.dcm"), "--to", f"{pacs}/dicom-web")
    assert res.returncode != 0
    assert "HTTP 401" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_server_field_is_an_in_memory_sr_of_exactly_the_cited_instances(tmp_path):
    """The serve opt-in (`medgemma.sr`): base64 DICOM built from the request's bytes; no file written anywhere."""
    import base64
    import io

    from medgemma_toolkit.sr.inline import evidence_from_bytes, sr_field

    files = write_series(tmp_path / "ct", SeriesSpec(slices=6, rows=16, cols=16))
    blobs = [f.read_bytes() for f in files] + [b"\x89PNG not dicom"]
    manifest = [{"sop_instance_uid": str(pydicom.dcmread(f).SOPInstanceUID)} for f in (files[4], files[1])]
    evidence = evidence_from_bytes(blobs, manifest)
    before = set(tmp_path.rglob("*"))
    field = sr_field("Q?", "A.", evidence, ALGO)
    assert set(tmp_path.rglob("*")) == before
    assert field["media_type"] == "application/dicom" and field["bytes"] > 0
    (tmp_path / "sr.dcm").write_bytes(base64.b64decode(field["data"]))
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    sr = hd.sr.srread(io.BytesIO(base64.b64decode(field["data"])))
    assert _image_refs(sr) == [e["sop_instance_uid"] for e in manifest]
    with pytest.raises(BadInput, match="not a DICOM instance"):
        evidence_from_bytes(blobs, [{"sop_instance_uid": None}])
    with pytest.raises(BadInput, match="not among the DICOM files"):
        evidence_from_bytes(blobs[:1], manifest)


def test_no_patient_value_reaches_warnings_or_logs(tmp_path, caplog):
    """highdicom quotes a single-component PatientName in a UserWarning; building an SR must not let it out."""
    import logging
    import warnings

    from medgemma_toolkit.sr.capture import overlay_capture

    ds = pydicom.dcmread(write_cxr(tmp_path / "cxr.dcm"))
    ds.PatientName = "Zebedee"
    ds.save_as(tmp_path / "one.dcm")
    src = read_header(tmp_path / "one.dcm")
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        measurement_report(src, [Region("heart", (1, 1, 5, 5))], ALGO)
        answer_report("Q?", "A.", [src], ALGO)
        overlay_capture(src, Image.new("RGB", (40, 48)), ALGO)
    assert not [w for w in seen if "Zebedee" in str(w.message)]
    assert "Zebedee" not in caplog.text


def test_ask_sr_on_a_dicomweb_series_cites_the_sampled_instances(
    pacs, pacs_creds, tiny_model_dir, tmp_path, cli, request
):
    """A series read over DICOMweb: the headers come back over WADO-RS metadata; the SR cites the sampled slices."""
    local = request.getfixturevalue("series_dir")  # what the fixture loaded into Orthanc

    out = tmp_path / "remote.dcm"
    for source in (uri(pacs, "studies", STUDY, "series", CT_SERIES), uri(pacs, "studies", STUDY)):
        res = cli("ask", "-m", str(tiny_model_dir), "--image", source, "Any nodule?", "--max-slices", "3",
                  "--max-new-tokens", "2", "--sr", str(out))  # fmt: skip
        assert res.returncode == 0, res.stderr
        sampled = image_manifest(load_parts(str(local / "ct"), ImageOptions(max_slices=3), 32))
        sr = hd.sr.srread(out)
        assert _image_refs(sr) == [e["sop_instance_uid"] for e in sampled]
        assert dciodvfy_errors(out) == []
        assert sr.PatientID == FAKE_PHI["PatientID"] and sr.StudyInstanceUID == STUDY


def test_stow_refuses_a_redirect_and_sends_no_credentials_on(tmp_path, cli, monkeypatch):
    """A server answering the STOW POST with a redirect: one line, nothing followed, exit status non-zero."""
    import http.server
    import threading

    hits: list[tuple[str, str | None]] = []

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append((self.path, self.headers.get("Authorization")))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.2:9/elsewhere/studies")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MEDGEMMA_DICOMWEB_TOKEN", "s3cret-token")
    try:
        res = cli("stow", str(write_cxr(tmp_path / "cxr.dcm")), "--to", f"http://127.0.0.1:{server.server_port}/dw")
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode != 0
    assert "redirect" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert [p for p, _ in hits] == ["/dw/studies"]  # one POST, to the server named; the redirect not followed
    assert hits[0][1] == "Bearer s3cret-token" and "s3cret" not in res.stderr


@pytest.mark.parametrize("with_thought", [False, True])
def test_ask_sr_leaves_the_thought_out_unless_asked(scripted_model_dir, tmp_path, cli, with_thought):
    """The scripted model thinks "The heart is large." and answers "Cardiomegaly."; the SR holds the answer and,
    only with --sr-thought, the thought."""
    cxr = write_cxr(tmp_path / "cxr.dcm")
    out = tmp_path / "sr.dcm"
    extra = ["--sr-thought"] if with_thought else []
    res = cli("ask", "-m", str(scripted_model_dir), "-i", str(cxr), "Describe.", "--sr", str(out), *extra)
    assert res.returncode == 0, res.stderr
    assert "Cardiomegaly." in res.stdout
    sr = hd.sr.srread(out)
    texts = [
        (i.ConceptNameCodeSequence[0].CodeMeaning, i.TextValue) for i in sr.ContentSequence if i.ValueType == "TEXT"
    ]
    assert ("Finding", "Cardiomegaly.") in texts
    thought = SCRIPT.split("thought")[1].split("<unused95>")[0].strip()
    assert (thought in out.read_bytes().decode("latin-1")) is with_thought
    assert _image_refs(sr) == [read_header(cxr).SOPInstanceUID]


@pytest.mark.parametrize("frame_args, referenced", [([], 2), (["--frame", "0"], 1)])
def test_localize_sr_references_the_frame_the_model_saw(box_model_dir, tmp_path, cli, frame_args, referenced):
    """A 3-frame image: the middle frame is decoded unless --frame; the region references that frame (1-based)."""
    ds = pydicom.dcmread(write_cxr(tmp_path / "one.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # multi-frame grey SC
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3
    ds.save_as(tmp_path / "multi.dcm")
    out = tmp_path / "sr.dcm"
    res = cli("localize", "-m", str(box_model_dir), "-i", str(tmp_path / "multi.dcm"), "right lung",
              "--sr", str(out), *frame_args)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert dciodvfy_errors(out) == []
    (group,) = hd.sr.srread(out).content.get_planar_roi_measurement_groups()
    assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber == referenced


def test_a_refused_instance_is_reported_with_the_standards_reason():
    """A STOW-RS answer (PS3.18 Store Instances Response) listing the instance under FailedSOPSequence."""
    from pydicom.dataset import Dataset

    from medgemma_toolkit.sr.stow import _outcome

    failed = Dataset()
    failed.ReferencedSOPInstanceUID, failed.FailureReason = "1.2.3", 0xA900
    response = Dataset()
    response.FailedSOPSequence = [failed]
    ref = parse_stow_url("http://127.0.0.1:1/dw")
    out = _outcome("a.dcm", ref, response)
    assert not out.ok and out.line() == "not stored: a.dcm on 127.0.0.1 (data set does not match SOP class)"
    assert _outcome("b.dcm", ref, Dataset()).line() == "stored b.dcm on 127.0.0.1"


def test_localize_sr_on_dicomweb_references_the_fetched_instance(
    pacs, pacs_creds, box_model_dir, tmp_path, cli, request
):
    """`localize --image` takes a DICOMweb instance (or a study/series holding one): the SR cites that instance."""
    import requests

    ds = pydicom.dcmread(write_cxr(tmp_path / "cxr.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = CXR_STUDY + ".9", CXR_SERIES + ".9"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = CXR_SERIES + ".9.1"
    ds.save_as(tmp_path / "remote.dcm", enforce_file_format=True)
    r = requests.post(f"{pacs}/instances", data=(tmp_path / "remote.dcm").read_bytes(), auth=(USER, PASSWORD))
    r.raise_for_status()
    ct_first = pydicom.dcmread(sorted((request.getfixturevalue("series_dir") / "ct").glob("*.dcm"))[0])
    cases = [
        (uri(pacs, "studies", ds.StudyInstanceUID), ds.SOPInstanceUID),  # a study holding one instance
        (
            uri(pacs, "studies", STUDY, "series", CT_SERIES, "instances", ct_first.SOPInstanceUID),
            ct_first.SOPInstanceUID,
        ),
    ]
    for source, sop in cases:
        out = tmp_path / "sr.dcm"
        res = cli("localize", "-m", str(box_model_dir), "-i", source, "right lung", "--sr", str(out), "--json")
        assert res.returncode == 0, res.stderr
        assert dciodvfy_errors(out) == []
        (group,) = hd.sr.srread(out).content.get_planar_roi_measurement_groups()
        assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop
    # A series of several instances: one line, before the model (which does not exist) would load.
    res = cli("localize", "-m", str(tmp_path / "no-such-model"), "-i", uri(pacs, "studies", STUDY, "series", CT_SERIES),
              "heart", "--sr", str(tmp_path / "x.dcm"))  # fmt: skip
    assert res.returncode != 0 and "holds more than one instance" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.dcm").exists()


def test_sr_of_a_comparison_belongs_to_the_current_study_and_cites_both(tiny_model_dir, tmp_path, cli):
    """--prior/--current: both instances are cited (in the order the model saw them: prior, then current); the SR
    is filed in the current study, the prior's listed as Pertinent Other Evidence."""
    prior = pydicom.dcmread(write_cxr(tmp_path / "prior.dcm"))
    prior.StudyInstanceUID, prior.SeriesInstanceUID = CXR_STUDY + ".1", CXR_SERIES + ".1"
    prior.SOPInstanceUID = prior.file_meta.MediaStorageSOPInstanceUID = CXR_SERIES + ".1.1"
    prior.StudyDate = prior.ContentDate = prior.AcquisitionDate = "20230101"
    prior.save_as(tmp_path / "prior.dcm", enforce_file_format=True)
    current = read_header(write_cxr(tmp_path / "current.dcm"))
    out = tmp_path / "cmp.dcm"
    res = cli("ask", "-m", str(tiny_model_dir), "--prior", str(tmp_path / "prior.dcm"), "--current",
              str(tmp_path / "current.dcm"), "--max-new-tokens", "2", "--sr", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert dciodvfy_errors(out) == []
    sr = hd.sr.srread(out)
    assert _image_refs(sr) == [prior.SOPInstanceUID, current.SOPInstanceUID]
    assert sr.StudyInstanceUID == current.StudyInstanceUID
    (other,) = sr.PertinentOtherEvidenceSequence
    assert other.StudyInstanceUID == prior.StudyInstanceUID
    (home,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert home.StudyInstanceUID == current.StudyInstanceUID


def test_sr_of_a_whole_slide_image_is_refused_in_one_line(tmp_path, cli):
    """A DICOM WSI folder with --sr: refused before any model loads (see docs/guides/dicom-results.md)."""
    (tmp_path / "slide").mkdir()
    ds = pydicom.dcmread(write_cxr(tmp_path / "cxr.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    ds.save_as(tmp_path / "slide" / "level0.dcm", enforce_file_format=True)
    res = cli("ask", "-m", str(tmp_path / "no-such-model"), "-i", str(tmp_path / "slide"), "Q?", "--sr",
              str(tmp_path / "o.dcm"))  # fmt: skip
    assert res.returncode != 0 and "whole-slide patches is not supported" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    with pytest.raises(BadInput, match="whole-slide patch"):
        evidence_for([{"source": "slide", "sop_instance_uid": None, "patch": [0, 0, 1]}])


def _findings(path: Path) -> list[list[str]]:
    """The instances each Finding of an SR cites, one list per answer."""
    sr = hd.sr.srread(path)
    return [
        [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in c.ContentSequence if i.ValueType == "IMAGE"]
        for c in sr.ContentSequence
        if c.ValueType == "TEXT" and c.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
    ]


def test_batch_sr_one_report_per_study_resumable(tiny_model_dir, tmp_path, cli):
    """Rows grouped by study: a CT series asked twice and a CXR give two SRs; a PNG row is a note, not a crash;
    --resume skips complete SRs and rewrites a study that gained a row."""
    from medgemma_toolkit.batch.sr import sr_path

    inp, files = sr_batch_rows(tmp_path, write_cxr)
    srs, out = tmp_path / "srs", tmp_path / "out.jsonl"
    base = ["batch", "-m", str(tiny_model_dir), "--input", str(inp), "-o", str(out), "--max-new-tokens", "2",
            "--sr", str(srs)]  # fmt: skip
    res = cli(*base)
    assert res.returncode == 0, res.stderr
    assert "wrote 2 SRs" in res.stdout and "no SR for this row" in res.stderr and "an SR needs a DICOM" in res.stderr
    assert len(out.read_text().splitlines()) == 4  # the PNG row is answered all the same
    ct_uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    ct_sr, cxr_sr = sr_path(srs, str(pydicom.dcmread(files[0]).StudyInstanceUID)), sr_path(srs, CXR_STUDY)
    assert sorted(srs.iterdir()) == sorted([ct_sr, cxr_sr])
    got = _findings(ct_sr)
    assert len(got) == 2 and sorted(got[0]) == sorted(ct_uids) and sorted(got[1]) == sorted(ct_uids[:2])
    assert _findings(cxr_sr) == [[read_header(tmp_path / "cxr.dcm").SOPInstanceUID]]
    assert hd.sr.srread(cxr_sr).StudyInstanceUID == CXR_STUDY
    assert dciodvfy_errors(ct_sr) == [] and dciodvfy_errors(cxr_sr) == []
    for value in FAKE_PHI.values():
        assert value not in res.stdout + res.stderr

    before = ct_sr.read_bytes()
    inp.write_text(inp.read_text() + json.dumps({"id": "e", "question": "Again?", "image": "cxr.dcm"}) + "\n")
    res = cli(*base, "--resume")
    assert res.returncode == 0, res.stderr
    assert "wrote 1 SRs" in res.stdout and "(1 studies already complete)" in res.stdout
    assert ct_sr.read_bytes() == before  # complete: untouched
    assert len(_findings(cxr_sr)) == 2  # the study that gained a row is written again, whole


def test_batch_sr_stow_stores_the_written_reports(pacs, pacs_creds, tiny_model_dir, tmp_path, cli):
    from dicomweb_client.api import DICOMwebClient

    ds = pydicom.dcmread(write_cxr(tmp_path / "cxr.dcm"))
    ds.StudyInstanceUID = CXR_STUDY + ".77"
    ds.save_as(tmp_path / "cxr.dcm", enforce_file_format=True)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "a", "question": "Q?", "image": "cxr.dcm"}) + "\n")
    res = cli("batch", "-m", str(tiny_model_dir), "--input", str(tmp_path / "rows.jsonl"), "-o",
              str(tmp_path / "out.jsonl"), "--max-new-tokens", "2", "--sr", str(tmp_path / "srs"),
              "--stow", f"{pacs}/dicom-web")  # fmt: skip
    assert res.returncode == 0, res.stderr
    (written,) = (tmp_path / "srs").iterdir()
    assert f"stored {written} on 127.0.0.1" in res.stderr
    client = DICOMwebClient(f"{pacs}/dicom-web")
    client._session.auth = (USER, PASSWORD)
    found = client.search_for_instances(ds.StudyInstanceUID, fields=["00080018"], search_filters={"Modality": "SR"})
    assert [f["00080018"]["Value"][0] for f in found] == [pydicom.dcmread(written).SOPInstanceUID]
    res = cli("batch", "-m", str(tmp_path / "nope"), "--input", str(tmp_path / "rows.jsonl"), "-o",
              str(tmp_path / "o2.jsonl"), "--stow", f"{pacs}/dicom-web")  # fmt: skip
    assert res.returncode != 0 and "give --sr DIR too" in res.stderr
