"""`deid --verify` is strict: declared options do not excuse what the Basic Profile forbids (unless trusted)."""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset

from medgemma_toolkit.deid import OPTION_CODES, deidentify_path, findings
from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, write_series

REAL = {"InstitutionName": "Lakeside Memorial", "StudyDate": "20240311", "DeviceSerialNumber": "SN-77123"}
NESTED = {"OperatorsName": "Brown^Bea", "InstitutionName": "Lakeside Memorial", "StationName": "CT-LAKE-2"}


def _liar(tmp_path):
    """Our own output, then values put back while the file declares seven options (all but Retain Safe Private)."""
    write_series(tmp_path / "in", SeriesSpec(slices=1, rows=8, cols=8))
    deidentify_path(tmp_path / "in", tmp_path / "clean")
    path = next((tmp_path / "clean").glob("*.dcm"))
    ds = pydicom.dcmread(path)
    for k, v in REAL.items():
        setattr(ds, k, v)
    ds.add_new(0x00291010, "LO", "orphan")  # a private element with no (0029,0010) creator
    inner = Dataset()
    for k, v in NESTED.items():
        setattr(inner, k, v)
    inner.PatientID = "PID-55501"
    mid = Dataset()
    mid.ReferencedImageSequence = [inner]
    ds.ReferencedSeriesSequence = [mid]
    codes = []
    for name, (value, meaning) in OPTION_CODES.items():
        if name in ("retain_safe_private", "retain_full_dates"):  # seven codes: full and modified dates exclude
            continue
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, "DCM", meaning
        codes.append(c)
    ds.DeidentificationMethodCodeSequence = list(ds.DeidentificationMethodCodeSequence) + codes
    ds.save_as(path)
    return tmp_path / "clean", path


def test_a_file_claiming_options_it_does_not_honour_is_flagged(tmp_path, cli):
    root, path = _liar(tmp_path)
    r = cli("deid", "--verify", str(root))
    assert r.returncode == 1
    line = next(x for x in r.stdout.splitlines() if x.startswith(path.name))
    for name in ("InstitutionName", "StudyDate", "DeviceSerialNumber", "(0029,1010)"):
        assert name in line, name
    nested = "ReferencedSeriesSequence[0].ReferencedImageSequence[0]."
    for name in ("OperatorsName", "InstitutionName", "StationName", "PatientID"):
        assert nested + name in line, name
    assert "value not recognised as a dummy" in line
    for value in [*REAL.values(), *NESTED.values(), "PID-55501", "orphan"]:
        assert value not in r.stdout + r.stderr  # names only, never values
    # Trusting the declarations relaxes only what they excuse: the orphan private element is still flagged.
    r = cli("deid", "--verify", str(root), "--trust-declared-options")
    assert r.returncode == 1 and "(0029,1010) (private element without its creator)" in r.stdout


def test_our_output_passes_strict_verify_and_a_real_value_in_a_dummy_slot_does_not(tmp_path):
    write_series(tmp_path / "in", SeriesSpec(slices=1, rows=8, cols=8))
    deidentify_path(tmp_path / "in", tmp_path / "out")
    ds = pydicom.dcmread(next((tmp_path / "out").glob("*.dcm")))
    assert findings(ds) == []
    inner = Dataset()
    inner.OperatorsName = "ANONYMOUS"  # our dummy: accepted
    inner.StationName = "XXXX"  # an obvious placeholder: accepted
    ds.ReferencedSeriesSequence = [inner]
    assert findings(ds) == []
    inner.StationName = "CT-LAKE-2"
    assert findings(ds) == ["ReferencedSeriesSequence[0].StationName (present, value not recognised as a dummy)"]
