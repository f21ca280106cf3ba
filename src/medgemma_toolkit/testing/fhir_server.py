"""A TEST DOUBLE of a FHIR R4 server: a loopback HTTP server that answers the part of the FHIR REST API the `ehr`
recipes use, over the resources of a Bundle, and that can turn hostile. Not a FHIR server: no writes, no validation,
a handful of search parameters. (No real FHIR server installs from the package registries here: HAPI FHIR needs its
JPA starter WAR from outside PyPI/Debian.)

Served: `GET /metadata`; `GET /{type}/{id}` (404 with an OperationOutcome when absent); and search
`GET /{type}?patient=[Patient/]ID|_id=ID&{date param}=geYYYY-MM-DD&code=A,B&category=C&_include=T:medication&_count=N`
answered as a `searchset` Bundle with `total` and, when more remain, a `Bundle.link` "next" with `_offset` (pages
hold at most `max_page` entries whatever `_count` asks, so paging is exercised). Like a careless server, `patient=`
matches the LAST path segment of `subject`/`patient`, so Group and foreign-server subjects come back too (the client
must drop them). A transaction Bundle's `urn:uuid:` references are rewritten to `Type/ID` as a server does on
import. With `token`, every request needs `Authorization: Bearer <token>` (else 401).

`hostile` turns searches (never /metadata) into an attack: "offorigin-next" (each page's `next` points at
`other_url`), "redirect" (a 302 to `other_url`), "self-next" (an empty page whose `next` is itself), "big-page"
(a `big_page_bytes` page streamed lazily without Content-Length, so it is never held in memory; `bytes_sent`
counts what the client actually took), "declared-big" (the same announced by Content-Length), "gzip-bomb" (the
big page gzip-compressed, ~1000:1, as `Content-Encoding: gzip`), "raw" (`raw_body`
as the answer, e.g. JSON nested 100,000 deep or a 5,000-digit number).
`unsupported`: search parameters answered with a 400, as a server that lacks them does.
`RecordingServer` is the "other port": it records every request it gets, headers included.
"""

from __future__ import annotations

import http.server
import json
import threading
import zlib
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlparse

from ..ehr.scope import codes_of

Hostile = Literal["offorigin-next", "redirect", "self-next", "big-page", "declared-big", "gzip-bomb", "raw"]

# The date each type is searched by, and the field holding it (FHIR R4 search parameters).
DATE_FIELDS = {
    "Condition": ("onset-date", lambda r: r.get("onsetDateTime")),
    "MedicationRequest": ("authoredon", lambda r: r.get("authoredOn")),
    "Observation": ("date", lambda r: r.get("effectiveDateTime")),
    "Encounter": ("date", lambda r: (r.get("period") or {}).get("start")),
}
CODE_FIELDS = ("code", "medicationCodeableConcept", "vaccineCode")


def _rewrite_refs(obj: Any, by_urn: dict[str, str]) -> Any:
    if isinstance(obj, list):
        return [_rewrite_refs(v, by_urn) for v in obj]
    if isinstance(obj, dict):
        out = {k: _rewrite_refs(v, by_urn) for k, v in obj.items()}
        if isinstance(out.get("reference"), str) and out["reference"] in by_urn:
            out["reference"] = by_urn[out["reference"]]
        return out
    return obj


def imported_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    entries = bundle.get("entry", [])
    by_urn = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in entries
        if str(e.get("fullUrl", "")).startswith("urn:uuid:") and "id" in e["resource"]
    }
    return [_rewrite_refs(e["resource"], by_urn) for e in entries]


def _last_segment(ref: Any) -> str:
    return str((ref or {}).get("reference", "")).rstrip("/").split("/")[-1] if isinstance(ref, dict) else ""


class RecordingServer:
    """`with RecordingServer() as other:` a loopback server that answers 200 `{}` and keeps every request's
    path and headers in `.requests` (the second port a hostile FHIR server points at)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                double.requests.append((self.path, dict(self.headers)))
                data = b'{"resourceType": "Bundle", "type": "searchset", "entry": []}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RecordingServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class FhirTestServer:
    """`with FhirTestServer(bundle, token="t") as fhir: fhir.base_url` (e.g. http://127.0.0.1:PORT/fhir)."""

    def __init__(
        self,
        bundle: dict[str, Any],
        token: str | None = None,
        max_page: int = 2,
        *,
        hostile: Hostile | None = None,
        other_url: str | None = None,
        big_page_bytes: int = 60 * 1024 * 1024,
        extra: list[dict[str, Any]] | None = None,
        raw_body: bytes = b"",
        unsupported: tuple[str, ...] = (),
    ) -> None:
        self.resources = imported_resources(bundle) + [json.loads(json.dumps(r)) for r in extra or []]
        self.token, self.max_page = token, max_page
        self.hostile, self.other_url, self.big_page_bytes = hostile, other_url, big_page_bytes
        self.raw_body, self.unsupported = raw_body, unsupported
        self.requests: list[str] = []  # path?query of every request, for assertions
        self.bytes_sent = 0  # body bytes of the big page the client took before it hung up
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
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
                    if set(parse_qs(url.query)) & set(double.unsupported):  # as servers answer unknown params
                        return self._send(400, _outcome("not-supported", "search parameter not supported"))
                    if double.hostile:
                        return self._attack(parts[0])
                    return self._send(200, double.search(parts[0], parse_qs(url.query)))
                self._send(404, _outcome("not-found", "unknown path"))

            def _attack(self, rtype: str) -> None:
                here = f"{double.base_url}/{rtype}?{urlparse(self.path).query}"
                if double.hostile == "redirect":
                    self.send_response(302)
                    self.send_header("Location", f"{double.other_url}/steal?from={double.base_url}/{rtype}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if double.hostile in ("big-page", "declared-big"):
                    return self._big(double.hostile == "declared-big")
                if double.hostile == "gzip-bomb":
                    return self._bomb()
                if double.hostile == "raw":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(double.raw_body)))
                    self.end_headers()
                    self.wfile.write(double.raw_body)
                    return None
                page = double.search(rtype, parse_qs(urlparse(self.path).query))
                page["link"] = [
                    {
                        "relation": "next",
                        "url": here
                        if double.hostile == "self-next"
                        else f"{double.other_url}/steal?from={double.base_url}/{rtype}",
                    }
                ]
                if double.hostile == "self-next":
                    page["entry"] = []
                return self._send(200, page)

            def _big(self, declared: bool) -> None:
                """A searchset whose one entry holds `big_page_bytes` of text, written chunk by chunk."""
                head = b'{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": '
                head += b'"Condition", "id": "big", "note": [{"text": "'
                tail = b'"}]}}]}'
                chunk = b"x" * 65536
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                if declared:
                    self.send_header("Content-Length", str(len(head) + double.big_page_bytes + len(tail)))
                self.end_headers()
                try:
                    self.wfile.write(head)
                    left = double.big_page_bytes
                    while left > 0:
                        n = min(left, len(chunk))
                        self.wfile.write(chunk[:n])
                        double.bytes_sent += n
                        left -= n
                    self.wfile.write(tail)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what we want
                self.close_connection = True

            def _bomb(self) -> None:
                """`big_page_bytes` of JSON text, gzip-compressed while generated (a few tens of KB on the wire)."""
                gz = zlib.compressobj(9, zlib.DEFLATED, 31)
                body = [gz.compress(b'{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"x": "')]
                zeros = b"0" * 65536
                for _ in range(double.big_page_bytes // len(zeros)):
                    body.append(gz.compress(zeros))
                body.append(gz.compress(b'"}}]}') + gz.flush())
                data = b"".join(body)
                self.send_response(200)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

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
        if "patient" in q:  # careless on purpose: the last segment of the reference
            want = {v.split("/")[-1] for v in q["patient"]}
            hits = [r for r in hits if (_last_segment(r.get("subject")) or _last_segment(r.get("patient"))) in want]
        if "_id" in q:
            hits = [r for r in hits if r.get("id") in set(q["_id"])]
        param, get = DATE_FIELDS.get(rtype, ("date", lambda r: None))
        for cond in q.get(param, []):
            op, day = cond[:2], cond[2:]
            hits = [r for r in hits if (d := get(r)) and (d[:10] >= day if op == "ge" else d[:10] <= day)]
        for name, fields in (("code", CODE_FIELDS), ("category", ("category",))):
            for value in q.get(name, []):
                want = set(value.split(","))
                hits = [r for r in hits if want & set().union(*(codes_of(r.get(f)) for f in fields))]
        offset = int(q.get("_offset", ["0"])[0])
        size = min(int(q.get("_count", [str(self.max_page)])[0]), self.max_page)
        page = hits[offset : offset + size] if size else []
        entries = [
            {"fullUrl": f"{self.base_url}/{rtype}/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in page
        ]
        if f"{rtype}:medication" in q.get("_include", []):
            for r in page:
                ref = str((r.get("medicationReference") or {}).get("reference", ""))
                med = self.find("Medication", ref.split("/")[-1]) if ref.startswith("Medication/") else None
                if med is not None:
                    entries.append(
                        {"fullUrl": f"{self.base_url}/{ref}", "resource": med, "search": {"mode": "include"}}
                    )
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(hits),
            "entry": entries,
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
