"""A FHIR R4 server as a source: search and read over `ehr.transport` (origin-checked, bounded GETs).

Searches name the patient by full reference (`patient=Patient/<id>`), and what comes back is re-filtered on the
same rule (`ehr.scope`): a server that ignores the parameter, or files a Group's or another server's resources
under the id, shows the model nothing of them. `_include`d resources pass only as Medication (no patient data).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, urlencode

from ..errors import BadInput
from .scope import patient_of
from .sources import DATE_PARAM, PAGE_SIZE, Query, SearchResult
from .transport import TOKEN_ENV, FhirHttp, FhirLimits

_TYPE = frozenset({"Patient", "Medication", *DATE_PARAM, "Practitioner", "FamilyMemberHistory",
                   "MedicationStatement", "MedicationAdministration", "ServiceRequest"})  # fmt: skip


class RestSource:
    """A FHIR R4 server's REST API (search with paging, read), bearer token from `$MEDGEMMA_FHIR_TOKEN`."""

    def __init__(self, base_url: str, token: str | None = None, limits: FhirLimits = FhirLimits()) -> None:
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.http = FhirHttp(base_url, token, limits)
        self.base_url = self.http.base_url
        self.description = self.http.description

    def check(self) -> None:
        """Reach the server once (its CapabilityStatement) so a wrong URL or token fails before the model loads."""
        if self.http.get(f"{self.base_url}/metadata") is None:
            raise BadInput(f"{self.description} has no /metadata; is --fhir the server's FHIR base URL?")

    def patient_of(self, resource: dict[str, Any]) -> str | None:
        return patient_of(resource, self.base_url)

    def read(self, resource_type: str, rid: str) -> dict[str, Any] | None:
        if resource_type not in _TYPE:
            return None
        r = self.http.get(f"{self.base_url}/{resource_type}/{quote(rid, safe='')}")
        if r is None or r.get("resourceType") != resource_type or r.get("id") != rid:
            return None  # a server answering with something else is treated as not having it
        return r

    def search_url(self, q: Query) -> str:
        params: dict[str, Any] = {"_count": PAGE_SIZE}
        if q.resource_type == "Patient":
            params["_id"] = q.patient
        else:
            params["patient"] = f"Patient/{q.patient}"
        dates = [f"ge{q.date_from}"] if q.date_from else []
        dates += [f"le{q.date_to}"] if q.date_to else []
        if dates:
            params[DATE_PARAM.get(q.resource_type, "date")] = dates
        if q.code:
            params["code"] = ",".join(q.code)
        if q.category:
            params["category"] = ",".join(q.category)
        if q.include_medication:
            params["_include"] = f"{q.resource_type}:medication"
        return f"{self.base_url}/{q.resource_type}?{urlencode(params, doseq=True)}"

    def search(self, q: Query) -> SearchResult:
        if q.resource_type not in _TYPE:
            raise BadInput(f"cannot search FHIR resource type {q.resource_type[:40]!r}")
        out = SearchResult([])
        seen: set[tuple[str, str]] = set()
        for entry in self.http.search(self.search_url(q)):
            r = entry["resource"]
            key = (str(r.get("resourceType")), str(r.get("id")))
            if key in seen:
                continue
            seen.add(key)
            mode = (entry.get("search") or {}).get("mode") if isinstance(entry.get("search"), dict) else None
            if mode == "include" or r.get("resourceType") == "Medication":
                if q.include_medication and r.get("resourceType") == "Medication":
                    out.included.append(r)
                continue
            if r.get("resourceType") == q.resource_type and self.patient_of(r) == q.patient:
                out.resources.append(r)
            else:
                out.excluded += 1
        return out
