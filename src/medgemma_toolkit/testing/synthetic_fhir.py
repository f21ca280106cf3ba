"""A made-up, Synthea-style FHIR R4 transaction Bundle with two patients, for tests of `medgemma ehr`.

Like Synthea's exports: `fullUrl` is `urn:uuid:<id>` and references point at `urn:uuid:<patient id>`; codes are
SNOMED CT, LOINC and RxNorm. Every name and value here is invented.
"""

from __future__ import annotations

from typing import Any

PATIENT_A, PATIENT_B = "a1b2c3d4-0000-4000-8000-00000000000a", "b1b2c3d4-0000-4000-8000-00000000000b"
NAME_A, NAME_B = ("Quorinda", "Test-Amberline"), ("Vexmund", "Test-Borrowdale")


def _codeable(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


SNOMED, LOINC, RXNORM = "http://snomed.info/sct", "http://loinc.org", "http://www.nlm.nih.gov/research/umls/rxnorm"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MEDICATION_ID = "d1e2f3a4-0000-4000-8000-0000000000m1"  # a Medication resource A's second prescription points at


def _patient(pid: str, name: tuple[str, str], birth: str, gender: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"use": "official", "given": [name[0]], "family": name[1]}],
        "gender": gender,
        "birthDate": birth,
    }


def _records(
    pid: str,
    tag: str,
    conditions: list[tuple[str, str, str]],
    meds: list[tuple[str, str, str]],
    obs: list[tuple[str, str, float, str, str, str]],
    encounters: list[tuple[str, str]],
) -> list[dict[str, Any]]:
    ref = {"reference": f"urn:uuid:{pid}"}
    out: list[dict[str, Any]] = []
    for i, (code, display, onset) in enumerate(conditions):
        out.append(
            {
                "resourceType": "Condition",
                "id": f"{tag}-cond-{i + 1}",
                "subject": ref,
                "onsetDateTime": onset,
                "clinicalStatus": _codeable(
                    "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"
                ),
                "code": _codeable(SNOMED, code, display),
            }
        )
    for i, (code, display, authored) in enumerate(meds):
        out.append(
            {
                "resourceType": "MedicationRequest",
                "id": f"{tag}-med-{i + 1}",
                "subject": ref,
                "status": "active",
                "intent": "order",
                "authoredOn": authored,
                "medicationCodeableConcept": _codeable(RXNORM, code, display),
            }
        )
    for i, (code, display, value, unit, when, category) in enumerate(obs):
        out.append(
            {
                "resourceType": "Observation",
                "id": f"{tag}-obs-{i + 1}",
                "subject": ref,
                "status": "final",
                "category": [_codeable(OBS_CATEGORY, category, category)],
                "effectiveDateTime": when,
                "code": _codeable(LOINC, code, display),
                "valueQuantity": {"value": value, "unit": unit},
            }
        )
    for i, (display, start) in enumerate(encounters):
        out.append(
            {
                "resourceType": "Encounter",
                "id": f"{tag}-enc-{i + 1}",
                "subject": ref,
                "status": "finished",
                "class": {"code": "AMB"},
                "type": [{"text": display}],
                "period": {"start": start, "end": start},
            }
        )
    return out


def two_patient_bundle() -> dict[str, Any]:
    """Patient A: hypertension and diabetes with metformin and an HbA1c; patient B: asthma with salbutamol."""
    resources = [
        _patient(PATIENT_A, NAME_A, "1961-03-09", "female"),
        *_records(
            PATIENT_A,
            "a",
            [
                ("38341003", "Essential hypertension", "2015-06-01"),
                ("44054006", "Diabetes mellitus type 2", "2019-02-11"),
            ],
            [("860975", "Metformin hydrochloride 500 MG Oral Tablet", "2019-02-11")],
            [
                ("4548-4", "Hemoglobin A1c", 7.4, "%", "2023-05-02", "laboratory"),
                ("8480-6", "Systolic blood pressure", 142.0, "mm[Hg]", "2024-01-15", "vital-signs"),
            ],
            [("General examination", "2023-05-02"), ("Hypertension follow-up", "2024-01-15")],
        ),
        {  # prescribed by reference to a Medication resource, as many servers store it (`_include` brings it)
            "resourceType": "MedicationRequest",
            "id": "a-med-2",
            "subject": {"reference": f"urn:uuid:{PATIENT_A}"},
            "status": "active",
            "intent": "order",
            "authoredOn": "2024-01-15",
            "medicationReference": {"reference": f"urn:uuid:{MEDICATION_ID}"},
        },
        {
            "resourceType": "Medication",
            "id": MEDICATION_ID,
            "code": _codeable(RXNORM, "314076", "lisinopril 10 MG Oral Tablet"),
        },
        _patient(PATIENT_B, NAME_B, "1990-11-23", "male"),
        *_records(
            PATIENT_B,
            "b",
            [("195967001", "Asthma", "2008-09-30")],
            [("745679", "Salbutamol 0.09 MG/ACTUAT Inhaler", "2020-04-01")],
            [("19926-5", "FEV1/FVC", 0.68, "ratio", "2022-10-10", "exam")],
            [("Asthma review", "2022-10-10")],
        ),
    ]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{r['id']}", "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for r in resources
        ],
    }


# What only the foreign-subject resources say: none of it may reach the model, stdout or stderr.
FOREIGN_MARKERS = ("Leprosy", "Kuru", "Scurvy")


def foreign_subject_resources(pid: str) -> list[dict[str, Any]]:
    """Resources a careless server files under patient `pid` by the last segment of their subject: a Group named
    like the patient, the same id on another server, and another resource type. None of them is the patient's."""
    subjects = [f"Group/{pid}", f"http://other.example/fhir/Patient/{pid}", f"Device/{pid}"]
    return [
        {
            "resourceType": "Condition",
            "id": f"foreign-{i + 1}",
            "subject": {"reference": ref},
            "onsetDateTime": "2020-01-01",
            "code": _codeable(SNOMED, str(1000 + i), FOREIGN_MARKERS[i]),
        }
        for i, ref in enumerate(subjects)
    ]
