"""De-identification with the PS3.15 Annex E Basic Profile: every table attribute, UIDs, private tags, pixels."""

from __future__ import annotations

import json

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medgemma_toolkit.deid import deidentify_dataset, deidentify_path, safe_header
from medgemma_toolkit.imaging import ImageOptions, load_parts
from medgemma_toolkit.testing.synthetic_dicom import FAKE_PHI, SeriesSpec, make_slice, write_series


def test_uids_consistent_within_run_and_references_follow(tmp_path):
    spec = SeriesSpec(slices=3, rows=8, cols=8)
    src = tmp_path / "in"
    paths = write_series(src, spec)
    a = pydicom.dcmread(paths[0])
    b = pydicom.dcmread(paths[1])
    ref = Dataset()
    ref.ReferencedSOPClassUID = a.SOPClassUID
    ref.ReferencedSOPInstanceUID = a.SOPInstanceUID
    series = Dataset()  # a sequence the table does not list: its items still get the table (UIDs replaced)
    series.SeriesInstanceUID = a.SeriesInstanceUID
    series.ReferencedInstanceSequence = [ref]
    b.ReferencedSeriesSequence = [series]
    b.SourceImageSequence = [ref]  # X/Z/U*, type 3 in the CT Image IOD: removed
    b.save_as(paths[1])
    deidentify_path(src, tmp_path / "out", rename_files=False)
    outs = [pydicom.dcmread(tmp_path / "out" / p.name) for p in paths]
    assert len({o.StudyInstanceUID for o in outs}) == 1 and len({o.SeriesInstanceUID for o in outs}) == 1
    assert len({o.SOPInstanceUID for o in outs}) == 3
    assert outs[0].StudyInstanceUID != a.StudyInstanceUID
    for o in outs:
        assert o.file_meta.MediaStorageSOPInstanceUID == o.SOPInstanceUID
        assert o.SOPClassUID == a.SOPClassUID
    nested = outs[1].ReferencedSeriesSequence[0]
    assert nested.SeriesInstanceUID == outs[0].SeriesInstanceUID
    assert nested.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == outs[0].SOPInstanceUID
    assert nested.ReferencedInstanceSequence[0].ReferencedSOPClassUID == a.SOPClassUID
    assert "SourceImageSequence" not in outs[1]
    # A second run maps differently (not linkable across runs).
    deidentify_path(src, tmp_path / "out2", rename_files=False)
    again = pydicom.dcmread(tmp_path / "out2" / paths[0].name)
    assert again.StudyInstanceUID != outs[0].StudyInstanceUID


def test_pixels_kept_and_volume_identical(tmp_path):
    write_series(tmp_path / "in", SeriesSpec(slices=5, rows=16, cols=16))
    deidentify_path(tmp_path / "in", tmp_path / "out", rename_files=False)
    before = load_parts(str(tmp_path / "in"), ImageOptions(), 16)
    after = load_parts(str(tmp_path / "out" / "*.dcm"), ImageOptions(), 16)
    assert len(before) == len(after) == 10
    for x, y in zip(before, after):
        if hasattr(x, "image"):
            np.testing.assert_array_equal(np.asarray(x.image), np.asarray(y.image))


def test_burned_in_annotation_warnings():
    ds = make_slice(SeriesSpec(rows=8, cols=8), 0)
    assert deidentify_dataset(ds).warnings == []
    ds = make_slice(SeriesSpec(rows=8, cols=8), 0)
    ds.BurnedInAnnotation = "YES"
    assert "YES" in deidentify_dataset(ds).warnings[0]
    ds = make_slice(SeriesSpec(rows=8, cols=8), 0)
    del ds.BurnedInAnnotation
    assert "unknown" in deidentify_dataset(ds).warnings[0]


def test_safe_header_is_the_way_to_show_values():
    ds = make_slice(SeriesSpec(rows=8, cols=8), 0)
    out = safe_header(ds, ["Modality", "PatientID", "PatientName", "InstitutionName", "Rows"])
    assert out == {
        "Modality": "CT",
        "PatientID": "",
        "PatientName": "",
        "InstitutionName": "",
        "Rows": "8",
    }  # X/Z/D, type 3 in CT: removed
    assert ds.PatientID == FAKE_PHI["PatientID"]  # the caller's dataset is untouched


def test_cli_deid_directory_report_has_no_values(tmp_path, cli):
    src = tmp_path / "study"
    write_series(src / "series1", SeriesSpec(slices=3, rows=8, cols=8))
    burned = make_slice(SeriesSpec(rows=8, cols=8), 7)
    burned.BurnedInAnnotation = "YES"
    burned.save_as(src / "series1" / "burned.dcm", enforce_file_format=True)
    (src / "notes.txt").write_text("Doe^Janet was here")
    r = cli("deid", "--keep-file-names", str(src), str(tmp_path / "clean"))
    assert r.returncode == 0, r.stderr
    assert "de-identified 4 file(s)" in r.stdout and "skipped 1 (not DICOM)" in r.stdout and "failed 0" in r.stdout
    assert "burned into the pixels" in r.stderr
    report_text = (tmp_path / "clean" / "deid_report.json").read_text()
    report = json.loads(report_text)
    assert report["files_written"] == 4 and report["files_skipped"] == 1 and report["files_failed"] == 0
    assert {"file": "notes.txt", "skipped": "not DICOM"} in report["files"]
    assert "PatientName" in next(f for f in report["files"] if f["file"].endswith(".dcm"))["emptied"]
    assert "Table E.1-1" in report["table"] and report["method_codes"][0]["CodeValue"] == "113100"
    for value in FAKE_PHI.values():
        assert value not in report_text and value not in r.stdout + r.stderr
    for f in (tmp_path / "clean" / "series1").iterdir():
        data = f.read_bytes()
        assert all(v.encode() not in data for v in FAKE_PHI.values())
    assert not (tmp_path / "clean" / "notes.txt").exists()


def test_cli_deid_errors(tmp_path, cli):
    write_series(tmp_path / "in", SeriesSpec(slices=2, rows=8, cols=8))
    r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "in" / "sub"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "inside" in r.stderr
    r = cli("deid", "--keep-file-names", str(tmp_path / "missing"), str(tmp_path / "o"))
    assert r.returncode == 2 and "not found" in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "full"))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("hello")
    r = cli("deid", "--keep-file-names", str(tmp_path / "txt"), str(tmp_path / "o2"))
    assert r.returncode == 2 and "no DICOM files" in r.stderr
    # A single file.
    one = next((tmp_path / "in").iterdir())
    r = cli("deid", "--keep-file-names", str(one), str(tmp_path / "one.dcm"))
    assert r.returncode == 0, r.stderr
    assert pydicom.dcmread(tmp_path / "one.dcm").PatientName == ""
    assert (tmp_path / "one.dcm.deid.json").is_file()


def test_uid_key_links_runs_only_when_given(tmp_path, cli):
    paths = write_series(tmp_path / "in", SeriesSpec(slices=2, rows=8, cols=8))
    key = tmp_path / "key.bin"
    key.write_bytes(b"k" * 32)
    outs = []
    for run in ("a", "b"):
        r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / run), "--uid-key", str(key))
        assert r.returncode == 0, r.stderr
        outs.append(pydicom.dcmread(tmp_path / run / paths[0].name).StudyInstanceUID)
    assert outs[0] == outs[1] and outs[0].startswith("2.25.")
    key.write_bytes(b"short")
    r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "c"), "--uid-key", str(key))
    assert r.returncode == 2 and "16 bytes" in r.stderr


def test_deflate_bomb_is_corrupt_and_never_inflated(tmp_path):
    """A 0.5 MB deflated file whose pixel element inflates to 512 MiB: refused, nothing written, and the reading
    process's peak memory grows by far less than pydicom's whole-stream inflation would take (~1 GiB)."""
    import subprocess
    import sys

    from medgemma_toolkit.testing.hostile import deflate_bomb

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "bomb.dcm").write_bytes(deflate_bomb(512))
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from medgemma_toolkit.deid.read import Corrupt, read_checked\n"
        "def hwm():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        "before = hwm()\n"
        "try:\n"
        "    read_checked(Path(sys.argv[1]))\n"
        "    print('read')\n"
        "except Corrupt as e:\n"
        "    print('corrupt', hwm() - before)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, str(src / "bomb.dcm")], capture_output=True, text=True, timeout=300
    )
    verdict, grew_kib = r.stdout.split()
    assert verdict == "corrupt" and int(grew_kib) < 200 * 1024, r.stdout + r.stderr
    res = deidentify_path(src, out, rename_files=False)
    assert not list(out.rglob("*.dcm"))
    assert res["files_failed"] == 1 and res["files_written"] == 0
