"""A decode budget shared by every image of one request: pixels and CPU seconds, charged before each decode.

`max_pixels` bounds one image; a request of many images (16 JPEG 2000 frames of 64 Mpx each, 19 KB on the wire)
could still cost half a minute of CPU. The server gives each request one `DecodeBudget` (through
`ImageOptions.budget`); each decoder charges the size the file declares before it decodes, so the request is
refused before the image that would overdraw it, not after.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import ImageTooLarge


@dataclass
class DecodeBudget:
    """Pixels (declared sizes, summed) and CPU seconds (of the decoding thread, checked between images)."""

    max_pixels: int
    max_cpu_s: float | None = None
    used_pixels: int = 0
    _cpu_start: float | None = field(default=None, repr=False)

    def charge(self, pixels: int, name: str) -> None:
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
