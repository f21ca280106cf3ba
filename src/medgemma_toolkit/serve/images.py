"""Image URLs in chat messages to model-ready parts, under the operator's rules.

`data:` URIs (PNG, JPEG, DICOM as `application/dicom`) are always accepted. http(s) URLs only from hosts the
operator allow-listed (off by default: a server that fetches arbitrary URLs can be turned against the network it
sits in). A `data:application/zip` URI is a DICOM series (the files of one series, as the web page uploads a
dropped folder), read like a series folder. Local paths (`file://` or bare) only under the operator's `image_root`, and then through
`imaging.load_parts`, so every source kind the imaging layer knows (DICOM series folders, ...) works there too.
DICOMweb references (`dicomweb://`, `dicomweb+http://`, or http(s) URLs with `/studies/`) go to the imaging
layer's DICOMweb reader, under the same host allow-list; its credentials come from the server's environment.
Error messages name the image by its position, never by its content.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image

from ..core.messages import ImagePart, Part
from ..errors import BadInput
from ..imaging import ImageOptions, decode_image_bytes, load_image, load_parts, to_model_image
from ..imaging.budget import DecodeBudget
from ..imaging.dicom import looks_like_dicom
from ..imaging.options import Window, padded
from ..imaging.order import bytes_key
from ..imaging.pdf import pdf_pages
from ..imaging.series import series_files
from ..imaging.volume import load_series_bytes
from .config import ServeConfig
from .errors import APIError
from .gate import CLIENT_GONE
from .uploads import unzip_series

DATA_MIME = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "image/tiff": ".tif",
    "image/bmp": ".bmp",
    "application/dicom": ".dcm",
    "application/pdf": ".pdf",  # a document: one image per page (imaging/pdf.py)
    "image/dicom": ".dcm",
    "application/octet-stream": "",
    "application/zip": ".zip",  # a DICOM series, one file per instance (`serve/uploads.py`)
}


def decode_data_uri(url: str, label: str) -> tuple[bytes, str]:
    """`data:<mime>;base64,<payload>` -> (bytes, file-name hint used to pick the decoder)."""
    head, sep, payload = url.partition(",")
    if not sep:
        raise APIError(400, f"{label}: malformed data URI (no comma)", "invalid_image")
    meta = head[5:].split(";")
    mime = meta[0].strip().lower()
    if "base64" not in [m.strip().lower() for m in meta[1:]]:
        raise APIError(400, f"{label}: data URI must be base64-encoded", "invalid_image")
    if mime not in DATA_MIME:
        raise APIError(
            415,
            f"{label}: unsupported image type {mime[:60]!r}; use image/png, image/jpeg or application/dicom",
            "unsupported_image_type",
        )
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{label}: invalid base64 in data URI", "invalid_image") from None
    return data, label + DATA_MIME[mime]


class ImageResolver:
    """Turns one request's image URLs into parts; counts images against the per-request limit."""

    def __init__(
        self,
        config: ServeConfig,
        size: int,
        window: Window = None,
        ct_windows: str | None = None,
        pad: bool | None = None,
        keep_dicom: bool = False,
    ) -> None:
        self.config = config
        self.size = size
        # One budget for all of this request's images: declared pixels and decoding CPU, charged before each decode.
        budget = DecodeBudget(
            config.max_request_pixels,
            config.decode_budget_s,
            max_fetch_bytes=config.max_fetch_bytes,  # also each DICOMweb answer, counted as it streams
            max_text_chars=ImageOptions().max_text_chars,  # PDF text layers: one document's cap, for all of them
            stop=CLIENT_GONE.get(),  # set by the gate when the client disconnects
        )
        self.options = ImageOptions(
            window=window, max_pixels=config.max_pixels, budget=budget, ct_windows=ct_windows or "notebook", pad=pad
        )
        self.count = 0  # images so far (a series counts each slice)
        self.urls = 0
        # For `medgemma.sr` only (`serve/sr.py`): what an SR needs to cite the instances the model saw.
        self.keep_dicom = keep_dicom
        self.dicom_headers: dict[str, Any] = {}  # SOPInstanceUID -> header of DICOM bytes sent inline
        self.dicomweb_sources: list[str] = []  # DICOMweb references accepted under the allow-list
        self.original_header: Any = None  # the DICOM header of the image `original` decoded, if any

    def parts(self, url: str) -> list[Part]:
        self.urls += 1
        label = f"image {self.urls}"
        if self.count >= self.config.max_images:
            raise self._too_many()
        parts = self._resolve(url, label)
        self.count += sum(isinstance(p, ImagePart) for p in parts)
        if self.count > self.config.max_images:
            raise self._too_many()
        return parts

    def _too_many(self) -> APIError:
        return APIError(
            400,
            f"too many images: this server takes at most {self.config.max_images} per request "
            "(a series counts each slice)",
            "too_many_images",
        )

    def _host_allowed(self, url: str) -> bool:
        parts = urlsplit(url.replace("dicomweb+http://", "http://", 1).replace("dicomweb://", "https://", 1))
        host = (parts.hostname or "").lower()
        allowed = {h.lower() for h in self.config.allow_image_hosts}
        return bool(host) and (host in allowed or f"{host}:{parts.port}" in allowed)

    def _resolve(self, url: str, label: str) -> list[Part]:
        scheme = urlsplit(url).scheme.lower() if ":" in url[:20] else ""
        if scheme in ("dicomweb", "dicomweb+http") or (scheme in ("http", "https") and "/studies/" in url):
            return self._dicomweb(url, label)
        if scheme == "data":
            data, name = decode_data_uri(url, label)
            if name.endswith(".zip"):
                return self._series(data, label)
            if name.endswith(".pdf"):
                return pdf_pages(data, label, self.options, self.size)
            img = decode_image_bytes(data, name, self.options)
            # The decoded size lets clients map boxes given in original pixels onto the padded square.
            model_image = to_model_image(img, self.size, padded(self.options))
            info: dict = {"original_size": list(img.size)}
            if looks_like_dicom(data[:132]):  # its date orders it among the message's images (`order_groups`)
                info["acquired"] = bytes_key(data)
                kept = self._keep([data]) if self.keep_dicom else {}
                if kept:
                    info["sop_instance_uid"] = kept["sop_instance_uid"]
            return [ImagePart(model_image, info=info)]
        if scheme in ("http", "https"):
            data = self._fetch(url, label)
            img = decode_image_bytes(data, label, self.options)
            return [ImagePart(to_model_image(img, self.size, padded(self.options)))]
        if scheme in ("file", ""):
            return self._local(url, label, scheme == "file")
        raise APIError(400, f"{label}: unsupported URL scheme {scheme[:20]!r}; send a data: URI", "invalid_image_url")

    def original(self, url: str) -> Image.Image:
        """One 2D image (data: URI, allow-listed URL or DICOMweb instance, or file under the image root) as RGB at
        its own size, not yet padded: for answers given in the image's pixels (`/v1/medgemma/localize`)."""
        self.urls += 1
        label = f"image {self.urls}"
        scheme = urlsplit(url).scheme.lower() if ":" in url[:20] else ""
        if scheme in ("dicomweb", "dicomweb+http") or (scheme in ("http", "https") and "/studies/" in url):
            img = self._dicomweb_instance(url, label)
        elif scheme == "data":
            data, name = decode_data_uri(url, label)
            if name.endswith(".zip"):
                raise APIError(400, f"{label}: this endpoint takes one 2D image, not a series", "invalid_image_url")
            img = decode_image_bytes(data, name, self.options)
            if self.keep_dicom:
                self.original_header = self._keep([data]).get("header")
        elif scheme in ("http", "https"):
            img = decode_image_bytes(self._fetch(url, label), label, self.options)
        elif scheme in ("file", ""):
            path, raw = self._local_path(url, label, scheme == "file")
            if path.is_dir():
                raise APIError(400, f"{label}: this endpoint takes one 2D image, not a folder", "invalid_image_url")
            try:
                img = load_image(path, self.options)
            except BadInput as e:
                msg = re.sub(re.escape(str(path)) + r"[^\s:]*", lambda _m: raw, str(e))
                raise APIError(e.http_status, f"{label}: {msg}", "invalid_image") from None
            if self.keep_dicom:
                self.original_header = self._header_of(path)
        else:
            raise APIError(
                400, f"{label}: unsupported URL scheme {scheme[:20]!r}; send a data: URI", "invalid_image_url"
            )
        self.count += 1
        return img

    def _keep(self, blobs: list[bytes]) -> dict[str, Any]:
        """Remember the headers of DICOM `blobs` for the SR; returns `{"sop_instance_uid", "header"}` of the last
        one (the manifest of a single inline image then names its instance)."""
        from ..sr.inline import headers_from_bytes

        headers = headers_from_bytes(blobs)
        self.dicom_headers.update(headers)
        if not headers:
            return {}
        uid, header = list(headers.items())[-1]
        return {"sop_instance_uid": uid, "header": header}

    @staticmethod
    def _header_of(path: Path) -> Any:
        """A local file's DICOM header, or None when it is not DICOM (the SR's route then says so)."""
        from ..sr.evidence import read_header

        try:
            return read_header(path)
        except BadInput:
            return None

    def _local(self, url: str, label: str, is_file_url: bool) -> list[Part]:
        path, raw = self._local_path(url, label, is_file_url)
        base = Path(str(self.config.image_root)).resolve()
        try:
            self._check_folder(path, base, label)
            return load_parts(path, self.options, self.size)
        except BadInput as e:
            # imaging names files by their paths: show the client only the path it gave, never a file inside it
            msg = re.sub(re.escape(str(path)) + r"[^\s:]*", lambda _m: raw, str(e))
            raise APIError(e.http_status, f"{label}: {msg}", "invalid_image") from None

    def _local_path(self, url: str, label: str, is_file_url: bool) -> tuple[Path, str]:
        """The checked path under the image root, and the path as the client gave it (for messages)."""
        root = self.config.image_root
        if root is None:
            raise APIError(
                400,
                f"{label}: local file paths are not accepted by this server; send a data: URI",
                "image_source_not_allowed",
            )
        raw = unquote(urlsplit(url).path) if is_file_url else url
        base = Path(root).resolve()
        try:
            if len(raw) > 4096 or "\0" in raw:
                raise ValueError
            path = (base / raw).resolve() if not os.path.isabs(raw) else Path(raw).resolve()
            inside = path == base or base in path.parents
            exists = inside and path.exists()
        except (OSError, ValueError):  # NUL bytes, names too long for the file system
            raise APIError(400, f"{label}: not a usable file path", "invalid_image_url") from None
        if not inside:
            raise APIError(400, f"{label}: path is outside the server's image root", "image_source_not_allowed")
        if not exists:
            raise APIError(400, f"{label}: no such file under the image root", "invalid_image_url")
        return path, raw

    def _series(self, data: bytes, label: str) -> list[Part]:
        """An uploaded series (a ZIP of its DICOM files), through the same imaging path as a series folder."""
        items = unzip_series(data, label, self.config.max_body_bytes)
        if self.keep_dicom:
            self._keep([blob for _, blob in items])
        if self.count + min(len(items), self.options.max_slices) > self.config.max_images:
            raise self._too_many()
        try:
            return load_series_bytes(items, self.options, self.size)
        except BadInput as e:
            raise APIError(e.http_status, f"{label}: {e}", "invalid_image") from None

    def _check_folder(self, path: Path, base: Path, label: str) -> None:
        """Before anything decodes: a folder (series, slide) must not link outside the root, and the images it
        will yield (one per file, at most `max_slices`) must fit the request's image limit."""
        files = series_files(str(path)) if path.is_dir() else None
        if files is None:
            return
        for f in files:
            real = f.resolve()
            if base not in real.parents:
                raise APIError(
                    400,
                    f"{label}: the folder holds a link that leads outside the server's image root",
                    "image_source_not_allowed",
                )
        if self.count + min(len(files), self.options.max_slices) > self.config.max_images:
            raise self._too_many()

    def _refuse_host(self, url: str, label: str) -> APIError:
        host = urlsplit(url).hostname or ""
        return APIError(
            400,
            f"{label}: image URLs from host {host[:100]!r} are not allowed by this server; send a data: URI",
            "image_source_not_allowed",
        )

    def _dicomweb(self, url: str, label: str) -> list[Part]:
        """A DICOMweb study/series/instance, read by the imaging layer; the same host allow-list applies."""
        if not self._host_allowed(url):
            raise self._refuse_host(url, label)
        if self.keep_dicom:
            self.dicomweb_sources.append(url)
        try:
            return load_parts(url, self.options, self.size)
        except BadInput as e:  # imaging's messages name the host and status, never UIDs or header values
            raise APIError(
                e.http_status, f"{label}: {e}", e.code if e.code != "invalid_request_error" else "invalid_image"
            ) from None

    def _dicomweb_instance(self, url: str, label: str) -> Image.Image:
        """One DICOMweb instance (or a study/series holding one) for `original`, under the same allow-list."""
        from ..imaging.dicom import dicom_to_rgb
        from ..imaging.dicomweb import fetch_one_instance, parse_dicomweb_uri

        if not self._host_allowed(url):
            raise self._refuse_host(url, label)
        try:
            ref = parse_dicomweb_uri(url)
            assert ref is not None  # the caller saw a DICOMweb URL
            ds = fetch_one_instance(ref, self.options.budget)
            img = dicom_to_rgb(ds, label, self.options)
        except BadInput as e:  # imaging's messages name the host and status, never UIDs or header values
            raise APIError(
                e.http_status, f"{label}: {e}", e.code if e.code != "invalid_request_error" else "invalid_image"
            ) from None
        if self.keep_dicom:
            for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
                if key in ds:
                    del ds[key]
            self.original_header = ds
        return img

    def _fetch(self, url: str, label: str) -> bytes:
        if not self._host_allowed(url):
            raise self._refuse_host(url, label)
        import httpx

        limit = self.config.max_fetch_bytes
        try:
            # No redirects: a redirect could leave the allow-listed host.
            with httpx.stream("GET", url, timeout=20.0, follow_redirects=False) as r:
                if r.status_code != 200:
                    raise APIError(
                        400, f"{label}: fetching the image URL returned HTTP {r.status_code}", "image_fetch_failed"
                    )
                chunks, total = [], 0
                budget = self.options.budget
                for chunk in r.iter_bytes():
                    if budget is not None:
                        budget.check_stop()  # the client is gone: stop fetching for nobody
                    total += len(chunk)
                    if total > limit:
                        raise APIError(413, f"{label}: image URL content exceeds {limit:,} bytes", "image_too_large")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as e:
            raise APIError(400, f"{label}: cannot fetch image URL ({type(e).__name__})", "image_fetch_failed") from None
