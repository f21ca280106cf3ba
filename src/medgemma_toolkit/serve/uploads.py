"""A DICOM series uploaded in one image URL: `data:application/zip;base64,...` holding the series' files.

A browser cannot send a folder as a URL, and one `data:` URI per slice would be N separate 2D images; a ZIP of the
files is one source, read like a series folder under `--image-root` (`imaging.volume.load_series_bytes`). The web
page builds such archives (stored, uncompressed). Archives are bounded before anything is inflated: the number of
entries, each entry's size and the total, with reads capped at those sizes (declared sizes are not trusted).
"""

from __future__ import annotations

import io
import zipfile

from ..imaging.series import MAX_SERIES_FILES
from .errors import APIError


def _skipped(name: str) -> bool:
    """Folders, macOS resource forks and hidden files that archivers add beside the series."""
    base = name.rsplit("/", 1)[-1]
    return name.endswith("/") or name.startswith("__MACOSX/") or base.startswith(".") or base.upper() == "DICOMDIR"


def unzip_series(data: bytes, label: str, max_total: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each file in the archive, in archive order; at most `max_total` bytes inflated in all."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in zf.infolist() if not _skipped(i.filename)]
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise APIError(400, f"{label}: not a readable ZIP archive", "invalid_image") from None
    if not infos:
        raise APIError(400, f"{label}: the archive holds no files", "invalid_image")
    if len(infos) > MAX_SERIES_FILES:
        raise APIError(
            400, f"{label}: {len(infos):,} files in the archive; at most {MAX_SERIES_FILES:,}", "invalid_image"
        )
    out: list[tuple[str, bytes]] = []
    total = 0
    with zf:
        for k, info in enumerate(infos):
            if info.flag_bits & 0x1:
                raise APIError(400, f"{label}: encrypted archives are not accepted", "invalid_image")
            try:
                with zf.open(info) as f:
                    body = f.read(max_total - total + 1)
            except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError, OSError):
                raise APIError(400, f"{label}: file {k + 1} of the archive cannot be read", "invalid_image") from None
            total += len(body)
            if total > max_total:
                raise APIError(
                    413, f"{label}: the archive inflates to more than {max_total:,} bytes", "image_too_large"
                )
            # Named by position, not by the user's file names: the page maps positions back to its own files.
            out.append((f"{label} file {k + 1}", body))
    return out
