"""Where FHIR R4 data comes from: a FHIR server over REST (`ehr.rest`), or a local Bundle / NDJSON (Bulk Data) export.

A source reads one resource, searches one resource type of one patient (`Query`: dates, codes, categories, the
medications a MedicationRequest points at), and says which patient a resource is about (`ehr.scope`, by the full
reference). Every search result is re-filtered on that rule here, and again by the tools (`ehr.tools`) and recipes,
so nothing a source holds about another patient reaches the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import BadInput
from .scope import codes_of, in_range, patient_of
from .transport import MAX_DEPTH, TOKEN_ENV, FhirLimits, depth_over

__all__ = ["TOKEN_ENV", "CLINICAL_TYPES", "DATE_PARAM", "Query", "SearchResult", "FhirSource", "LocalSource"]

PAGE_SIZE = 50

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
CODE_FIELDS = ("code", "medicationCodeableConcept", "vaccineCode")  # what the `code` search parameter matches


@dataclass(frozen=True)
class Query:
    """One search of one patient's resources of one type. `code`/`category`: token lists (any matches)."""

    resource_type: str
    patient: str
    date_from: str | None = None
    date_to: str | None = None
    code: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    include_medication: bool = False  # also the Medication resources the matches reference (`_include`)


@dataclass
class SearchResult:
    resources: list[dict[str, Any]]  # the patient's matches only
    truncated: bool = False
    included: list[dict[str, Any]] = field(default_factory=list)  # Medication resources (no patient data)
    excluded: int = 0  # resources the source returned that are not this patient's (dropped)


class FhirSource(Protocol):
    description: str

    def read(self, resource_type: str, rid: str) -> dict[str, Any] | None: ...

    def search(self, query: Query) -> SearchResult: ...

    def patient_of(self, resource: dict[str, Any]) -> str | None: ...


def matches(r: dict[str, Any], q: Query) -> bool:
    """Whether `r` satisfies the query's dates, codes and categories (the patient is checked apart)."""
    if not in_range(r, q.date_from, q.date_to):
        return False
    if q.code and not set(q.code) & set().union(*(codes_of(r.get(k)) for k in CODE_FIELDS)):
        return False
    return not q.category or bool(set(q.category) & codes_of(r.get("category")))


# -- a local export ------------------------------------------------------------------------------------------------
@dataclass
class LocalSource:
    """A Bundle (`.json`), an NDJSON file, or a folder of NDJSON files (a Bulk Data export), held in memory."""

    description: str
    by_type: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # a Bundle's `urn:uuid:` fullUrl of a Patient -> its id
    max_resources: int = FhirLimits.max_resources

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
            for r, full_url in _read_file(f):
                src.add(r)
                if full_url and full_url.startswith("urn:uuid:") and r.get("resourceType") == "Patient":
                    src.aliases[full_url] = str(r.get("id"))
        if not src.by_type:
            raise BadInput(f"--fhir {p}: no FHIR resources found")
        return src

    def add(self, r: dict[str, Any]) -> None:
        rtype, rid = r.get("resourceType"), r.get("id")
        if isinstance(rtype, str) and isinstance(rid, str):
            self.by_type.setdefault(rtype, {})[rid] = r

    def read(self, resource_type: str, rid: str) -> dict[str, Any] | None:
        return self.by_type.get(resource_type, {}).get(rid)

    def patient_of(self, resource: dict[str, Any]) -> str | None:
        return patient_of(resource, None, self.aliases)

    def search(self, query: Query) -> SearchResult:
        of_type = self.by_type.get(query.resource_type, {}).values()
        found = [r for r in of_type if self.patient_of(r) == query.patient and matches(r, query)]
        found = found[: self.max_resources + 1]
        shown = found[: self.max_resources]
        included: list[dict[str, Any]] = []
        if query.include_medication:
            for r in shown:
                ref = (r.get("medicationReference") or {}).get("reference")
                med = self._resolve(ref, "Medication") if isinstance(ref, str) else None
                if med is not None and med not in included:
                    included.append(med)
        return SearchResult(shown, len(found) > len(shown), included)

    def _resolve(self, ref: str, rtype: str) -> dict[str, Any] | None:
        """A reference inside the export (`Type/id` or a Bundle `urn:uuid:`), only to a resource of `rtype`."""
        rid = ref[len("urn:uuid:") :] if ref.startswith("urn:uuid:") else None
        if rid is None and ref.startswith(rtype + "/"):
            rid = ref[len(rtype) + 1 :]
        return self.by_type.get(rtype, {}).get(rid) if rid else None


def _read_file(f: Path) -> Iterable[tuple[dict[str, Any], str | None]]:
    """The resources of one file, each with its Bundle `fullUrl` (None outside a Bundle)."""
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
            except (ValueError, RecursionError):
                raise BadInput(f"--fhir {f}: line {n} is not JSON (expected one FHIR resource per line)") from None
            if not isinstance(r, dict) or "resourceType" not in r:
                raise BadInput(f"--fhir {f}: line {n} is not a FHIR resource")
            if depth_over(r, MAX_DEPTH):
                raise BadInput(f"--fhir {f}: line {n} nests deeper than {MAX_DEPTH} levels")
            yield r, None
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"--fhir {f}: not valid JSON (at line {e.lineno}); expected a FHIR Bundle or NDJSON") from None
    except (ValueError, RecursionError):  # an over-long integer; nesting past the parser's recursion
        raise BadInput(f"--fhir {f}: not usable JSON; expected a FHIR Bundle or NDJSON") from None
    if not isinstance(doc, dict) or "resourceType" not in doc:
        raise BadInput(f"--fhir {f}: not a FHIR resource (no resourceType)")
    if depth_over(doc, MAX_DEPTH + 3):  # a Bundle adds entry[] / resource around each resource
        raise BadInput(f"--fhir {f}: nests deeper than {MAX_DEPTH} levels")
    if doc["resourceType"] != "Bundle":
        yield doc, None
        return
    entries = doc.get("entry", [])
    if not isinstance(entries, list):
        raise BadInput(f"--fhir {f}: Bundle.entry is not a list")
    for i, entry in enumerate(entries):
        r = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(r, dict) or "resourceType" not in r:
            raise BadInput(f"--fhir {f}: Bundle.entry[{i}] has no resource")
        full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        if "id" not in r and full_url:  # transaction bundles may carry ids only here
            r = {**r, "id": full_url.rstrip("/").split("/")[-1].split(":")[-1]}
        yield r, full_url


def _is_one_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False


def open_source(spec: str, token: str | None = None, limits: FhirLimits = FhirLimits()) -> FhirSource:
    """`--fhir` to a source: an http(s) base URL is a server; anything else a local file or folder."""
    limits.check()
    if spec.startswith(("http://", "https://")):
        from .rest import RestSource

        src = RestSource(spec, token, limits)
        src.check()
        return src
    if "://" in spec:
        raise BadInput(f"--fhir must be an http(s) URL or a local path; got {spec.split('://')[0]}://")
    local = LocalSource.load(spec)
    local.max_resources = limits.max_resources
    return local
