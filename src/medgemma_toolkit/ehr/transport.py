"""The one way `ehr` talks to a FHIR server: GET over httpx, with our own origin check and bounds on every request.

Why our own client and not fhirpy's paging: fhirpy 2.3 accepts a `Bundle.link` "next" when the base URL occurs
anywhere in the link's text, so `http://127.0.0.1:OTHER/steal?from=<base>/Condition` was followed with the bearer
token; and it pages without bound. Here every URL (search, read, each `next`) must have the scheme, host, port and
base path of `--fhir` before a request is even built; redirects are never followed (a 3xx is refused, so no hop can
carry the token elsewhere); each response is streamed and dropped at `max_response_bytes`; a search stops at
`max_pages` pages or `max_resources` resources, and at the first `next` URL it has already fetched. Each bound is a
`FhirLimits` field and a CLI flag; crossing one is a one-line `FhirLimitExceeded`.

Errors name the server's base URL (the user's own option) and the status or the rule broken, never a resource's
content, the token or the offending link (a hostile server chooses that text).
"""

from __future__ import annotations

import json
import os
import ssl
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from ..errors import BackendUnavailable, BadInput

TOKEN_ENV = "MEDGEMMA_FHIR_TOKEN"


class FhirLimitExceeded(BadInput):
    """A FHIR server's answer crossed one of our bounds (pages, bytes, resources, time, a paging loop)."""


class FhirStatusError(BadInput):
    """The server answered one request with an HTTP error other than 401/403/404/410 (e.g. 400 for a search
    parameter it does not support)."""


class OffOrigin(BadInput):
    """A URL the server gave us (a `next` link, a redirect) points outside `--fhir`'s origin and base path."""


@dataclass(frozen=True)
class FhirLimits:
    """Bounds on what one `ehr` run reads from a FHIR server; each is a long-form CLI flag (cli/ehr.py)."""

    max_pages: int = 100  # pages of one search (Bundle.link "next" hops + 1)
    max_resources: int = 5000  # resources of one search, all pages together
    max_response_bytes: int = 16 * 1024 * 1024  # one HTTP response body, counted as it streams in
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0  # between two chunks, and for one whole response

    def check(self) -> None:
        for name, v in (("--max-pages", self.max_pages), ("--max-resources", self.max_resources)):
            if v < 1:
                raise BadInput(f"{name} must be at least 1")
        if self.max_response_bytes < 1024:
            raise BadInput("--max-response-mb must allow at least 1 KiB")
        if not (0 < self.connect_timeout_s < 86400 and 0 < self.read_timeout_s < 86400):  # NaN fails too
            raise BadInput("--connect-timeout and --read-timeout must be positive")


@dataclass(frozen=True)
class Origin:
    """Scheme, host, port and base path of `--fhir`: what every request URL must share."""

    scheme: str
    host: str
    port: int
    path: str  # without the trailing slash, e.g. "/fhir"

    @classmethod
    def of(cls, url: str) -> Origin:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise BadInput("--fhir must be an http(s) URL with a host")
        if u.username or u.password:
            raise BadInput("--fhir must not carry credentials; put the token in $" + TOKEN_ENV)
        if u.query or u.fragment:
            raise BadInput("--fhir must be the server's base URL, without ?query or #fragment")
        try:
            port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            raise BadInput("--fhir has an invalid port") from None
        return cls(u.scheme, u.hostname.lower(), port, u.path.rstrip("/"))

    @property
    def base_url(self) -> str:
        default = 443 if self.scheme == "https" else 80
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        if ":" in self.host:  # IPv6 literal
            netloc = f"[{self.host}]" if self.port == default else f"[{self.host}]:{self.port}"
        return f"{self.scheme}://{netloc}{self.path}"

    def admits(self, url: str) -> bool:
        """True when `url` has our scheme, host and port, and its path lies under our base path."""
        try:
            u = urlsplit(url)
            port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            return False
        if u.scheme != self.scheme or (u.hostname or "").lower() != self.host or port != self.port:
            return False
        if u.username or u.password or "\\" in url:
            return False
        segments = u.path.split("/")
        if any(s in (".", "..") for s in segments) or "%2e" in u.path.lower() or "%2f" in u.path.lower():
            return False  # no climbing out of the base path, literally or percent-encoded
        return u.path == self.path or u.path.startswith(self.path + "/")


class FhirHttp:
    """GET JSON from one FHIR server under `limits`; the token goes only to URLs `origin.admits`."""

    def __init__(self, base_url: str, token: str | None, limits: FhirLimits = FhirLimits()) -> None:
        import httpx

        limits.check()
        self.origin = Origin.of(base_url)
        self.base_url = self.origin.base_url
        self.limits = limits
        self.description = f"FHIR server {self.base_url}"
        # We decode compressed bodies ourselves (`inflate`), bounded, so only the encodings we can bound are asked for.
        headers = {"Accept": "application/fhir+json", "Accept-Encoding": "gzip, deflate"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            headers=headers,
            follow_redirects=False,  # a redirect is refused below, never followed with the token
            trust_env=False,  # no proxy from the environment sees the token either
            verify=_tls_context(),
            timeout=httpx.Timeout(limits.read_timeout_s, connect=limits.connect_timeout_s),
        )

    def close(self) -> None:
        self._client.close()

    def get(self, url: str) -> dict[str, Any] | None:
        """One JSON object from `url` (which must be on our origin); None for 404/410."""
        import httpx

        if not self.origin.admits(url):
            raise OffOrigin(f"{self.description} sent a link off its base URL; refused (the token was not sent)")
        try:
            with self._client.stream("GET", url) as resp:
                deadline = time.monotonic() + self.limits.read_timeout_s  # for the whole body, from its headers
                if 300 <= resp.status_code < 400:
                    raise OffOrigin(
                        f"{self.description} answered with a redirect ({resp.status_code}); redirects are not "
                        "followed, so the token goes nowhere else: give --fhir the final base URL"
                    )
                if resp.status_code in (404, 410):
                    return None
                if resp.status_code == 401:
                    raise BadInput(f"{self.description} refused our credentials (401); set ${TOKEN_ENV}")
                if resp.status_code == 403:
                    raise BadInput(f"{self.description} denied access (403); check ${TOKEN_ENV}'s permissions")
                if resp.status_code >= 400:
                    raise FhirStatusError(f"{self.description} answered with an error ({resp.status_code})")
                encoding = resp.headers.get("content-encoding", "identity").strip().lower() or "identity"
                if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
                    raise BadInput(f"{self.description} answered in a content encoding we do not read")
                raw = resp.iter_raw()  # not iter_bytes: httpx would inflate a whole chunk at once, unbounded
                chunks = raw if encoding == "identity" else inflate(raw, self.description)
                body = self._read_capped(chunks, resp.headers.get("content-length"), deadline)
        except httpx.TimeoutException:
            raise BackendUnavailable(
                f"{self.description} did not answer in time (--connect-timeout/--read-timeout)"
            ) from None
        except httpx.TransportError:
            raise BackendUnavailable(f"{self.description} is unreachable or broke off the answer") from None
        return parse_json(body, self.description)

    def _read_capped(self, chunks: Iterator[bytes], declared: str | None, deadline: float) -> bytes:
        cap = self.limits.max_response_bytes
        too_big = FhirLimitExceeded(
            f"{self.description} sent a response over {cap / 2**20:g} MiB; stopped reading (raise --max-response-mb)"
        )
        if declared and declared.isdigit() and int(declared) > cap:
            raise too_big  # refused before a byte of the body is read
        buf = bytearray()
        for chunk in chunks:
            buf += chunk
            if len(buf) > cap:
                raise too_big
            if time.monotonic() > deadline:  # a server dripping bytes keeps each read short but never ends
                raise FhirLimitExceeded(
                    f"{self.description} took longer than {self.limits.read_timeout_s:g} s to send one response "
                    "(raise --read-timeout)"
                )
        return bytes(buf)

    def search(self, url: str) -> Iterator[dict[str, Any]]:
        """The entries of a searchset Bundle at `url` and of every page after it, under the limits.

        Yields `Bundle.entry` items (with `resource` and `search.mode`). Stops with `FhirLimitExceeded` at
        `max_pages` or `max_resources`, or when a `next` link repeats a URL already fetched (a paging loop)."""
        fetched: set[str] = set()
        pages = resources = 0
        next_url: str | None = url
        while next_url is not None:
            if next_url in fetched:
                raise FhirLimitExceeded(f"{self.description} sent a paging loop (a next link it had already sent)")
            if pages >= self.limits.max_pages:
                raise FhirLimitExceeded(
                    f"{self.description}: a search ran past {self.limits.max_pages} pages (raise --max-pages)"
                )
            fetched.add(next_url)
            pages += 1
            bundle = self.get(next_url)
            if bundle is None:
                return
            if bundle.get("resourceType") != "Bundle":
                raise BadInput(f"{self.description} answered a search with something that is not a Bundle")
            entries = bundle.get("entry") or []
            if not isinstance(entries, list):
                raise BadInput(f"{self.description} answered a search with a malformed Bundle.entry")
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                    continue
                resources += 1
                if resources > self.limits.max_resources:
                    raise FhirLimitExceeded(
                        f"{self.description}: a search returned over {self.limits.max_resources} resources "
                        "(raise --max-resources)"
                    )
                yield entry
            link = next_link(bundle)
            next_url = urljoin(next_url, link) if link is not None else None  # relative links resolved, then checked


def _tls_context() -> ssl.SSLContext:
    """The system's CAs, or $SSL_CERT_FILE's (trust_env=False would otherwise drop it with the proxies)."""
    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)


def inflate(raw: Iterator[bytes], what: str, step: int = 65536) -> Iterator[bytes]:
    """Decode a gzip or zlib body `step` bytes at a time, so a small compressed bomb (1 KB of gzip can hold 1 MB)
    never expands past the caller's byte cap in one piece."""
    d = zlib.decompressobj(wbits=47)  # 32 + 15: a gzip or a zlib header, detected
    try:
        for chunk in raw:
            data = chunk
            while True:
                out = d.decompress(data, step)
                if out:
                    yield out
                data = d.unconsumed_tail
                if not data and len(out) < step:  # input used up and nothing held back
                    break
    except zlib.error:
        raise BadInput(f"{what} sent a compressed body that does not decode") from None


MAX_DEPTH = 64  # FHIR resources nest a dozen levels; a deeper document is an attack on the parser's recursion


def parse_json(body: bytes | str, what: str) -> dict[str, Any]:
    """One JSON object, or a one-line error: not JSON, an integer too long for Python (ValueError), nesting deep
    enough to exhaust recursion (RecursionError) or deeper than `MAX_DEPTH` (the tools walk it recursively)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadInput(f"{what} answered with something that is not usable JSON") from None
    if not isinstance(doc, dict):
        raise BadInput(f"{what} answered with JSON that is not a FHIR resource")
    if depth_over(doc, MAX_DEPTH):
        raise BadInput(f"{what} answered with JSON nested deeper than {MAX_DEPTH} levels")
    return doc


def depth_over(doc: Any, limit: int) -> bool:
    """Whether `doc` nests deeper than `limit` (iterative: a deep document cannot exhaust the stack here)."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False


def next_link(bundle: dict[str, Any]) -> str | None:
    """`Bundle.link` with relation "next", if any."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None
