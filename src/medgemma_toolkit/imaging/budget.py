"""A decode budget shared by every image of one request: pixels and CPU seconds, charged before each decode.

`max_pixels` bounds one image; a request of many images (16 JPEG 2000 frames of 64 Mpx each, 19 KB on the wire)
could still cost half a minute of CPU. The server gives each request one `DecodeBudget` (through
`ImageOptions.budget`); each decoder charges the size the file declares before it decodes, so the request is
refused before the image that would overdraw it, not after.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..errors import BadInput, ImageTooLarge


class Abandoned(BadInput):
    """The request's client went away: its image work stops (the server logs it as 499, never answers it)."""

    http_status = 499


@dataclass
class DecodeBudget:
    """Pixels (declared sizes, summed) and CPU seconds (of the decoding thread, checked between images); with
    `max_fetch_bytes`, the bytes one outbound response may stream (counted as they arrive, whatever it declared);
    with `stop`, an event the server sets when the client is gone, checked between images and between chunks."""

    max_pixels: int
    max_cpu_s: float | None = None
    used_pixels: int = 0
    max_fetch_bytes: int | None = None
    # Characters of document text layers (PDF `pdf_text`), summed over the request; None: no request-wide cap
    max_text_chars: int | None = None
    used_text_chars: int = 0
    stop: threading.Event | None = field(default=None, repr=False, compare=False)
    _cpu_start: float | None = field(default=None, repr=False)

    def check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Abandoned("the client closed the connection; the request's image work stopped")

    def charge(self, pixels: int, name: str) -> None:
        self.check_stop()
        now = time.thread_time()
        if self._cpu_start is None:
            self._cpu_start = now
        elif self.max_cpu_s is not None and now - self._cpu_start > self.max_cpu_s:
            raise ImageTooLarge(
                f"{name}: decoding this request's images took over {self.max_cpu_s:g} s of CPU; "
                "send fewer or smaller images"
            )
        if self.used_pixels + pixels > self.max_pixels:
            raise ImageTooLarge(
                f"{name}: this request's images add up to over {self.max_pixels:,} pixels; send fewer or smaller images"
            )
        self.used_pixels += pixels

    def charge_text(self, chars: int, name: str) -> None:
        """Text read from documents counts against the request like pixels do: refused before it is kept."""
        self.check_stop()
        if self.max_text_chars is not None and self.used_text_chars + chars > self.max_text_chars:
            raise ImageTooLarge(
                f"{name}: this request's documents add up to over {self.max_text_chars:,} characters of text"
            )
        self.used_text_chars += chars
