"""Which patient a FHIR resource is about, decided by the FULL reference, and the resource's clinical date.

Why full references: a resource is one patient's only when its `subject`/`patient` names `Patient/<id>` — relative,
or absolute on the same server base (`<--fhir>/Patient/<id>`), or, in a local export, the `urn:uuid:` under which the
export's own Bundle holds that Patient. Matching the last path segment alone counted `Group/p1` and
`http://other.example/fhir/Patient/p1` as patient p1. Every search result is re-filtered on this rule, whatever the
server claims to have filtered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import BadInput

# `Patient/<id>`, optionally versioned (`/_history/<v>`); FHIR ids are [A-Za-z0-9\-.]{1,64}.
_PATIENT_REF = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")


FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def check_patient_id(patient: str) -> str:
    """`--patient` as a FHIR id (letters, digits, '-', '.'; at most 64), so it can only name a Patient, never a path."""
    if not FHIR_ID.fullmatch(patient) or patient in (".", ".."):
        raise BadInput("--patient must be a FHIR resource id: 1-64 letters, digits, '-' or '.'")
    return patient


def patient_ref_id(ref: Any, base_url: str | None = None, aliases: Mapping[str, str] | None = None) -> str | None:
    """The Patient id a reference names, or None when it names anything else (a Group, another resource type,
    another server's Patient, an unknown urn).

    >>> patient_ref_id({"reference": "Patient/p1"}), patient_ref_id({"reference": "Group/p1"})
    ('p1', None)
    """
    if isinstance(ref, dict):
        ref = ref.get("reference")
    if not isinstance(ref, str) or not ref:
        return None
    if aliases and ref in aliases:
        return aliases[ref]
    if base_url and ref.startswith(base_url.rstrip("/") + "/"):
        ref = ref[len(base_url.rstrip("/")) + 1 :]
    m = _PATIENT_REF.fullmatch(ref)
    return m.group(1) if m else None


def patient_of(
    resource: dict[str, Any], base_url: str | None = None, aliases: Mapping[str, str] | None = None
) -> str | None:
    """The one patient a resource is about; None when it names none, or several, or anything but a Patient.

    A Patient is its own. Otherwise `subject` and `patient` (whichever are present) must both name the same
    `Patient/<id>`."""
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id") or "") or None
    found = [patient_ref_id(resource[k], base_url, aliases) for k in ("subject", "patient") if k in resource]
    if not found or any(f is None for f in found) or len(set(found)) != 1:
        return None
    return found[0]


def clinical_date(resource: dict[str, Any]) -> str | None:
    """The date a resource is about (effective, onset, authored, period start...), as an ISO string."""
    for key in (
        "effectiveDateTime",
        "onsetDateTime",
        "authoredOn",
        "performedDateTime",
        "occurrenceDateTime",
        "recordedDate",
        "issued",
        "date",
    ):
        if isinstance(resource.get(key), str):
            return str(resource[key])
    for key in ("effectivePeriod", "period", "performedPeriod", "onsetPeriod"):
        v = resource.get(key)
        if isinstance(v, dict) and isinstance(v.get("start"), str):
            return str(v["start"])
    return None


def in_range(resource: dict[str, Any], date_from: str | None, date_to: str | None) -> bool:
    if not date_from and not date_to:
        return True
    d = clinical_date(resource)
    if d is None:
        return False
    day = d[:10]
    return (not date_from or day >= date_from[:10]) and (not date_to or day <= date_to[:10])


def codes_of(cc: Any) -> set[str]:
    """The codes (bare and `system|code`) of a CodeableConcept, or of a list of them (e.g. `category`)."""
    out: set[str] = set()
    for c in cc if isinstance(cc, list) else [cc]:
        if not isinstance(c, dict):
            continue
        for coding in c.get("coding") or []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                out.add(coding["code"])
                if isinstance(coding.get("system"), str):
                    out.add(f"{coding['system']}|{coding['code']}")
    return out
