"""The agent's tools as data: each a name, a description and a JSON schema (what the model is shown, in OpenAI
`tools` format) plus a handler bound to ONE patient.

The patient is fixed when the registry is built and is never a parameter, so the model cannot ask for another
patient; a resource id that belongs to someone else is refused without saying whether it exists. Results are short
text lines (`Type/id | date | what | value`), the ids being what the answer cites.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .scope import clinical_date
from .sources import CLINICAL_TYPES, FhirSource, Query
from .transport import FhirStatusError

DATE = {"type": "string", "description": "ISO date, e.g. 2021-06-30", "pattern": r"^\d{4}(-\d{2}(-\d{2})?)?$"}
RESOURCE_TYPE = {"type": "string", "enum": ["Patient", *CLINICAL_TYPES]}
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class ToolResult:
    text: str
    items: int  # resources in the result
    ids: tuple[str, ...] = ()  # "Type/id" of each resource shown
    refused: bool = False


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[..., ToolResult]

    def openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def _schema(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


def check_arguments(schema: dict[str, Any], args: Any) -> str | None:
    """What is wrong with `args` for this (flat, string-valued) schema; None when they fit."""
    if not isinstance(args, dict):
        return "arguments must be an object"
    props = schema.get("properties", {})
    for k in schema.get("required", []):
        if k not in args:
            return f"missing required argument {k!r}"
    for k, v in args.items():
        if k not in props:
            return f"unknown argument {k!r}; this tool takes: {', '.join(props) or 'nothing'}"
        p = props[k]
        if not isinstance(v, str):
            return f"argument {k!r} must be a string"
        if "enum" in p and v not in p["enum"]:
            return f"argument {k!r} must be one of: {', '.join(p['enum'])}"
        if "pattern" in p and not re.match(p["pattern"], v):
            return f"argument {k!r} is not in the expected form"
    return None


def _text(cc: Any) -> str:
    if not isinstance(cc, dict):
        return ""
    if cc.get("text"):
        return str(cc["text"])
    for c in cc.get("coding") or []:
        if isinstance(c, dict) and (c.get("display") or c.get("code")):
            return str(c.get("display") or c.get("code"))
    return ""


def _value(r: dict[str, Any]) -> str:
    q = r.get("valueQuantity")
    if isinstance(q, dict) and "value" in q:
        return f"{q['value']} {q.get('unit', '')}".strip()
    for key in ("valueCodeableConcept", "clinicalStatus"):
        if (t := _text(r.get(key))) != "":
            return t
    for key in ("valueString", "status"):
        if isinstance(r.get(key), str):
            return str(r[key])
    return ""


def what(r: dict[str, Any]) -> str:
    """What a resource records: its code's text, the medication, the encounter type; a Patient's sex and birth."""
    if r.get("resourceType") == "Patient":  # never the name: the answer needs no identity
        return f"{r.get('gender', '')} born {r.get('birthDate', '?')}".strip()
    return (
        _text(r.get("code"))
        or _text(r.get("medicationCodeableConcept"))
        or _text(r.get("vaccineCode"))
        or next((_text(t) for t in r.get("type") or [] if _text(t)), "")
    )


def summary(r: dict[str, Any]) -> str:
    """One line per resource: `Type/id | date | what | value`."""
    cells = [f"{r.get('resourceType')}/{r.get('id')}", (clinical_date(r) or "")[:10], what(r), _value(r)]
    return " | ".join(c for c in cells if c)


class PatientTools:
    """The registry for one patient of one source."""

    def __init__(self, source: FhirSource, patient: str, max_items: int = 60) -> None:
        self.source, self.patient, self.max_items = source, patient, max_items
        dates = {"date_from": DATE, "date_to": DATE}
        lister = "List the patient's {what}, newest first, optionally between two dates."
        self.tools = {
            t.name: t
            for t in [
                Tool(
                    "get_patient_data_manifest",
                    "Which resource types the patient's record holds, with counts and the most frequent codes. "
                    "Call this first.",
                    _schema({}),
                    self.manifest,
                ),
                Tool(
                    "search_resources",
                    "Search the patient's resources of one type, optionally between two dates.",
                    _schema({"resource_type": RESOURCE_TYPE, **dates}, ("resource_type",)),
                    self.search,
                ),
                Tool(
                    "read_resource",
                    "Read one of the patient's resources in full, by type and id.",
                    _schema({"resource_type": RESOURCE_TYPE, "id": {"type": "string"}}, ("resource_type", "id")),
                    self.read,
                ),
                Tool(
                    "list_encounters",
                    lister.format(what="encounters (visits)"),
                    _schema(dates),
                    lambda **a: self.search("Encounter", **a),
                ),
                Tool(
                    "list_conditions",
                    lister.format(what="conditions (diagnoses)"),
                    _schema(dates),
                    lambda **a: self.search("Condition", **a),
                ),
                Tool(
                    "list_medications",
                    lister.format(what="medication requests"),
                    _schema(dates),
                    lambda **a: self.search("MedicationRequest", **a),
                ),
                Tool(
                    "list_observations",
                    lister.format(what="observations (labs, vitals)"),
                    _schema(dates),
                    lambda **a: self.search("Observation", **a),
                ),
            ]
        }

    def openai(self) -> list[dict[str, Any]]:
        return [t.openai() for t in self.tools.values()]

    def call(self, name: str, args: Any) -> ToolResult:
        """Run one call the model asked for; a bad call is a refusal the model can read, never an exception."""
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult(f"error: no tool named {name!r}", 0, refused=True)
        problem = check_arguments(tool.parameters, args)
        if problem:
            return ToolResult(f"error: {name}: {problem}", 0, refused=True)
        try:
            return tool.run(**args)
        except FhirStatusError:  # e.g. a date parameter the server lacks: the model may try another way
            return ToolResult(f"error: {name}: the FHIR server answered this search with an error", 0, refused=True)

    def _listing(self, found: list[dict[str, Any]], truncated: bool, what: str) -> ToolResult:
        found = sorted(found, key=lambda r: clinical_date(r) or "", reverse=True)
        shown = found[: self.max_items]
        lines = [summary(r) for r in shown]
        if len(found) > len(shown) or truncated:
            lines.append(f"(showing {len(shown)}; more exist: narrow the dates)")
        text = "\n".join(lines) if lines else f"no {what} found"
        return ToolResult(text, len(shown), tuple(f"{r['resourceType']}/{r['id']}" for r in shown))

    def search(self, resource_type: str, date_from: str | None = None, date_to: str | None = None) -> ToolResult:
        res = self.source.search(Query(resource_type, self.patient, date_from, date_to))
        mine = [r for r in res.resources if self.source.patient_of(r) == self.patient]  # checked twice, on purpose
        return self._listing(mine, res.truncated, f"{resource_type} resources")

    def read(self, resource_type: str, id: str) -> ToolResult:
        refusal = ToolResult(
            f"refused: {resource_type}/{id[:64]} is not part of this patient's record", 0, refused=True
        )
        if not FHIR_ID.match(id):
            return refusal
        r = self.source.read(resource_type, id)
        if r is None or self.source.patient_of(r) != self.patient:  # the same answer whether it exists or not
            return refusal
        return ToolResult(json.dumps(r, ensure_ascii=False, indent=1), 1, (f"{resource_type}/{id}",))

    def manifest(self) -> ToolResult:
        lines = []
        for rtype in CLINICAL_TYPES:
            try:
                res = self.source.search(Query(rtype, self.patient))
            except FhirStatusError:  # a server without this type: not part of the manifest
                continue
            mine = [r for r in res.resources if self.source.patient_of(r) == self.patient]
            if not mine:
                continue
            codes = Counter(what(r) for r in mine)
            top = ", ".join(c for c, _ in codes.most_common(8) if c)
            lines.append(f"{rtype}: {len(mine)}{'+' if res.truncated else ''}" + (f" (e.g. {top})" if top else ""))
        return ToolResult("\n".join(lines) if lines else "the record holds no clinical resources", len(lines))

    def has_patient(self) -> bool:
        r = self.source.read("Patient", self.patient)
        return r is not None
