"""Where FHIR R4 data comes from: a FHIR server over REST, or a local Bundle / NDJSON (Bulk Data) export.

A source answers three questions for the agent's tools: read one resource, search one resource type of one patient
(optionally within dates), and say whether a resource belongs to a patient. Patient scoping itself is enforced by
the tools (`ehr.tools`), which never pass anything the source returns for another patient on to the model.

REST uses `fhirpy` (a maintained FHIR client: search parameters, `Bundle.link` "next" paging that refuses links off
the base URL, FHIR error types). The bearer token comes from `$MEDGEMMA_FHIR_TOKEN`, never argv. Errors name the
server and the status, never a resource's content.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import BackendUnavailable, BadInput

TOKEN_ENV = "MEDGEMMA_FHIR_TOKEN"
PAGE_SIZE = 50
MAX_PER_TYPE = 500  # resources of one type read for one patient; more are reported as cut off

# FHIR R4 search parameter for each type's clinical date (Condition's is onset-date, MedicationRequest's authoredon).
DATE_PARAM = {
    "Condition": "onset-date",
    "MedicationRequest": "authoredon",
    "Observation": "date",
    "Encounter": "date",
    "Procedure": "date",
    "Immunization": "date",
    "DiagnosticReport": "date",
    "AllergyIntolerance": "date",
    "CarePlan": "date",
}
CLINICAL_TYPES = tuple(DATE_PARAM)


def ref_id(ref: Any) -> str | None:
    """The id a reference points at: `Patient/123`, `urn:uuid:123` (Synthea) or a full URL."""
    if isinstance(ref, dict):
        ref = ref.get("reference")
    if not isinstance(ref, str) or not ref:
        return None
    if ref.startswith("urn:uuid:"):
        return ref[len("urn:uuid:") :]
    return ref.rstrip("/").split("/")[-1]


def patient_of(resource: dict[str, Any]) -> str | None:
    """The patient a resource is about (`subject` or `patient`); a Patient is its own."""
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id") or "") or None
    for key in ("subject", "patient"):
        if (pid := ref_id(resource.get(key))) is not None:
            return pid
    return None


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


@dataclass
class SearchResult:
    resources: list[dict[str, Any]]
    truncated: bool = False


class FhirSource(Protocol):
    description: str

    def read(self, resource_type: str, rid: str) -> dict[str, Any] | None: ...

    def search(self, resource_type: str, patient: str, date_from: str | None, date_to: str | None) -> SearchResult: ...


# -- a local export ------------------------------------------------------------------------------------------------
@dataclass
class LocalSource:
    """A Bundle (`.json`), an NDJSON file, or a folder of NDJSON files (a Bulk Data export), held in memory."""

    description: str
    by_type: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> LocalSource:
        p = Path(path)
        if not p.exists():
            raise BadInput(f"--fhir {p}: no such file or folder")
        src = cls(description=f"local export {p.name}")
        files = sorted(p.glob("*.ndjson")) + sorted(p.glob("*.json")) if p.is_dir() else [p]
        if not files:
            raise BadInput(f"--fhir {p}: the folder holds no .ndjson or .json files")
        for f in files:
            for r in _read_file(f):
                src.add(r)
        if not src.by_type:
            raise BadInput(f"--fhir {p}: no FHIR resources found")
        return src

    def add(self, r: dict[str, Any]) -> None:
        rtype, rid = r.get("resourceType"), r.get("id")
        if isinstance(rtype, str) and isinstance(rid, str):
            self.by_type.setdefault(rtype, {})[rid] = r

    def read(self, resource_type: str, rid: str) -> dict[str, Any] | None:
        return self.by_type.get(resource_type, {}).get(rid)

    def search(self, resource_type: str, patient: str, date_from: str | None, date_to: str | None) -> SearchResult:
        found = [
            r
            for r in self.by_type.get(resource_type, {}).values()
            if patient_of(r) == patient and in_range(r, date_from, date_to)
        ]
        return SearchResult(found[:MAX_PER_TYPE], len(found) > MAX_PER_TYPE)


def _read_file(f: Path) -> Iterable[dict[str, Any]]:
    try:
        text = f.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"--fhir {f}: cannot read ({type(e).__name__})") from None
    stripped = text.lstrip()
    if f.suffix == ".ndjson" or (stripped.startswith("{") and "\n{" in stripped and not _is_one_json(stripped)):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                raise BadInput(f"--fhir {f}: line {n} is not JSON (expected one FHIR resource per line)") from None
            if not isinstance(r, dict) or "resourceType" not in r:
                raise BadInput(f"--fhir {f}: line {n} is not a FHIR resource")
            yield r
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"--fhir {f}: not valid JSON (at line {e.lineno}); expected a FHIR Bundle or NDJSON") from None
    if not isinstance(doc, dict) or "resourceType" not in doc:
        raise BadInput(f"--fhir {f}: not a FHIR resource (no resourceType)")
    if doc["resourceType"] != "Bundle":
        yield doc
        return
    entries = doc.get("entry", [])
    if not isinstance(entries, list):
        raise BadInput(f"--fhir {f}: Bundle.entry is not a list")
    for i, entry in enumerate(entries):
        r = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(r, dict) or "resourceType" not in r:
            raise BadInput(f"--fhir {f}: Bundle.entry[{i}] has no resource")
        if "id" not in r and isinstance(entry.get("fullUrl"), str):  # transaction bundles may carry ids only here
            r = {**r, "id": ref_id(entry["fullUrl"])}
        yield r


def _is_one_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


# -- a FHIR server -------------------------------------------------------------------------------------------------
class RestSource:
    """A FHIR R4 server's REST API through fhirpy's synchronous client."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        try:
            from fhirpy import SyncFHIRClient
        except ImportError:
            raise BackendUnavailable(
                "reading a FHIR server needs fhirpy: pip install 'medgemma-toolkit[ehr]'"
            ) from None
        self.base_url = base_url.rstrip("/")
        self.description = f"FHIR server {self.base_url}"
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.client = SyncFHIRClient(
            self.base_url,
            authorization=f"Bearer {token}" if token else None,
            requests_config={"timeout": timeout_s},
        )

    def _call(self, fn: Any) -> Any:
        """fhirpy's and requests' errors as ours: one line naming the server and status, no content."""
        import requests
        from fhirpy.base.exceptions import (
            AuthorizationError,
            BaseFHIRError,
            ForbiddenError,
            OperationOutcome,
            ResourceNotFound,
        )

        try:
            return fn()
        except ResourceNotFound:
            return None
        except AuthorizationError:
            raise BadInput(f"{self.description} refused our credentials (401); set ${TOKEN_ENV}") from None
        except ForbiddenError:
            raise BadInput(f"{self.description} denied access (403); check ${TOKEN_ENV}'s permissions") from None
        except requests.Timeout:
            raise BackendUnavailable(f"{self.description} did not answer in time") from None
        except requests.ConnectionError:
            raise BackendUnavailable(f"{self.description} is unreachable") from None
        except (OperationOutcome, BaseFHIRError, ValueError, requests.RequestException) as e:
            raise BadInput(f"{self.description} answered with an error ({type(e).__name__})") from None

    def read(self, resource_type: str, rid: str) -> dict[str, Any] | None:
        r = self._call(lambda: self.client.reference(resource_type, rid).to_resource())
        return r.serialize() if r is not None else None

    def search(self, resource_type: str, patient: str, date_from: str | None, date_to: str | None) -> SearchResult:
        params: dict[str, Any] = {"_count": PAGE_SIZE}
        if resource_type == "Patient":
            params["_id"] = patient
        else:
            params["patient"] = patient
        dates = [f"ge{date_from}"] if date_from else []
        dates += [f"le{date_to}"] if date_to else []
        if dates:
            params[DATE_PARAM.get(resource_type, "date")] = dates
        search = self.client.resources(resource_type).search(**params)

        def collect() -> SearchResult:
            out: list[dict[str, Any]] = []
            for r in search:  # follows Bundle.link "next"
                out.append(r.serialize())
                if len(out) > MAX_PER_TYPE:
                    return SearchResult(out[:MAX_PER_TYPE], True)
            return SearchResult(out)

        return self._call(collect)  # type: ignore[no-any-return]

    def check(self) -> None:
        """Reach the server once (its CapabilityStatement) so a wrong URL or token fails before the model loads."""
        self._call(lambda: self.client.execute("metadata", method="get"))


def open_source(spec: str, token: str | None = None) -> FhirSource:
    """`--fhir` to a source: an http(s) base URL is a server; anything else a local file or folder."""
    if spec.startswith(("http://", "https://")):
        src = RestSource(spec, token)
        src.check()
        return src
    if "://" in spec:
        raise BadInput(f"--fhir must be an http(s) URL or a local path; got {spec.split('://')[0]}://")
    return LocalSource.load(spec)
