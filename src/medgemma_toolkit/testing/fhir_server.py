"""A TEST DOUBLE of a FHIR R4 server: a loopback HTTP server that answers the part of the FHIR REST API the `ehr`
agent uses, over the resources of a Bundle. Not a FHIR server: no writes, no validation, a handful of search
parameters. (No real FHIR server installs from the package registries here: HAPI FHIR needs its JPA starter WAR
from outside PyPI/Debian.)

Served: `GET /metadata`; `GET /{type}/{id}` (404 with an OperationOutcome when absent); and search
`GET /{type}?patient=ID|_id=ID&{date param}=geYYYY-MM-DD&...&_count=N` answered as a `searchset` Bundle with `total`
and, when more remain, a `Bundle.link` "next" with `_offset` (pages hold at most `max_page` entries whatever
`_count` asks, so paging is exercised). A transaction Bundle's `urn:uuid:` references are rewritten to `Patient/ID`
as a server does on import. With `token`, every request needs `Authorization: Bearer <token>` (else 401).
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

# The date each type is searched by, and the field holding it (FHIR R4 search parameters).
DATE_FIELDS = {
    "Condition": ("onset-date", lambda r: r.get("onsetDateTime")),
    "MedicationRequest": ("authoredon", lambda r: r.get("authoredOn")),
    "Observation": ("date", lambda r: r.get("effectiveDateTime")),
    "Encounter": ("date", lambda r: (r.get("period") or {}).get("start")),
}


def _imported(r: dict[str, Any]) -> dict[str, Any]:
    r = json.loads(json.dumps(r))
    for key in ("subject", "patient"):
        ref = (r.get(key) or {}).get("reference", "")
        if ref.startswith("urn:uuid:"):
            r[key]["reference"] = "Patient/" + ref[len("urn:uuid:") :]
    return r


class FhirTestServer:
    """`with FhirTestServer(bundle, token="t") as fhir: fhir.base_url` (e.g. http://127.0.0.1:PORT/fhir)."""

    def __init__(self, bundle: dict[str, Any], token: str | None = None, max_page: int = 2) -> None:
        self.resources = [_imported(e["resource"]) for e in bundle.get("entry", [])]
        self.token, self.max_page = token, max_page
        self.requests: list[str] = []  # path?query of every request, for assertions
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                double.requests.append(self.path)
                if double.token and self.headers.get("Authorization") != f"Bearer {double.token}":
                    return self._send(401, _outcome("login", "authentication required"))
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                if parts[:1] != ["fhir"]:
                    return self._send(404, _outcome("not-found", "unknown path"))
                parts = parts[1:]
                if parts == ["metadata"]:
                    return self._send(200, {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"})
                if len(parts) == 2:
                    found = double.find(parts[0], parts[1])
                    return self._send(200, found) if found else self._send(404, _outcome("not-found", "no such id"))
                if len(parts) == 1:
                    return self._send(200, double.search(parts[0], parse_qs(url.query)))
                self._send(404, _outcome("not-found", "unknown path"))

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/fhir"

    def find(self, rtype: str, rid: str) -> dict[str, Any] | None:
        return next((r for r in self.resources if r["resourceType"] == rtype and r.get("id") == rid), None)

    def search(self, rtype: str, q: dict[str, list[str]]) -> dict[str, Any]:
        hits = [r for r in self.resources if r["resourceType"] == rtype]
        if "patient" in q:
            want = {v.split("/")[-1] for v in q["patient"]}
            hits = [r for r in hits if (r.get("subject") or r.get("patient") or {}).get("reference", "")[8:] in want]
        if "_id" in q:
            hits = [r for r in hits if r.get("id") in set(q["_id"])]
        param, get = DATE_FIELDS.get(rtype, ("date", lambda r: None))
        for cond in q.get(param, []):
            op, day = cond[:2], cond[2:]
            hits = [r for r in hits if (d := get(r)) and (d[:10] >= day if op == "ge" else d[:10] <= day)]
        offset = int(q.get("_offset", ["0"])[0])
        size = min(int(q.get("_count", [str(self.max_page)])[0]), self.max_page)
        page = hits[offset : offset + size] if size else []
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(hits),
            "entry": [{"fullUrl": f"{self.base_url}/{rtype}/{r['id']}", "resource": r} for r in page],
            "link": [],
        }
        if size and offset + size < len(hits):
            nxt = {k: v for k, v in q.items() if k != "_offset"}
            nxt["_offset"] = [str(offset + size)]
            bundle["link"].append({"relation": "next", "url": f"{self.base_url}/{rtype}?{urlencode(nxt, doseq=True)}"})
        return bundle

    def __enter__(self) -> FhirTestServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
