"""llama.cpp's own HF -> GGUF converter, taken from the llama-cpp-python source distribution.

We do not copy the converter into this package: it changes with every llama.cpp release, and the one matching the
installed runtime lives in the sdist of the same llama-cpp-python version. It is fetched once with pip (a package
registry, so it works where model hubs are blocked) and only the converter's files are unpacked into a cache.
Offline machines can point `MEDGEMMA_LLAMA_CPP_SOURCE` (or `--llama-cpp-source`) at a downloaded sdist or an
unpacked llama.cpp checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from ..errors import BackendUnavailable, BadInput

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the runtime we build and test against (README, scripts/test.sh)
_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medgemma" / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"


def converter_script(source: str | Path | None = None) -> Path:
    """Path of `convert_hf_to_gguf.py`, unpacking (and if needed downloading) the sdist first.

    `source`: an unpacked llama.cpp tree, a llama-cpp-python sdist (.tar.gz), or None for the cache / pip download.
    """
    source = source or os.environ.get("MEDGEMMA_LLAMA_CPP_SOURCE") or None
    if source is not None:
        p = Path(source).expanduser()
        if p.is_dir():
            for cand in (p / "convert_hf_to_gguf.py", p / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"):
                if cand.is_file():
                    return cand
            raise BadInput(f"{source}: no convert_hf_to_gguf.py in this llama.cpp tree")
        if p.is_file():
            return _unpack(p, cache_dir() / f"from-{p.stem}")
        raise BadInput(f"{source}: llama.cpp source not found (give a directory or a .tar.gz sdist)")
    target = cache_dir() / "tree"
    script = target / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    return _unpack(_download_sdist(cache_dir()), target)


def _download_sdist(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if found:
        return found[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--quiet",
        "-d",
        str(dest),
        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not found:
        raise BackendUnavailable(
            f"could not download the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source (needed for llama.cpp's "
            "converter); without network, download it elsewhere with `pip download --no-binary :all: --no-deps "
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}` and pass --llama-cpp-source FILE"
        )
    return found[0]


def _unpack(sdist: Path, target: Path) -> Path:
    """Extract only the converter, its `conversion` package and the matching `gguf-py` (a few MB of 77)."""
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for m in tar.getmembers():
                parts = m.name.split("/vendor/llama.cpp/", 1)
                if len(parts) != 2 or not parts[1].startswith(_MEMBERS) or not (m.isfile() or m.isdir()):
                    continue
                m.name = parts[1]
                tar.extract(m, tmp, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise BadInput(f"{sdist}: not a readable llama-cpp-python sdist ({type(e).__name__})") from None
    if not (tmp / "convert_hf_to_gguf.py").is_file():
        raise BadInput(f"{sdist}: no llama.cpp converter inside")
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)  # atomic: an interrupted unpack never looks complete
    return target / "convert_hf_to_gguf.py"
