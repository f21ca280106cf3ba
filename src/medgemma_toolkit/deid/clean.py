"""The profile's "C" (clean) action: shifted dates, and free text with the file's own identifiers taken out.

Cleaning free text perfectly needs a reader; this removes what can be known to identify: every word of the
file's person names, IDs, addresses and institution and station names (wherever they occur in the file), other
people's names after a title ("Dr. Gregory House") and places named before what they are ("Princeton-Plainsboro
Teaching Hospital", capitalised hyphenated names), dates, phone numbers, runs of five or more digits, years
1900-2099 (but not "JPEG 2000": a number after a capitalised technical word), and anything shaped like an
e-mail address. What is left is the descriptor's own vocabulary ("CT CHEST W CONTRAST").
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# Attributes whose words identify a patient, a person or a place wherever else in the file they appear.
_IDENTIFYING = {
    "PatientID",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "PatientMotherBirthName",
    "RegionOfResidence",
    "CountryOfResidence",
    "MilitaryRank",
    "BranchOfService",
    "AdmissionID",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSponsorName",
    "ClinicalTrialSiteName",
    "PatientBirthDate",
    "PatientBirthName",
    "OtherPatientNames",
    "ResponsibleOrganization",
    "PerformedLocation",
    "ScheduledStudyLocation",
}
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Dates and phone numbers (digit groups with separators), IDs (5 digits or more) and years 1900-2099, except a
# year-like number that names a standard or product after a capitalised technical word ("JPEG 2000").
_DIGITS = re.compile(r"\+?\d[\d ().\-/]{4,}\d|\d{5,}|(?<![A-Z0-9]{3} )(?<!\d)(?:19|20)\d\d(?!\d)")
_EMAIL = re.compile(r"\S+@\S+")
_CAP = r"[A-Z][\w'\u00C0-\u024F]*\.?"
# Other people's names after a title, and places named before what they are ("Dr. Gregory House",
# "Princeton-Plainsboro Teaching Hospital"): the file's own identifiers are not the only ones free text holds.
_TITLED = re.compile(rf"\b(?:Dr|Drs|Prof|Mr|Mrs|Ms|Miss|Mx|Nurse|Sister|Rev)\.?\s+(?:{_CAP}[\s-]*){{1,3}}")
_PLACE = re.compile(
    rf"\b(?:{_CAP}[\s-]+){{1,4}}(?=(?:Teaching\s+|General\s+|Memorial\s+|Community\s+)*"
    r"(?:Hospital|Clinic|Infirmary|Medical\s+Cent(?:er|re)|Health(?:care)?|Institute|University|Hospice)\b)"
)
_HYPHENATED = re.compile(r"\b[A-Z][a-z]+(?:-[A-Z][a-z]+)+\b")  # "Princeton-Plainsboro", "Smith-Jones"


def _values(value: Any) -> list[Any]:
    from pydicom.multival import MultiValue

    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


class Scrubber:
    """Takes the file's identifying words out of a free-text value."""

    def __init__(self, words: set[str]) -> None:
        self.words = {w.casefold() for w in words if len(w) >= 2}

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Scrubber:
        words: set[str] = set()

        def collect(d: Dataset) -> None:
            for elem in d:
                if elem.VR == "SQ":
                    for item in elem.value or []:
                        collect(item)
                elif elem.VR == "PN" or elem.keyword in _IDENTIFYING:
                    for v in _values(elem.value):
                        words.update(_WORD.findall(str(v)))

        collect(ds)
        return cls(words)

    def __call__(self, text: str) -> str:
        text = _EMAIL.sub("*", text)
        text = _TITLED.sub(lambda m: m.group(0).split()[0] + " * ", text)
        text = _PLACE.sub("* ", text)
        text = _HYPHENATED.sub("*", text)
        text = _DIGITS.sub("*", text)
        out = _WORD.sub(lambda m: "*" if m.group(0).casefold() in self.words else m.group(0), text)
        return re.sub(r"\*+(\W*\*+)*", "*", out)


def shift_date(value: str, days: int) -> str | None:
    """'YYYYMMDD' moved by `days`; None when it is not a full date (it cannot be shifted)."""
    v = value.strip()
    try:
        return (dt.datetime.strptime(v, "%Y%m%d").date() + dt.timedelta(days=days)).strftime("%Y%m%d")
    except ValueError:
        return None


def shift_datetime(value: str, days: int) -> str | None:
    """A DT value's date part moved by `days`; time, fraction and offset kept (a whole-day shift)."""
    v = value.strip()
    if len(v) < 8:
        return None
    head = shift_date(v[:8], days)
    return None if head is None else head + v[8:]
