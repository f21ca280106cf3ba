"""What produced a result: the toolkit's version and the versions of the packages that shape its numbers.

One list for every writer of provenance (eval summaries, training runs, merged checkpoints, de-identification
reports), so two records of the same environment name the same packages.
"""

from __future__ import annotations

import functools
import platform
from datetime import datetime, timezone
from importlib import metadata

DIST_NAME = "medgemma-toolkit"
# Everything whose version can change an answer, a score or a written file.
PACKAGES = (
    DIST_NAME,
    "torch",
    "transformers",
    "numpy",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "pydicom",
    "bitsandbytes",
    "llama-cpp-python",
)


@functools.lru_cache(maxsize=1)
def toolkit_version() -> str:
    """The installed distribution's version (pyproject.toml is the one place it is written)."""
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> str:
    # `__version__` is read from the installed metadata on first use: that scan costs ~50 ms, which every
    # `medgemma --help` would otherwise pay.
    if name == "__version__":
        return toolkit_version()
    raise AttributeError(name)


def package_versions() -> dict[str, str]:
    """Python's version and each installed package of `PACKAGES` (absent ones are left out)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
