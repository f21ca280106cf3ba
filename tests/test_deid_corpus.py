"""A corpus nobody here wrote: pydicom's test files and PyPI pydicom-data (SR, RT, ECG, DICOMDIR, deflated,
compressed, multi-frame, UN). Every output parses, keeps no input identifying value at its path, keeps its pixels
byte for byte, and gains no dciodvfy error."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pydicom
import pytest

from medgemma_toolkit.deid import deidentify_path, table
from medgemma_toolkit.imaging.deflate import PIXEL_TAGS
from medgemma_toolkit.testing import dciodvfy

DUMMIES = {"ANONYMOUS", "ANONYMIZED", "0", "000000", "19000101"}  # ours: an input already holding one is no leak


def _roots() -> list[Path]:
    import pydicom.data

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store  # PyPI pydicom-data

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return roots


def _identifying(ds, path: str = "") -> dict[str, str]:
    """Path -> value of every element the table does not keep (and every person name), at every depth."""
    rows = table().rows
    out: dict[str, str] = {}
    for elem in ds:
        tag = int(elem.tag)
        where = f"{path}{tag:08X}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                out.update(_identifying(item, f"{where}[{i}]."))
            continue
        row = rows.get(tag)
        identifying = elem.VR == "PN" or (row is not None and row.basic not in ("K", "C"))
        if identifying and elem.value not in (None, "", b"") and not isinstance(elem.value, bytes):
            out[where] = str(elem.value)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[tuple[Path, Path]]:
    """(input, output) of every file written, for each root de-identified as a tree."""
    pairs = []
    for n, root in enumerate(_roots()):
        out = tmp_path_factory.mktemp(f"corpus{n}")
        rep = deidentify_path(root, out, overwrite=True, rename_files=False)
        for entry in json.loads(Path(rep["report_path"]).read_text())["files"]:
            if "error" not in entry and "skipped" not in entry:
                pairs.append((root / entry["file"], out / entry["file"]))
    return pairs


def test_corpus_outputs_parse_and_keep_nothing_identifying(corpus):
    assert len(corpus) >= 100
    leaks = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for src, out in corpus:
            before, after = pydicom.dcmread(src, force=True), pydicom.dcmread(out, force=True)
            assert after.PatientIdentityRemoved == "YES"
            kept = _identifying(after)
            for where, value in _identifying(before).items():
                if kept.get(where) == value and value.strip(" \x00") not in DUMMIES:
                    leaks.append(f"{src.name}:{where}")
            for tag in PIXEL_TAGS:
                if tag in before:
                    assert after[tag].value == before[tag].value, src.name
    assert leaks == []


def test_corpus_outputs_gain_no_dciodvfy_errors(corpus):
    new = {}
    for src, out in corpus:
        errors = dciodvfy.new_errors(src, out)
        if errors:
            new[src.name] = errors
    assert new == {}, json.dumps(new, indent=1)
