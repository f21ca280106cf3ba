"""The profile's options: each keeps (or cleans) exactly its column of Table E.1-1, and is recorded in CID 7050.

Oracles: the standard's rows (tests/data/deid/table_e1_1_rows.json has the Basic Profile column; the option
columns are checked on attributes whose meaning fixes the answer) and pydicom's copy of PS3.16 CID 7050.
"""

from __future__ import annotations

import datetime as dt
import json

import pydicom
from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr.codedict import codes
from test_deid_conformance import planted_ct

from medgemma_toolkit.testing.synthetic_dicom import FAKE_PHI, SeriesSpec, make_slice, write_series


def _codes(ds) -> set[str]:
    return {c.CodeValue for c in ds.DeidentificationMethodCodeSequence}


def _cid7050(name: str) -> str:
    assert name in cid_concepts[7050]["DCM"], name
    return getattr(codes.DCM, name).value


def test_each_option_keeps_its_column_and_is_recorded(tmp_path, cli):
    path, canaries, pixels = planted_ct(tmp_path / "in")
    src = pydicom.dcmread(path)
    cases = {
        "--retain-uids": ("RetainUidsOption", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]),
        "--retain-device-identity": ("RetainDeviceIdentityOption", ["DeviceSerialNumber", "StationName"]),
        "--retain-institution-identity": ("RetainInstitutionIdentityOption", ["InstitutionName", "InstitutionAddress"]),
        "--retain-patient-characteristics": (
            "RetainPatientCharacteristicsOption",
            ["PatientSex", "PatientAge", "PatientWeight", "PatientSize"],
        ),
        "--retain-full-dates": (
            "RetainLongitudinalTemporalInformationFullDatesOption",
            ["StudyDate", "SeriesDate", "AcquisitionDateTime", "StudyTime"],
        ),
    }
    for flag, (code_name, kept) in cases.items():
        out = tmp_path / flag.strip("-")
        r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(out), flag)
        assert r.returncode == 0, r.stderr
        ds = pydicom.dcmread(out / path.name)
        for kw in kept:
            assert ds[kw].value == src[kw].value, (flag, kw)
        assert ds.PatientName == "" and "PatientAddress" not in ds, flag  # the rest still follows the profile
        assert bytes(ds.PixelData) == pixels
        assert _codes(ds) == {_cid7050("BasicApplicationConfidentialityProfile"), _cid7050(code_name)}, flag
        report = json.loads((out / "deid_report.json").read_text())
        assert report["options"] == [flag.strip("-").replace("-", "_")]
        assert {c["CodeValue"] for c in report["method_codes"]} == _codes(ds)
    # Without options, every one of those attributes loses its value.
    r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "basic"))
    ds = pydicom.dcmread(tmp_path / "basic" / path.name)
    for _, kept in cases.values():
        for kw in kept:
            assert kw not in ds or ds[kw].value != src[kw].value, kw
    assert _codes(ds) == {"113100"} and ds.LongitudinalTemporalInformationModified == "REMOVED"


def _days(a: str, b: str) -> int:
    return (dt.datetime.strptime(b, "%Y%m%d") - dt.datetime.strptime(a, "%Y%m%d")).days


def test_modified_dates_one_shift_per_patient_keyed_like_uids(tmp_path, cli):
    key = tmp_path / "key.bin"
    key.write_bytes(b"0123456789abcdef-secret")
    paths = {}
    for name, patient in (("a1.dcm", "PAT-A"), ("a2.dcm", "PAT-A"), ("b1.dcm", "PAT-B")):
        paths[name], _, _ = planted_ct(tmp_path / "in", name, patient=patient)
    runs = []
    for run in ("r1", "r2"):
        r = cli(
            "deid",
            "--keep-file-names",
            str(tmp_path / "in"),
            str(tmp_path / run),
            "--retain-modified-dates",
            "--uid-key",
            str(key),
        )
        assert r.returncode == 0, r.stderr
        runs.append({n: pydicom.dcmread(tmp_path / run / n) for n in paths})
    src = {n: pydicom.dcmread(p) for n, p in paths.items()}
    shifts = {}
    for n in paths:
        out = runs[0][n]
        per_attr = {
            _days(src[n][kw].value, out[kw].value)
            for kw in ("StudyDate", "SeriesDate", "ContentDate", "AcquisitionDate")
        }
        dt_shift = _days(src[n].AcquisitionDateTime[:8], out.AcquisitionDateTime[:8])
        assert len(per_attr) == 1 and per_attr == {dt_shift}, n  # one shift for every date of the file
        assert out.AcquisitionDateTime[8:] == src[n].AcquisitionDateTime[8:]  # time of day kept
        shifts[n] = dt_shift
        assert out.PatientBirthDate == ""  # not in the option's column of Table E.1-1: still Z
        assert out.LongitudinalTemporalInformationModified == "MODIFIED"
        assert _cid7050("RetainLongitudinalTemporalInformationModifiedDatesOption") in _codes(out)
        assert runs[1][n].StudyDate == out.StudyDate  # the same key, the same shift
    assert shifts["a1.dcm"] == shifts["a2.dcm"] != 0
    assert shifts["b1.dcm"] != shifts["a1.dcm"]
    assert all(-3650 <= s <= -1 for s in shifts.values())
    r = cli(
        "deid",
        "--keep-file-names",
        str(tmp_path / "in"),
        str(tmp_path / "both"),
        "--retain-modified-dates",
        "--retain-full-dates",
    )
    assert r.returncode == 2 and "one of" in r.stderr


def test_clean_descriptors_takes_out_the_files_identifiers(tmp_path, cli):
    ds = make_slice(SeriesSpec(rows=8, cols=8), 0)
    ds.StudyDescription = f"CT CHEST for {FAKE_PHI['PatientName'].replace('^', ' ')} 2019-03-04"
    ds.SeriesDescription = f"AXIAL {FAKE_PHI['PatientID']} at {FAKE_PHI['InstitutionName']} call 555 867 5309"
    ds.ImageComments = "contact me at someone@example.org"
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "x.dcm", enforce_file_format=True)
    r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "out"), "--clean-descriptors")
    assert r.returncode == 0, r.stderr
    out = pydicom.dcmread(tmp_path / "out" / "x.dcm")
    assert out.StudyDescription.startswith("CT CHEST for") and "Doe" not in out.StudyDescription
    assert "Janet" not in out.StudyDescription and "2019" not in out.StudyDescription
    assert out.SeriesDescription.startswith("AXIAL") and "8675309" not in out.SeriesDescription
    assert "Springfield" not in out.SeriesDescription and "MRN" not in out.SeriesDescription
    assert "867" not in out.SeriesDescription and "03" not in out.StudyDescription
    assert "example.org" not in out.ImageComments
    assert _codes(out) == {"113100", _cid7050("CleanDescriptorsOption")}
    r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "basic"))
    assert "StudyDescription" not in pydicom.dcmread(tmp_path / "basic" / "x.dcm")


def test_retain_safe_private_keeps_only_the_listed_elements(tmp_path, cli):
    ds = make_slice(SeriesSpec(rows=8, cols=8), 0)
    safe = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    safe.add_new(0x27, "SH", "1.375:1")  # listed below
    safe.add_new(0x28, "LO", "not listed")
    other = ds.private_block(0x0029, "OTHER VENDOR", create=True)
    other.add_new(0x27, "SH", "same element, other creator")
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "x.dcm", enforce_file_format=True)
    listing = tmp_path / "safe.csv"
    listing.write_text("# creator,group,element\nGEMS_PARM_01,0043,27\n")
    r = cli(
        "deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "out"), "--retain-safe-private", str(listing)
    )
    assert r.returncode == 0, r.stderr
    out = pydicom.dcmread(tmp_path / "out" / "x.dcm")
    kept = [e for e in out if e.tag.is_private]
    assert [(int(e.tag), e.value) for e in kept] == [(0x00430010, "GEMS_PARM_01"), (0x00431027, "1.375:1")]
    assert _codes(out) == {"113100", _cid7050("RetainSafePrivateOption")}
    v = cli("deid", "--verify", str(tmp_path / "out"))  # strict: the Basic Profile keeps no private element
    assert v.returncode == 1 and "(0043,1027)" in v.stdout, v.stdout
    v = cli("deid", "--verify", str(tmp_path / "out"), "--trust-declared-options")
    assert v.returncode == 0, v.stdout
    listing.write_text("GEMS_PARM_01,0042,27\n")
    r = cli(
        "deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "bad"), "--retain-safe-private", str(listing)
    )
    assert r.returncode == 2 and "odd" in r.stderr


def test_uid_consistency_across_a_series_with_options_off(tmp_path, cli):
    paths = write_series(tmp_path / "in", SeriesSpec(slices=3, rows=8, cols=8))
    r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "out"))
    assert r.returncode == 0
    outs = [pydicom.dcmread(tmp_path / "out" / p.name) for p in paths]
    assert len({o.StudyInstanceUID for o in outs}) == 1 and len({o.FrameOfReferenceUID for o in outs}) == 1
    assert all(o.StudyInstanceUID.startswith("2.25.") for o in outs)
