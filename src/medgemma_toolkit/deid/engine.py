"""Apply the Basic Profile to one pydicom Dataset, in place, and say what was changed (names only, never values).

Beyond the table, three safety nets cover what vendors put where the table does not look: every private
element is removed, every remaining person name (VR PN) is emptied, and every remaining instance UID outside the
DICOM standard's own root (1.2.840.10008, i.e. class and transfer-syntax UIDs) is remapped. Pixel data is never
touched: burned-in text stays, so a warning is raised when BurnedInAnnotation is YES or absent.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from .profile import Profile, basic_profile, is_curve_or_overlay_text

STANDARD_UID_ROOT = "1.2.840.10008."
KEEP_UIDS = {"SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
             "ImplementationClassUID", "CodingSchemeUID", "ReferencedSOPClassUIDInFile"}
METHOD = "PS3.15 Annex E Basic Profile (medgemma-toolkit table v{v})"  # LO: at most 64 characters

_DUMMY = {
    "PN": "ANONYMOUS", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "CS": "ANONYMIZED", "LT": "ANONYMIZED",
    "ST": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "AE": "ANONYMIZED",
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0",
}


class UIDMap:
    """Old UID -> new UID, the same within a run, not reversible across runs (a random salt per map).

    New UIDs are "2.25." + a 128-bit number, the UUID-derived form the standard allows without a registered root.
    """

    def __init__(self, salt: bytes | None = None) -> None:
        self._salt = secrets.token_bytes(16) if salt is None else salt
        self._map: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip().rstrip("\x00")
        if not uid:
            return uid
        new = self._map.get(uid)
        if new is None:
            digest = hashlib.sha256(self._salt + uid.encode("ascii", "replace")).digest()
            new = "2.25." + str(int.from_bytes(digest[:16], "big"))
            self._map[uid] = new
        return new

    def __len__(self) -> int:
        return len(self._map)


@dataclass
class FileReport:
    """What happened to one dataset, by attribute keyword (or tag for unnamed ones)."""

    removed: set[str] = field(default_factory=set)
    emptied: set[str] = field(default_factory=set)
    dummied: set[str] = field(default_factory=set)
    uids_remapped: set[str] = field(default_factory=set)
    private_removed: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "removed": sorted(self.removed), "emptied": sorted(self.emptied), "dummied": sorted(self.dummied),
            "uids_remapped": sorted(self.uids_remapped), "private_elements_removed": self.private_removed,
            "warnings": list(self.warnings),
        }


def _name(elem) -> str:
    return elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"


def _dummy(elem, uids: UIDMap):
    if elem.VR == "UI":
        return _remap(elem.value, uids)
    if elem.VR == "SQ":
        return []
    return _DUMMY.get(elem.VR)


def _remap(value, uids: UIDMap):
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        return [uids(v) for v in value]
    return uids(value)


def _is_instance_uid(elem) -> bool:
    if elem.VR != "UI" or elem.keyword in KEEP_UIDS or elem.value in (None, ""):
        return False
    values = elem.value if not isinstance(elem.value, str) else [elem.value]
    return any(not str(v).startswith(STANDARD_UID_ROOT) for v in values)


def _walk(ds, uids: UIDMap, rep: FileReport, profile: Profile) -> None:
    for elem in list(ds):
        tag = int(elem.tag)
        if elem.tag.is_private:
            del ds[elem.tag]
            rep.private_removed += 1
            continue
        if is_curve_or_overlay_text(tag):
            del ds[elem.tag]
            rep.removed.add(_name(elem))
            continue
        action = profile.actions.get(tag)
        if action is None:  # not in the table: safety nets only
            if elem.VR == "SQ":
                for item in elem.value:
                    _walk(item, uids, rep, profile)
            elif elem.VR == "PN" and elem.value not in (None, ""):
                elem.value = ""
                rep.emptied.add(_name(elem))
            elif _is_instance_uid(elem):
                elem.value = _remap(elem.value, uids)
                rep.uids_remapped.add(_name(elem))
            continue
        if action == "remove":
            del ds[elem.tag]
            rep.removed.add(_name(elem))
        elif action == "empty":
            elem.value = [] if elem.VR == "SQ" else ""
            rep.emptied.add(_name(elem))
        elif action == "dummy":
            value = _dummy(elem, uids)
            if value is None:  # no sensible dummy for this VR (binary): removing is the safe side
                del ds[elem.tag]
                rep.removed.add(_name(elem))
            else:
                elem.value = value
                rep.dummied.add(_name(elem))
        elif action == "uid":
            if elem.value not in (None, ""):
                elem.value = _remap(elem.value, uids)
                rep.uids_remapped.add(_name(elem))
        elif action == "recurse" and elem.VR == "SQ":
            for item in elem.value:
                _walk(item, uids, rep, profile)


def deidentify_dataset(ds, uids: UIDMap | None = None, profile: Profile | None = None) -> FileReport:
    """De-identify `ds` in place (file meta included) and return the report. Pixel data is kept as is."""
    from pydicom.dataset import Dataset

    profile = profile or basic_profile()
    uids = uids if uids is not None else UIDMap()
    rep = FileReport()
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        rep.warnings.append("BurnedInAnnotation is YES: the pixels may show identifying text, which is not removed")
    elif burned != "NO":
        rep.warnings.append("BurnedInAnnotation is absent or unknown: check the pixels for identifying text")
    _walk(ds, uids, rep, profile)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _walk(meta, uids, rep, profile)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD.format(v=profile.version)
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = [code]
    return rep


def safe_header(ds, keywords: list[str]) -> dict[str, str]:
    """Header values fit for logs, errors, records and exports: read from a de-identified copy of `ds`.

    The one way toolkit code may show a DICOM header value. Example: `safe_header(ds, ["Modality", "PatientID"])`
    gives {"Modality": "CT", "PatientID": ""}.
    """
    import copy

    clone = copy.deepcopy(ds)
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in clone:
            del clone[tag]
    deidentify_dataset(clone, UIDMap())
    return {k: str(clone.get(k, "")) for k in keywords}
