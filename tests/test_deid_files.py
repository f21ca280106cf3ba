"""De-identifying files: broken inputs are errors with nothing written, output naming, atomic writes, burned-in."""

from __future__ import annotations

import json
from io import BytesIO

import pydicom
from pydicom.uid import RLELossless

from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, make_slice, write_series


def _bytes(ds) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _pixel_offset(data: bytes) -> int:
    return data.rindex(b"\xe0\x7f\x10\x00")  # (7FE0,0010), little endian


def test_truncated_and_tiny_files_fail_and_write_nothing(tmp_path, cli):
    src = tmp_path / "in"
    write_series(src, SeriesSpec(slices=2, rows=64, cols=64))
    good = (src / sorted(p.name for p in src.iterdir())[0]).read_bytes()
    pix = _pixel_offset(good)
    (src / "cut_pixels.dcm").write_bytes(good[: pix + 12 + 5000])  # 5,000 of 8,192 pixel bytes
    (src / "cut_header_mid.dcm").write_bytes(good[: pix - 7])  # inside an element before the pixels
    boundary = good[:pix]  # the header ends exactly before Pixel Data: pydicom reads it without complaint
    (src / "cut_header_boundary.dcm").write_bytes(boundary)
    (src / "tiny.dcm").write_bytes(good[:100])
    (src / "notes.txt").write_text("not a DICOM file")
    r = cli("deid", "--keep-file-names", str(src), str(tmp_path / "out"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "de-identified 2 file(s)" in r.stdout and "failed 4" in r.stdout and "skipped 1" in r.stdout
    assert r.stderr.startswith("error: 4 DICOM file(s) failed")
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 3 and "deid_report.json" in written
    for name in ("cut_pixels.dcm", "cut_header_mid.dcm", "cut_header_boundary.dcm", "tiny.dcm"):
        assert not (tmp_path / "out" / name).exists(), name
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    report = json.loads((tmp_path / "out" / "deid_report.json").read_text())
    errors = {f["file"]: f["error"] for f in report["files"] if "error" in f}
    assert set(errors) == {"cut_pixels.dcm", "cut_header_mid.dcm", "cut_header_boundary.dcm", "tiny.dcm"}
    assert "truncated pixel data" in errors["cut_pixels.dcm"] and "5,000 of 8,192" in errors["cut_pixels.dcm"]
    assert report["files_failed"] == 4 and report["files_written"] == 2


def test_a_single_truncated_file_is_an_error_with_no_output(tmp_path, cli):
    ds = make_slice(SeriesSpec(rows=32, cols=32), 0)
    data = _bytes(ds)
    (tmp_path / "a.dcm").write_bytes(data[:-100])
    r = cli("deid", "--keep-file-names", str(tmp_path / "a.dcm"), str(tmp_path / "out") + "/")
    assert r.returncode == 2 and "failed 1" in r.stdout
    assert not (tmp_path / "out" / "a.dcm").exists()


def test_truncated_encapsulated_pixel_data(tmp_path, cli):
    ds = make_slice(SeriesSpec(rows=32, cols=32), 0)
    from pydicom.pixels import compress

    compress(ds, RLELossless, encoding_plugin="pydicom")
    data = _bytes(ds)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ok.dcm").write_bytes(data)
    (tmp_path / "in" / "cut.dcm").write_bytes(data[:-40])
    r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "out"))
    assert r.returncode == 2 and "de-identified 1 file(s)" in r.stdout and "failed 1" in r.stdout
    assert (tmp_path / "out" / "ok.dcm").exists() and not (tmp_path / "out" / "cut.dcm").exists()
    out = pydicom.dcmread(tmp_path / "out" / "ok.dcm")
    assert out.PixelData == ds.PixelData and out.file_meta.TransferSyntaxUID == RLELossless


def test_output_naming_for_one_file(tmp_path, cli):
    paths = write_series(tmp_path / "in", SeriesSpec(slices=1, rows=8, cols=8))
    one = paths[0]
    # OUT with a trailing slash that does not exist: a directory is created, the file keeps its name.
    r = cli("deid", "--keep-file-names", str(one), str(tmp_path / "newdir") + "/")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "newdir").is_dir() and (tmp_path / "newdir" / one.name).is_file()
    assert (tmp_path / "newdir" / (one.name + ".deid.json")).is_file()
    # An existing directory without the slash: the same.
    (tmp_path / "existing").mkdir()
    r = cli("deid", "--keep-file-names", str(one), str(tmp_path / "existing"))
    assert r.returncode == 0 and (tmp_path / "existing" / one.name).is_file()
    # Anything else is the output file's own path.
    r = cli("deid", "--keep-file-names", str(one), str(tmp_path / "renamed.dcm"))
    assert r.returncode == 0 and pydicom.dcmread(tmp_path / "renamed.dcm").PatientName == ""
    r = cli("deid", "--keep-file-names", str(one), str(tmp_path / "renamed.dcm"))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    # A directory IN needs a directory OUT.
    r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "renamed.dcm"))
    assert r.returncode == 2 and "is a file" in r.stderr


def test_reject_burned_in(tmp_path, cli):
    src = tmp_path / "in"
    src.mkdir()
    us = make_slice(SeriesSpec(rows=8, cols=8), 0)
    us.Modality = "US"
    del us.BurnedInAnnotation
    us.save_as(src / "us.dcm", enforce_file_format=True)
    ct = make_slice(SeriesSpec(rows=8, cols=8), 1)
    del ct.BurnedInAnnotation  # absent, but CT rarely carries text: kept (with the warning)
    ct.save_as(src / "ct.dcm", enforce_file_format=True)
    marked = make_slice(SeriesSpec(rows=8, cols=8), 2)
    marked.BurnedInAnnotation = "YES"
    marked.save_as(src / "marked.dcm", enforce_file_format=True)
    clean_us = make_slice(SeriesSpec(rows=8, cols=8), 3)
    clean_us.Modality, clean_us.BurnedInAnnotation = "US", "NO"
    clean_us.save_as(src / "us_clean.dcm", enforce_file_format=True)
    r = cli("deid", "--keep-file-names", str(src), str(tmp_path / "out"), "--reject-burned-in")
    assert r.returncode == 0, r.stderr
    assert "rejected 2 (burned-in)" in r.stdout and "de-identified 2 file(s)" in r.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ct.dcm", "deid_report.json", "us_clean.dcm"]
    report = json.loads((tmp_path / "out" / "deid_report.json").read_text())
    assert {f["file"] for f in report["files"] if "rejected" in f} == {"us.dcm", "marked.dcm"}
    r = cli("deid", "--keep-file-names", str(src), str(tmp_path / "out2"))
    assert r.returncode == 0 and "de-identified 4 file(s)" in r.stdout


def test_verify_exit_codes_and_errors(tmp_path, cli):
    write_series(tmp_path / "in", SeriesSpec(slices=2, rows=8, cols=8))
    r = cli("deid", "--verify", str(tmp_path / "in"))
    assert r.returncode == 1 and "PatientName" in r.stdout and "PatientIdentityRemoved" in r.stdout
    assert "Doe" not in r.stdout
    cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "out"))
    r = cli("deid", "--verify", str(tmp_path / "out"))
    assert r.returncode == 0 and "verified 2 DICOM file(s): 0 with" in r.stdout
    r = cli("deid", "--verify", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and r.stderr.startswith("error: ")


def test_a_dicomdir_is_deidentified_with_its_records(tmp_path, cli):
    from pydicom.fileset import FileSet

    write_series(tmp_path / "series", SeriesSpec(slices=2, rows=8, cols=8))
    fs = FileSet()
    for p in sorted((tmp_path / "series").iterdir()):
        ds = pydicom.dcmread(p)
        ds.SeriesNumber = 1
        fs.add(ds)
    fs.write(tmp_path / "media")
    r = cli("deid", "--keep-file-names", str(tmp_path / "media"), str(tmp_path / "out"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "de-identified 3 file(s)" in r.stdout
    data = (tmp_path / "out" / "DICOMDIR").read_bytes()
    assert b"Doe" not in data and b"MRN-8675309" not in data
    out_dir = pydicom.dcmread(tmp_path / "out" / "DICOMDIR")
    images = [
        f
        for f in (tmp_path / "out").rglob("*")
        if f.is_file() and f.name != "DICOMDIR" and not f.name.endswith(".json")
    ]
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in images}
    refs = {
        rec.ReferencedSOPInstanceUIDInFile
        for rec in out_dir.DirectoryRecordSequence
        if "ReferencedSOPInstanceUIDInFile" in rec
    }
    assert refs == uids and len(uids) == 2
    from pydicom.fileset import FileSet as Reader

    media = Reader(out_dir)  # the records' byte offsets were rewritten: pydicom follows them
    assert len(media) == 2 and {i.SOPInstanceUID for i in media} == uids
