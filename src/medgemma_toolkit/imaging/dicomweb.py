"""DICOMweb sources: study, series or instance URIs fetched with dicomweb-client (QIDO-RS search, WADO-RS).

Accepted forms (ROOT is the server's DICOMweb root, e.g. ``pacs.example.org/dicom-web``):

- ``dicomweb://ROOT/studies/S[/series/R[/instances/I]]`` (HTTPS), ``dicomweb+http://...`` (plain HTTP, for
  a PACS on the local network), or the same path as an ``https://`` / ``http://`` URL. ``I`` may be several
  SOP Instance UIDs joined by commas (UIDs hold only digits and dots): that set of the series, read as a series.

A study becomes its largest series; a CT/MR/PT series with several instances becomes a volume (`volume.py`);
any other series or an instance becomes one 2D image per instance. Credentials come from the environment, never
from the command line: ``MEDGEMMA_DICOMWEB_TOKEN`` (bearer) or ``MEDGEMMA_DICOMWEB_USER`` +
``MEDGEMMA_DICOMWEB_PASSWORD`` (basic). Requests time out, are retried on connection errors and 5xx answers,
and are capped in count and bytes; instances are retrieved four at a time. Redirects are never followed (a redirect
could lead off the operator's allow-list), and credentials go only to the host the URI names. Errors name the host
and the HTTP status, never UIDs or header values.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ..core.messages import ImagePart, Part
from ..errors import BackendUnavailable, BadInput, ImageTooLarge
from .budget import DecodeBudget
from .dicom import dicom_to_rgb, quiet_pydicom
from .options import ImageOptions, padded
from .series import MAX_SERIES_FILES
from .square import to_model_image

if TYPE_CHECKING:  # annotations only: requests, pydicom and dicomweb-client load when a DICOMweb source is read
    import requests
    from dicomweb_client.api import DICOMwebClient
    from pydicom import Dataset

T = TypeVar("T")

TIMEOUT_S = (10.0, 120.0)  # connect, read
RETRIES = 3
MAX_INSTANCE_BYTES = 512 * 1024**2
MAX_TOTAL_BYTES = 4 * 1024**3
PARALLEL = 4  # concurrent WADO-RS retrieves: a PACS answers one instance per round trip


class DicomWebError(BadInput):
    """The DICOMweb server could not be reached or refused the request."""

    http_status = 502
    code = "dicomweb_error"


@dataclass(frozen=True)
class DicomWebRef:
    root: str  # http(s)://host[:port]/path of the DICOMweb service
    host: str  # for messages
    study: str
    series: str | None = None
    instance: str | None = None  # one SOP Instance UID, or several joined by commas (a set read as one series)

    @property
    def instances(self) -> list[str]:
        return [i for i in (self.instance or "").split(",") if i]


def parse_dicomweb_uri(source: str) -> DicomWebRef | None:
    """Split a DICOMweb URI; None when `source` is not one (ordinary paths and non-DICOMweb URLs)."""
    low = source[:16].lower()
    if low.startswith("dicomweb+http://"):
        scheme, rest = "http", source[len("dicomweb+http://") :]
    elif low.startswith("dicomweb://"):
        scheme, rest = "https", source[len("dicomweb://") :]
    elif low.startswith(("http://", "https://")) and "/studies/" in source:
        scheme, rest = source.split("://", 1)
        scheme = scheme.lower()
    else:
        return None
    parts = urlsplit(f"{scheme}://{rest}")
    if parts.query or parts.fragment:
        raise BadInput("DICOMweb URI must not carry a query or fragment")
    if parts.username or parts.password:
        raise BadInput("put DICOMweb credentials in MEDGEMMA_DICOMWEB_USER/PASSWORD or _TOKEN, not in the URI")
    path = parts.path.rstrip("/")
    if "/studies/" not in path + "/":
        raise BadInput(f"DICOMweb URI for {parts.hostname}: expected .../studies/<StudyInstanceUID>[/series/...]")
    root, _, tail = path.partition("/studies/")
    segs = [s for s in tail.split("/") if s]
    study = segs[0] if segs else ""
    series = instance = None
    rest_segs = segs[1:]
    if rest_segs[:1] == ["series"] and len(rest_segs) >= 2:
        series = rest_segs[1]
        rest_segs = rest_segs[2:]
        if rest_segs[:1] == ["instances"] and len(rest_segs) >= 2:
            instance = rest_segs[1]
            rest_segs = rest_segs[2:]
    if not study or rest_segs:
        raise BadInput(f"DICOMweb URI for {parts.hostname}: expected .../studies/S[/series/R[/instances/I]]")
    netloc = parts.netloc
    return DicomWebRef(f"{scheme}://{netloc}{root}", parts.hostname or netloc, study, series, instance)


def _same_origin(url: str, root: str) -> bool:
    a, b = urlsplit(url), urlsplit(root)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _counted(response: requests.Response, limit: int, budget: DecodeBudget | None) -> None:
    """Make `response` stop at `limit` streamed bytes (a chunked answer declares no length) and when the request
    that wanted it is abandoned: both checked per chunk as it arrives."""
    raw = response.raw
    stream = getattr(raw, "stream", None)
    if stream is None:
        return

    def counted(*args: Any, **kwargs: Any) -> Iterator[bytes]:
        total = 0
        try:
            for chunk in stream(*args, **kwargs):
                total += len(chunk)
                if total > limit:
                    raise ImageTooLarge(f"DICOMweb response is over the limit of {limit:,} bytes")
                if budget is not None:
                    budget.check_stop()
                yield chunk
        except BaseException:
            raw.close()  # hang up now: the sender stops, and nothing more is read for nobody
            raise

    raw.stream = counted


def _session(ref: DicomWebRef, budget: DecodeBudget | None = None) -> requests.Session:
    """A requests session with credentials from the environment (sent to `ref`'s origin only), timeouts, retries,
    a size cap on the bytes each answer streams (the budget's `max_fetch_bytes`, else `MAX_INSTANCE_BYTES`), and
    no redirects."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    class _OriginAuth(requests.auth.AuthBase):
        """Adds the credentials header only to requests for the DICOMweb server's own origin."""

        def __init__(self, header: str) -> None:
            self.header = header

        def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
            if r.url is not None and _same_origin(r.url, ref.root):
                r.headers["Authorization"] = self.header
            return r

    class _Adapter(HTTPAdapter):
        def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:  # type: ignore[override]
            if kw.get("timeout") is None:
                kw["timeout"] = TIMEOUT_S
            return super().send(request, **kw)

    # dicomweb-client and urllib3 log request paths, which hold study and series UIDs.
    for name in ("urllib3", "dicomweb_client"):
        logging.getLogger(name).setLevel(logging.ERROR)
    s = requests.Session()
    s.max_redirects = 0
    retry = Retry(
        total=RETRIES,
        connect=RETRIES,
        read=RETRIES,
        backoff_factor=0.3,
        status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET"}),
    )
    s.mount("http://", _Adapter(max_retries=retry))
    s.mount("https://", _Adapter(max_retries=retry))
    token = os.environ.get("MEDGEMMA_DICOMWEB_TOKEN")
    user, password = os.environ.get("MEDGEMMA_DICOMWEB_USER"), os.environ.get("MEDGEMMA_DICOMWEB_PASSWORD")
    if token:
        s.auth = _OriginAuth(f"Bearer {token}")
    elif user is not None:
        s.auth = _OriginAuth("Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode())

    limit = budget.max_fetch_bytes if budget is not None and budget.max_fetch_bytes else MAX_INSTANCE_BYTES

    def _cap(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.is_redirect or 300 <= response.status_code < 400:  # checked before requests would follow it
            raise DicomWebError(
                f"DICOMweb server {ref.host} answered with a redirect (HTTP {response.status_code}); "
                "redirects are not followed"
            )
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:  # an early refusal; the count is what holds
            raise ImageTooLarge(f"DICOMweb response of {int(declared):,} bytes is over the limit of {limit:,}")
        _counted(response, limit, budget)

    s.hooks["response"].append(_cap)
    return s


def _client(ref: DicomWebRef, budget: DecodeBudget | None = None) -> DICOMwebClient:
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError:
        raise BackendUnavailable("DICOMweb needs dicomweb-client: pip install 'medgemma-toolkit[imaging]'") from None
    client = DICOMwebClient(ref.root, session=_session(ref, budget))
    # The session's urllib3 retries (bounded backoff) replace the client's own, which wait up to a minute.
    client.set_http_retry_params(retry=False)
    return client


def _call(ref: DicomWebRef, what: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Run one client call; every failure becomes a one-line `DicomWebError` naming the host and status."""
    import requests

    try:
        return fn(*args, **kw)
    except (BadInput, BackendUnavailable):
        raise
    except requests.HTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        hint = (
            {
                401: " (unauthorised: set MEDGEMMA_DICOMWEB_TOKEN or _USER/_PASSWORD)",
                403: " (forbidden)",
                404: " (not found)",
            }.get(status, "")
            if isinstance(status, int)
            else ""
        )
        raise DicomWebError(f"DICOMweb {what} on {ref.host} failed: HTTP {status}{hint}") from None
    except requests.exceptions.RetryError:
        raise DicomWebError(f"DICOMweb {what} on {ref.host} failed after {RETRIES} retries") from None
    except requests.Timeout:
        raise DicomWebError(f"DICOMweb {what} on {ref.host} timed out") from None
    except requests.ConnectionError as e:
        if "timed out" in repr(e.args[0] if e.args else e).lower():  # read timeouts after the last retry
            raise DicomWebError(f"DICOMweb {what} on {ref.host} timed out") from None
        raise DicomWebError(f"cannot connect to the DICOMweb server {ref.host}") from None
    except Exception as e:  # malformed multipart, JSON or DICOM in the answer
        raise DicomWebError(f"DICOMweb {what} on {ref.host}: unusable answer ({type(e).__name__})") from None


def _value(obj: dict[str, Any], tag: str) -> Any:
    vals = (obj.get(tag) or {}).get("Value") or []
    return vals[0] if vals else None


def fetch_datasets(ref: DicomWebRef, budget: DecodeBudget | None = None) -> list:
    """Search and retrieve the instances `ref` names (for a study: its largest series), as pydicom datasets."""
    quiet_pydicom()
    client = _client(ref, budget)
    if len(ref.instances) > 1:  # a given set of a series' instances (Google's container takes such lists)
        if len(ref.instances) > MAX_SERIES_FILES:
            raise BadInput(f"DICOMweb instance list on {ref.host} has more than {MAX_SERIES_FILES:,} instances")
        return _retrieve_all(ref, str(ref.series), ref.instances, budget)
    if ref.instance:
        return [_call(ref, "retrieve", client.retrieve_instance, ref.study, ref.series, ref.instance)]
    series = ref.series
    if series is None:
        found = _call(ref, "search", client.search_for_series, ref.study, fields=["0020000E", "00201209", "00080060"])
        if not found:
            raise DicomWebError(f"DICOMweb study on {ref.host} has no series")

        def size(s: dict) -> int:
            n = _value(s, "00201209")
            return int(n) if isinstance(n, (int, float, str)) and str(n).isdigit() else 0

        series = _value(max(found, key=size), "0020000E")
        if not series:
            raise DicomWebError(f"DICOMweb search on {ref.host}: series without SeriesInstanceUID")
    instances = _call(
        ref, "search", client.search_for_instances, ref.study, series, fields=["00080018"], limit=MAX_SERIES_FILES + 1
    )
    if not instances:
        raise DicomWebError(f"DICOMweb series on {ref.host} has no instances")
    if len(instances) > MAX_SERIES_FILES:
        raise BadInput(f"DICOMweb series on {ref.host} has more than {MAX_SERIES_FILES:,} instances")
    sops = [sop for sop in (_value(inst, "00080018") for inst in instances) if sop]
    return _retrieve_all(ref, series, sops, budget)


def fetch_one_instance(ref: DicomWebRef, budget: DecodeBudget | None = None) -> Any:
    """The one instance `ref` names, or the only instance of its series or study (a QIDO-RS search of at most two
    answers first): for commands that take one 2D image (`localize`). A reference to several instances is a one-line
    error before anything is retrieved."""
    if len(ref.instances) > 1:
        raise BadInput(f"DICOMweb reference on {ref.host} names {len(ref.instances)} instances; give one")
    if not ref.instance:
        client = _client(ref, budget)
        found = _call(
            ref, "search", client.search_for_instances, ref.study, ref.series,
            fields=["0020000E", "00080018"], limit=2,
        )  # fmt: skip
        what = "series" if ref.series else "study"
        if len(found) != 1:
            held = "no instance" if not found else "more than one instance"
            raise BadInput(
                f"DICOMweb {what} on {ref.host} holds {held}; one image is needed: give "
                ".../series/<SeriesInstanceUID>/instances/<SOPInstanceUID>"
            )
        series, sop = _value(found[0], "0020000E") or ref.series, _value(found[0], "00080018")
        if not series or not sop:
            raise DicomWebError(f"DICOMweb search on {ref.host}: instance without its UIDs")
        ref = DicomWebRef(ref.root, ref.host, ref.study, str(series), str(sop))
    return fetch_datasets(ref, budget)[0]


def _retrieve_all(ref: DicomWebRef, series: str, sops: list[str], budget: DecodeBudget | None = None) -> list:
    """WADO-RS retrieve of each instance, `PARALLEL` at a time (one session per worker), in search order. With a
    budget's byte cap, the whole series may hold at most 4x that cap (a server holds it all before decoding)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()
    total = 0
    lock = threading.Lock()
    cap = 4 * budget.max_fetch_bytes if budget is not None and budget.max_fetch_bytes else MAX_TOTAL_BYTES

    def one(sop: str) -> Dataset:
        nonlocal total
        if not hasattr(local, "client"):
            local.client = _client(ref, budget)
        if budget is not None:
            budget.check_stop()
        ds = _call(ref, "retrieve", local.client.retrieve_instance, ref.study, series, sop)
        with lock:
            total += len(getattr(ds, "PixelData", b"") or b"")
            if total > cap:
                raise ImageTooLarge(f"DICOMweb series on {ref.host} is over {cap:,} bytes of pixel data")
        return ds

    with ThreadPoolExecutor(max_workers=min(PARALLEL, max(1, len(sops)))) as pool:
        futures = [pool.submit(one, sop) for sop in sops]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:  # after the first error, do not start the rest
                f.cancel()


def dicomweb_parts(ref: DicomWebRef, options: ImageOptions, size: int) -> list[Part]:
    from .volume import instances_parts

    datasets = fetch_datasets(ref, options.budget)
    items = [(f"{ref.host} instance {k + 1}", ds) for k, ds in enumerate(datasets)]
    if len(ref.instances) == 1:  # one instance is one 2D image, like a single local file
        from .manifest import dicom_info

        info = {**dicom_info(items[0][0], datasets[0]), "source": None}  # None: load_parts fills in the URI
        rgb = dicom_to_rgb(datasets[0], items[0][0], options)
        return [ImagePart(to_model_image(rgb, size, padded(options)), info=info)]
    return instances_parts(items, options, size, f"DICOMweb series on {ref.host}")


def read_dicomweb_source(source: str, options: ImageOptions, size: int) -> list[Part] | None:
    """`load_parts` reader for DICOMweb URIs (None for anything else)."""
    ref = parse_dicomweb_uri(source)
    if ref is None:
        return None
    return dicomweb_parts(ref, options, size)
