"""A DICOMDIR with several patients: records shifted with their patient, refused files' records dropped, Type 1
keys kept valid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.fileset import FileSet

from medgemma_toolkit.deid import findings
from medgemma_toolkit.testing import dciodvfy


def _media(tmp_path: Path) -> Path:
    """pydicom's DICOMDIR test media (2 patients, 31 instances), one referenced file truncated."""
    src = Path(get_testdata_file("DICOMDIR")).parent
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(src / "DICOMDIR", media / "DICOMDIR")
    for d in ("77654033", "98892001", "98892003"):
        shutil.copytree(src / d, media / d)
    cut = media / "77654033" / "CR1" / "6154"
    cut.write_bytes(cut.read_bytes()[:1000])
    return media


def test_dicomdir_records_follow_their_instances(tmp_path, cli):
    media = _media(tmp_path)
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    r = cli("deid", str(media), str(tmp_path / "out"), "--retain-modified-dates", "--uid-key", str(key))
    assert r.returncode == 2 and "failed 1" in r.stdout, r.stdout + r.stderr
    out = tmp_path / "out" / "DICOMDIR"
    fs = FileSet(pydicom.dcmread(out))
    assert len(fs) == 30  # the truncated file's record is gone, the others still resolve
    for inst in fs:
        ds = inst.load()
        study = inst.node.parent.parent._record
        assert study.StudyDate == ds.StudyDate  # shifted with the instance's patient, not the DICOMDIR's
    before = pydicom.dcmread(media / "DICOMDIR")
    dates = {r.StudyDate for r in before.DirectoryRecordSequence if r.DirectoryRecordType == "STUDY"}
    after = pydicom.dcmread(out)
    assert not dates & {r.StudyDate for r in after.DirectoryRecordSequence if r.DirectoryRecordType == "STUDY"}
    old = [r.PatientID for r in before.DirectoryRecordSequence if r.DirectoryRecordType == "PATIENT"]
    ids = [r.PatientID for r in after.DirectoryRecordSequence if r.DirectoryRecordType == "PATIENT"]
    assert len(set(ids)) == len(ids) == len(set(old)) == 2 and not set(old) & set(ids)  # two patients, pseudonyms
    assert dciodvfy.new_errors(media / "DICOMDIR", out) == []
    assert findings(after, trust_declared_options=True) == []
    # Folder names were patient IDs: the tree and the file IDs use keyed stand-ins (--rename-files, on for trees).
    names = {p.name for p in (tmp_path / "out").rglob("*")}
    data = out.read_bytes() + (tmp_path / "out" / "deid_report.json").read_bytes()
    for pid in ("77654033", "98892001", "98892003", "CR1", "6154"):
        assert pid not in names and pid.encode() not in data
    report = json.loads((tmp_path / "out" / "deid_report.json").read_text())
    entry = next(e for e in report["files"] if e["file"].endswith("DICOMDIR"))
    assert "1 directory record(s) of files not written were dropped" in entry["warnings"]
