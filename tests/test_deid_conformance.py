"""Conformance with PS3.15 Table E.1-1, checked against the standard's rows, not against our engine's table.

The oracle is tests/data/deid/table_e1_1_rows.json (the standard's rows as innolitics/dicom-standard parsed them,
edition 2024b, plus the rows new in 2026c; sources in the file) and pydicom's data dictionary for VRs. A CT file gets a unique canary in every attribute of
the table that pydicom knows a VR for, at the top level and two sequences deep inside sequences the table does not
list, plus private, curve and overlay data and file meta AE titles; after `medgemma deid` no canary may be left
anywhere in the output bytes, and the pixels must be byte-identical.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset

from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, make_slice

ROWS = json.loads((Path(__file__).parent / "data" / "deid" / "table_e1_1_rows.json").read_text())["rows"]
BINARY_NUMERIC = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"}


def single_tag_rows() -> list[tuple[int, str]]:
    """(tag, basic action) for every single-tag row pydicom knows, outside the command and file meta groups."""
    out = []
    for r in ROWS:
        raw = r["tag"].strip("()").replace(",", "")
        if len(raw) != 8 or "X" in raw.upper() or not all(c in "0123456789ABCDEFabcdef" for c in raw):
            continue
        tag = int(raw, 16)
        if tag >> 16 in (0x0000, 0x0002):
            continue
        try:
            dictionary_VR(tag)
        except KeyError:
            continue
        out.append((tag, r["basicProfile"]))
    return out


class Canaries:
    """Unique, greppable values, one per (attribute, place)."""

    def __init__(self) -> None:
        self.text: dict[bytes, str] = {}  # canary bytes -> where it was planted (for messages)
        self.numeric: list[tuple[tuple[int, ...], int, object]] = []  # (sequence path, tag, value)
        self.n = 0

    def value(self, tag: int, vr: str, where: str):
        self.n += 1
        n = self.n
        import datetime as dt

        day = (dt.date(1702, 1, 1) + dt.timedelta(days=n * 3)).strftime("%Y%m%d")
        v: object
        if vr in ("DA",):
            v = day
        elif vr == "DT":
            v = day + f"0102{n % 60:02d}.{n:06d}"
        elif vr == "TM":
            v = f"2259{n % 60:02d}.{n:06d}"
        elif vr == "UI":
            v = f"1.2.3.999.{1000 + n}.7"
        elif vr == "IS":
            v = f"3141592{n:04d}"
        elif vr == "DS":
            v = f"2718281.{n:04d}"
        elif vr == "AS":
            v = f"{n % 1000:03d}W"
        elif vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
            v = f"QZOB{n:05d}".encode() + (b"\x00" if (len(f"QZOB{n:05d}") % 2) else b"")
            self.text[v.rstrip(b"\x00")] = where
            return v
        elif vr in BINARY_NUMERIC:
            v = 0.5 + n if vr in ("FL", "FD") else 4000 + n % 1000
            return v
        elif vr == "AE":
            v = f"QZAE{n:05d}"
        elif vr == "CS":
            v = f"QZCS{n:05d}"
        else:
            v = f"QZTX{n:05d}^QZ{n:05d}" if vr == "PN" else f"QZTX{n:05d}"
        self.text[str(v).encode()] = where
        return v


def _vr(tag: int) -> str:
    vr = dictionary_VR(tag)
    return {"OB or OW": "OB", "US or SS": "US", "US or OW": "US", "US or SS or OW": "US"}.get(vr, vr)


def fill(ds: Dataset, canaries: Canaries, place: str, rows: list[tuple[int, str]]) -> None:
    """Every table attribute into `ds` with a canary (sequences get one item holding canaries of their own)."""
    for tag, _ in rows:
        vr = _vr(tag)
        where = f"{place}{keyword_for_tag(tag) or hex(tag)}"
        if vr == "SQ":
            item = Dataset()
            item.PatientName = canaries.value(0x00100010, "PN", where + ".PatientName")
            item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            item.ReferencedSOPInstanceUID = canaries.value(0x00081155, "UI", where + ".ReferencedSOPInstanceUID")
            item.PersonIdentificationCodeSequence = []
            ds.add_new(tag, "SQ", [item])
        else:
            if vr in BINARY_NUMERIC:
                canaries.numeric.append((tuple(place.split(".")), tag, None))
            ds.add_new(tag, vr, canaries.value(tag, vr, where))


def planted_ct(tmp_path: Path, name: str = "planted.dcm", patient: str | None = None) -> tuple[Path, Canaries, bytes]:
    """A CT file with canaries everywhere; returns its path, the canaries and its pixel bytes."""
    rows = single_tag_rows()
    c = Canaries()
    ds = make_slice(SeriesSpec(rows=16, cols=16), 0)
    pixels = bytes(ds.PixelData)
    fill(ds, c, "", rows)
    # Two sequences deep, inside sequences the table does not list.
    inner = Dataset()
    fill(inner, c, "ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].", rows)
    outer = Dataset()
    outer.SeriesInstanceUID = c.value(0x0020000E, "UI", "ReferencedSeriesSequence[0].SeriesInstanceUID")
    outer.ReferencedInstanceSequence = [inner]
    ds.ReferencedSeriesSequence = [outer]
    # Private data (top level and nested), curves, overlays (all of group 60xx).
    block = ds.private_block(0x0009, "QZPRIVCREATOR", create=True)
    block.add_new(0x01, "LO", c.value(0, "LO", "private (0009,xx01)"))
    block.add_new(0x02, "OB", c.value(0, "OB", "private (0009,xx02)"))
    inner_block = inner.private_block(0x0011, "QZPRIVNESTED", create=True)
    inner_block.add_new(0x01, "LO", c.value(0, "LO", "nested private"))
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50000022, "LO", c.value(0, "LO", "CurveDescription"))
    ds.add_new(0x50003000, "OB", c.value(0, "OB", "CurveData"))
    ds.add_new(0x60000010, "US", 16)
    ds.add_new(0x60000011, "US", 16)
    ds.add_new(0x60000022, "LO", c.value(0, "LO", "OverlayDescription (6000,0022)"))
    ds.add_new(0x60001500, "LO", c.value(0, "LO", "OverlayLabel (6000,1500)"))
    ds.add_new(0x60003000, "OB", c.value(0, "OB", "OverlayData"))
    ds.add_new(0x60004000, "LT", c.value(0, "LT", "OverlayComments"))
    ds.file_meta.SourceApplicationEntityTitle = c.value(0x00020016, "AE", "FileMeta.SourceApplicationEntityTitle")
    ds.file_meta.add_new(0x00020017, "AE", c.value(0x00020017, "AE", "FileMeta.SendingApplicationEntityTitle"))
    # The core attributes a CT must keep, so the output is still a CT image.
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID  # the canary planted above
    if patient is not None:  # a chosen patient (date-shift tests): not a canary
        c.text.pop(str(ds.PatientID).encode())
        ds.PatientID = patient
    ds.Modality, ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "CT", 16, 16, 16, 12, 11
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 1
    ds.PixelData = pixels
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path, c, pixels


NEW_UID = re.compile(rb"2\.25\.\d{1,39}")


def leaked(data: bytes, canaries: Canaries) -> list[str]:
    """Where the canaries found in `data` were planted. The UIDs de-identification made ("2.25." and 128 random-keyed
    bits in decimal) are blanked first: an 8-digit date canary turns up inside one by chance (the planted CT gets
    119 new UIDs: about 1 file in 250)."""
    data = NEW_UID.sub(b"2.25.", data)
    return sorted(where for needle, where in canaries.text.items() if needle in data)


def test_oracle_covers_the_whole_table():
    edition_2024b = [r for r in ROWS if "edition" not in r]
    assert len(edition_2024b) == 621  # 617 single-tag rows + curve, overlay data, overlay comments, private attributes
    assert len(ROWS) - len(edition_2024b) == 35  # rows new in 2026c
    assert {r["basicProfile"] for r in ROWS} >= {"X", "Z", "D", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
    assert len(single_tag_rows()) >= 600


@pytest.mark.slow
def test_no_canary_survives_anywhere_and_pixels_are_identical(tmp_path, cli):
    path, canaries, pixels = planted_ct(tmp_path / "in")
    raw_in = path.read_bytes()
    assert len(leaked(raw_in, canaries)) == len(canaries.text)  # every canary is really in the input
    r = cli("deid", "--keep-file-names", str(tmp_path / "in"), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "planted.dcm"
    data = out.read_bytes()
    assert leaked(data, canaries) == []
    report = (tmp_path / "out" / "deid_report.json").read_bytes()
    assert leaked(report, canaries) == [] and leaked((r.stdout + r.stderr).encode(), canaries) == []
    ds = pydicom.dcmread(out)
    assert data[128:132] == b"DICM" and ds.file_meta.FileMetaInformationGroupLength > 0  # still a Part 10 file
    assert bytes(ds.PixelData) == pixels
    assert ds.PatientIdentityRemoved == "YES"
    # Binary numeric attributes cannot be grepped: each is gone or no longer holds its canary.
    for place, tag, _ in canaries.numeric:
        holder = ds
        if place != ("",):
            holder = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert tag not in holder, keyword_for_tag(tag)
    assert not any(e.tag.is_private for e in ds.iterall())
    assert not any(0x5000 <= e.tag.group <= 0x60FF and e.tag.group % 2 == 0 for e in ds)
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID != pydicom.dcmread(path).SOPInstanceUID
    # What we wrote passes our own checker.
    v = cli("deid", "--verify", str(tmp_path / "out"))
    assert v.returncode == 0, v.stdout + v.stderr


@pytest.mark.slow
def test_verify_finds_every_planted_attribute_by_name_only(tmp_path, cli):
    path, canaries, _ = planted_ct(tmp_path / "raw")
    r = cli("deid", "--verify", str(tmp_path / "raw"))
    assert r.returncode == 1
    assert leaked((r.stdout + r.stderr).encode(), canaries) == []
    line = next(line for line in r.stdout.splitlines() if line.startswith("planted.dcm: "))
    names = set(line.split(": ", 1)[1].split(", "))
    nested = "ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]."
    for tag, _ in single_tag_rows():
        kw = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        assert kw in names, kw
        assert nested + kw in names, nested + kw
    assert "(0009,1001)" in names and "(6000,3000)" in names and "(6000,0022)" in names
    assert "FileMeta.SourceApplicationEntityTitle" in names


def test_packaged_table_matches_an_independent_parse_of_the_standard():
    """dicom-anonymizer (PyPI) scrapes the standard itself: its 2024b and 2026c Basic Profile columns must equal
    our packaged table's, tag for tag."""
    import importlib

    from medgemma_toolkit.deid import table

    names = {
        "D_TAGS": "D",
        "Z_TAGS": "Z",
        "X_TAGS": "X",
        "U_TAGS": "U",
        "Z_D_TAGS": "Z/D",
        "X_Z_TAGS": "X/Z",
        "X_D_TAGS": "X/D",
        "X_Z_D_TAGS": "X/Z/D",
        "X_Z_U_STAR_TAGS": "X/Z/U*",
    }
    ours = {tag: row.basic for tag, row in table().rows.items()}
    for edition in ("2024b", "2026c"):
        m = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{edition}")
        theirs = {
            (g << 16) | e: action for name, action in names.items() for g, e, *rest in getattr(m, name) if not rest
        }
        assert {t: ours.get(t) for t in theirs} == theirs, edition
        if edition == "2024b":
            assert len(theirs) == 617 and len(set(ours) - set(theirs)) == 35  # the rows new in 2026c
        else:
            assert set(ours) == set(theirs)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"])  # implicit VR, deflated
def test_other_transfer_syntaxes(tmp_path, syntax):
    from pydicom.uid import UID

    from medgemma_toolkit.deid import deidentify_path

    path, canaries, _ = planted_ct(tmp_path / "src")
    ds = pydicom.dcmread(path)
    ts = UID(syntax)
    ds.file_meta.TransferSyntaxUID = ts
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "x.dcm", implicit_vr=ts.is_implicit_VR, little_endian=True)
    rep = deidentify_path(tmp_path / "in", tmp_path / "out", rename_files=False)
    assert rep["files_written"] == 1 and rep["files_failed"] == 0
    out = pydicom.dcmread(tmp_path / "out" / "x.dcm")
    assert out.file_meta.TransferSyntaxUID == ts
    assert bytes(out.PixelData) == bytes(pydicom.dcmread(tmp_path / "in" / "x.dcm").PixelData)
    import zlib

    data = (tmp_path / "out" / "x.dcm").read_bytes()
    if ts.is_deflated:  # the data set is deflated after the file meta group
        import struct

        meta_end = 132 + 12 + struct.unpack_from("<I", data, 132 + 8)[0]  # after (0002,0000) and its group
        data = data[:meta_end] + zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    assert leaked(data, canaries) == []
