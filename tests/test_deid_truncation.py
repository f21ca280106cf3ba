"""Inputs without pixels cut short: refused with nothing written (a cut at an element boundary parses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file


@pytest.mark.parametrize(
    ("name", "cut"),
    [
        ("rtstruct.dcm", 200),  # 11 of 34 elements, ends on an element boundary
        ("rtplan.dcm", 668),
        ("rtstruct.dcm", 855),  # one byte after a sequence's delimiter: a partial element header
        ("rtplan.dcm", 2000),  # inside a sequence
    ],
)
def test_cut_rt_objects_are_refused(tmp_path, cli, name, cut):
    data = Path(get_testdata_file(name)).read_bytes()
    src = tmp_path / name
    src.write_bytes(data[:cut])
    r = cli("deid", str(src), str(tmp_path / "out") + "/")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "failed 1" in r.stdout and not (tmp_path / "out" / name).exists()
    report = json.loads((tmp_path / "out" / f"{name}.deid.json").read_text())
    assert "truncated" in report["files"][0]["error"]


@pytest.mark.parametrize("name", ["rtstruct.dcm", "rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"])
def test_whole_objects_without_pixels_pass(tmp_path, cli, name):
    src = Path(get_testdata_file(name))
    r = cli("deid", str(src), str(tmp_path / "out") + "/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "out" / name).exists()
