"""Structured reports and ECG annotations: the content tree stays valid, identifying leaves go, text is cleaned."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medgemma_toolkit.deid import deidentify_dataset, deidentify_path, findings
from medgemma_toolkit.testing import dciodvfy

TREE_FILES = ["test-SR.dcm", "reportsi.dcm", "reportsi_with_empty_number_tags.dcm", "waveform_ecg.dcm"]


def _texts(ds: Dataset) -> list[str]:
    return [str(e.value) for e in ds.iterall() if e.keyword == "TextValue"]


@pytest.mark.parametrize("name", TREE_FILES)
def test_corpus_trees_are_kept_valid(tmp_path, name):
    src = Path(get_testdata_file(name))
    out = tmp_path / name
    deidentify_path(src, out)
    before, after = pydicom.dcmread(src), pydicom.dcmread(out)
    assert len(_texts(after)) == len(_texts(before))
    if name == "test-SR.dcm":  # no identifier in its report text: kept word for word
        assert _texts(after) == _texts(before) and "A mass of" in _texts(after)
    for kw in ("ContentSequence", "WaveformAnnotationSequence"):
        if kw in before:
            assert len(list(after[kw].value)) == len(list(before[kw].value))
    assert dciodvfy.new_errors(src, out) == []
    assert findings(after) == []  # and it passes the strict check


def test_report_text_loses_the_files_identifiers_and_leaves_keep_their_kind():
    ds = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    ds.PatientName = "Quill^Rosalind"
    ds.PatientID = "MRN-4417"
    text, name, date, code, num = (Dataset() for _ in range(5))
    text.ValueType, text.TextValue = "TEXT", "Rosalind Quill (MRN-4417) seen 2023-04-01: nodule stable."
    name.ValueType, name.PersonName = "PNAME", "Quill^Rosalind"
    date.ValueType, date.Date = "DATE", "20230401"
    code.ValueType, code.ConceptCodeSequence = "CODE", [Dataset()]
    code.ConceptCodeSequence[0].CodeValue = "RID3875"
    num.ValueType, num.MeasuredValueSequence = "NUM", [Dataset()]
    num.MeasuredValueSequence[0].NumericValue = "12.5"
    for item in (text, name, date, code, num):
        item.RelationshipType = "CONTAINS"
    ds.ContentSequence = [text, name, date, code, num]
    rep = deidentify_dataset(ds)
    t, n, d, c, m = ds.ContentSequence
    assert "nodule stable" in t.TextValue
    assert not any(s in t.TextValue for s in ("Rosalind", "Quill", "4417", "2023"))
    assert n.PersonName == "ANONYMOUS" and d.Date == "19000101"
    assert c.ConceptCodeSequence[0].CodeValue == "RID3875" and m.MeasuredValueSequence[0].NumericValue == "12.5"
    assert "ContentSequence" in rep.cleaned and "TextValue" in rep.cleaned


def test_clean_structured_content_option_is_declared(tmp_path, cli):
    src = Path(get_testdata_file("test-SR.dcm"))
    r = cli("deid", str(src), str(tmp_path / "out") + "/", "--clean-structured-content")
    assert r.returncode == 0, r.stderr
    out = pydicom.dcmread(tmp_path / "out" / "test-SR.dcm")
    assert "113104" in {c.CodeValue for c in out.DeidentificationMethodCodeSequence}
    assert _texts(out) == _texts(pydicom.dcmread(src))
