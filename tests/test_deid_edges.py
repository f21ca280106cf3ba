"""Smaller edges: 4:2:2 sizes, leftovers of killed runs, pydicom's warnings, unwritable outputs."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, write_series


def test_a_valid_ybr_full_422_file_is_not_called_truncated(tmp_path, cli):
    src = Path(get_testdata_file("SC_ybr_full_422_uncompressed.dcm"))
    r = cli("deid", str(src), str(tmp_path / "out.dcm"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert pydicom.dcmread(tmp_path / "out.dcm").PixelData == pydicom.dcmread(src).PixelData


def test_a_rerun_removes_what_a_killed_run_left(tmp_path, cli):
    write_series(tmp_path / "in", SeriesSpec(slices=1, rows=8, cols=8))
    name = next((tmp_path / "in").iterdir()).name
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{name}.424242.tmp").write_bytes(b"half a file")  # what kill -9 leaves
    (out / ".deid_report.json.424242.tmp").write_text("{")
    r = cli("deid", "--keep-file-names", "--overwrite", str(tmp_path / "in"), str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([name, "deid_report.json"])


def test_pydicom_warnings_do_not_print_input_uids(tmp_path, cli):
    src = Path(get_testdata_file("rtdose_rle.dcm"))  # pydicom warns about an invalid UI value, quoting it
    r = cli("deid", str(src), str(tmp_path / "out.dcm"))
    assert r.returncode == 0, r.stderr
    assert "1.2.123.456.78.9" not in r.stdout + r.stderr
    r = cli("deid", "--verify", str(src.parent))
    assert "1.2.123.456.78.9" not in r.stdout + r.stderr


def test_an_unwritable_output_is_a_one_line_error(tmp_path, cli):
    write_series(tmp_path / "in", SeriesSpec(slices=1, rows=8, cols=8))
    r = cli("deid", str(tmp_path / "in"), "/proc/self/deid-out")  # not writable, even for root
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr


def test_clean_descriptors_takes_other_names_and_places_but_not_technical_numbers():
    from medgemma_toolkit.deid.clean import Scrubber

    scrub = Scrubber({"Doe", "Janet"})
    out = scrub("Seen by Dr. Gregory House at Princeton-Plainsboro Teaching Hospital, JPEG 2000 lossless, CT 2019")
    for gone in ("Gregory", "House", "Princeton", "Plainsboro", "2019"):
        assert gone not in out, gone
    assert "JPEG 2000" in out and out.startswith("Seen by Dr.") and "Hospital" in out
    assert scrub("Mayo Clinic follow-up, born 1961") == "* Clinic follow-up, born *"
