"""Identifying data inside elements stored with explicit VR UN: decoded and de-identified at every depth."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from medgemma_toolkit.deid import deidentify_path, findings
from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, make_slice

PLANTED = {
    "PatientName": "Planted^Unity^Q",
    "PatientID": "UNPID-4471902",
    "StudyDate": "19870412",
    "AccessionNumber": "UNACC-99321",
    "InstitutionName": "Unseen Valley Clinic",
    "OperatorsName": "Opsworth^Olga",
    "StationName": "UNSTATION-88",
}
PRIVATE_CANARY = "UNPRIVATE-CANARY-7"


def _implicit_items(*items: Dataset) -> bytes:
    """Items of a sequence as PS3.5 6.2.2 stores them inside UN: implicit VR little endian, defined lengths."""
    out = b""
    for item in items:
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, True
        write_dataset(buf, item)
        body = buf.getvalue()
        out += b"\xfe\xff\x00\xe0" + len(body).to_bytes(4, "little") + body
    return out


def planted_un(path: Path) -> Path:
    """A CT slice whose identifying values sit two levels deep in sequences stored with explicit VR UN."""
    inner = Dataset()
    for k, v in PLANTED.items():
        setattr(inner, k, v)
    block = inner.private_block(0x0011, "PLANTED CREATOR", create=True)
    block.add_new(0x01, "LO", PRIVATE_CANARY)
    mid = Dataset()
    mid.ReferencedImageSequence = [inner]  # inside UN everything is implicit VR: a sequence two levels deep
    ds = make_slice(SeriesSpec(rows=8, cols=8), 0)
    old = pydicom.config.replace_un_with_known_vr
    pydicom.config.replace_un_with_known_vr = False  # else pydicom turns our UN back into the dictionary VR
    try:
        ds.add_new(0x00081115, "UN", _implicit_items(mid))  # ReferencedSeriesSequence (not in the table)
        ds.add_new(0x00081110, "UN", _implicit_items(mid))  # ReferencedStudySequence (in the table)
        ds.add_new(0x00081090, "UN", b"Model\x00")  # ManufacturerModelName: a plain value as UN
        ds.add_new(0x0018FFF0, "UN", b"no dictionary knows this")  # undecodable: must go
        ds.save_as(path, enforce_file_format=True)
    finally:
        pydicom.config.replace_un_with_known_vr = old
    return path


def test_planted_un_sequences_two_levels_deep_leave_nothing(tmp_path):
    src = planted_un(tmp_path / "un.dcm")
    raw = src.read_bytes()
    assert all(v.encode() in raw for v in [*PLANTED.values(), PRIVATE_CANARY])
    assert pydicom.dcmread(src).get_item(0x00081115).VR == "UN"  # really stored as UN
    out = tmp_path / "out.dcm"
    deidentify_path(src, out)
    data = out.read_bytes()
    assert [v for v in [*PLANTED.values(), PRIVATE_CANARY] if v.encode() in data] == []
    ds = pydicom.dcmread(out)
    assert ds.ReferencedSeriesSequence[0].ReferencedImageSequence  # decoded and kept, not dropped
    assert 0x0018FFF0 not in ds
    assert findings(ds) == []


@pytest.mark.parametrize("name", ["rtdose_rle.dcm"])
def test_corpus_files_with_un_keep_no_original_uid(tmp_path, name):
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file(name))
    before = pydicom.dcmread(src)
    uids = set()

    def collect(d: Dataset) -> None:
        for e in d:
            if e.VR == "SQ":
                for it in e.value:
                    collect(it)
            elif e.VR == "UI" and e.value and not str(e.value).startswith("1.2.840.10008."):
                uids.add(str(e.value))

    collect(before)
    out = tmp_path / name
    deidentify_path(src, out)
    data = out.read_bytes()
    assert uids and [u for u in uids if u.encode() in data] == []


def test_verify_lists_an_undecodable_un_element_by_tag(tmp_path):
    from pydicom.uid import ImplicitVRLittleEndian

    src = planted_un(tmp_path / "un.dcm")
    out = tmp_path / "out.dcm"
    deidentify_path(src, out)
    ds = pydicom.dcmread(out)
    ds.add_new(0x0018FFF0, "LO", "free text nobody decodes")  # in implicit VR: a tag no dictionary knows
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(tmp_path / "back.dcm", enforce_file_format=True)
    assert findings(pydicom.dcmread(tmp_path / "back.dcm")) == ["(0018,FFF0) (VR UN, not decodable)"]
