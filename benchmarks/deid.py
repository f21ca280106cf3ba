"""Benchmark: de-identify a 500-file synthetic CT series with ours and with dicognito, side by side, in one run.

Each contender runs in its own child process over the same input files, writing to its own output folder, so
wall time and peak memory (the child's maximum resident set) are measured alike:
- ours:      `deid.deidentify_path(IN, OUT)` - the whole pipeline: full checks of every input, Table E.1-1 at every
             depth, atomic writes, the streamed JSON report;
- dicognito: `Anonymizer().anonymize(ds)` per file between `pydicom.dcmread` and `save_as` (what its CLI does);
- baseline:  plain `pydicom.dcmread` + `save_as`, the floor any pydicom-based tool stands on.
Memory must not grow with the number of files: ours also runs on a fifth of the series, and both peaks are shown.
Contenders alternate, `--repeat` times (default 3); the best time of each is compared (the CPUs are shared).

Clean Pixel Data (`--clean-pixels`, OCR) is measured apart, since no contender does it: `--pixel-images N` times
ours with and without it on N 320x240 US images with a name and a date burned in (per-image cost of the OCR).

Run: .venv/bin/python benchmarks/deid.py [--files 500] [--size 512] [--repeat 3] [--pixel-images 20]
(dicognito: `pip install dicognito==0.19.0`, the `bench` extra; OCR: tesseract-ocr and the `deid` extra.)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _peak_mb() -> float:
    """This process's peak resident set. VmHWM starts afresh at exec; ru_maxrss would carry the parent's peak
    over from the fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # macOS: bytes, and inherited


def _child(kind: str, src: Path, dst: Path, limit: int) -> None:
    """Runs in the child: de-identify the first `limit` files of `src` into `dst`; print time and peak RSS."""
    import pydicom

    files = sorted(src.iterdir())[:limit]
    if kind == "ours":
        from medgemma_toolkit.deid import deidentify_path

        sub = dst.parent / (dst.name + "_in")
        if limit < len(list(src.iterdir())):  # a subset: link the files into their own folder (not timed)
            sub.mkdir()
            for f in files:
                (sub / f.name).symlink_to(f)
        t = time.perf_counter()
        deidentify_path(sub if sub.exists() else src, dst)
    else:
        if kind == "dicognito":
            from dicognito.anonymizer import Anonymizer

            anon = Anonymizer()
        dst.mkdir(parents=True)
        t = time.perf_counter()
        for f in files:
            ds = pydicom.dcmread(f)
            if kind == "dicognito":
                anon.anonymize(ds)
            ds.save_as(dst / f.name)
    elapsed = time.perf_counter() - t
    peak_mb = _peak_mb()
    print(json.dumps({"kind": kind, "files": len(files), "seconds": elapsed, "peak_mb": peak_mb}))


def _run(kind: str, src: Path, work: Path, limit: int) -> dict:
    dst = work / f"{kind}_{limit}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(dst.parent / (dst.name + "_in"), ignore_errors=True)
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(src), str(dst), str(limit)],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(dst.parent / (dst.name + "_in"), ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pixel-images", type=int, default=0, help="also time --clean-pixels on N burned-in US images")
    a = ap.parse_args()
    from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, write_series

    try:
        import dicognito  # noqa: F401

        kinds = ["ours", "dicognito", "baseline"]
    except ImportError:
        print("dicognito is not installed: comparing with the plain pydicom read+write baseline only")
        kinds = ["ours", "baseline"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "series"
        t = time.perf_counter()
        write_series(src, SeriesSpec(slices=a.files, rows=a.size, cols=a.size))
        print(f"wrote {a.files} CT files of {a.size}x{a.size} in {time.perf_counter() - t:.1f} s")
        best: dict[str, dict] = {}
        for _ in range(a.repeat):
            for kind in kinds:
                r = _run(kind, src, work, a.files)
                if kind not in best or r["seconds"] < best[kind]["seconds"]:
                    best[kind] = r
        small = _run("ours", src, work, max(1, a.files // 5))
    print(f"\n{'':12}{'files':>7}{'best s':>10}{'files/s':>10}{'peak MB':>10}")
    for kind in kinds:
        r = best[kind]
        print(f"{kind:12}{r['files']:>7}{r['seconds']:>10.2f}{r['files'] / r['seconds']:>10.0f}{r['peak_mb']:>10.1f}")
    print(
        f"{'ours':12}{small['files']:>7}{small['seconds']:>10.2f}{small['files'] / small['seconds']:>10.0f}"
        f"{small['peak_mb']:>10.1f}   (a fifth of the files: memory must not grow with their number)"
    )
    for other in kinds[1:]:
        print(f"time ours / {other}: {best['ours']['seconds'] / best[other]['seconds']:.2f}x")
    print(
        f"peak memory ours at {best['ours']['files']} vs {small['files']} files: "
        f"{best['ours']['peak_mb']:.0f} vs {small['peak_mb']:.0f} MB"
    )
    if a.pixel_images:
        _pixels(a.pixel_images)


def _pixels(n: int) -> None:
    """--clean-pixels apart: the same burned-in images with and without it (in this process)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_deid_pixels import burned

    from medgemma_toolkit.deid import deidentify_path
    from medgemma_toolkit.deid.pixels import PixelCleaner

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "us"
        src.mkdir()
        for i in range(n):
            burned(src / f"{i}.dcm", 14 + (i % 4) * 6, "US")
        t = time.perf_counter()
        deidentify_path(src, Path(tmp) / "plain")
        plain = time.perf_counter() - t
        t = time.perf_counter()
        deidentify_path(src, Path(tmp) / "cleaned", pixel_cleaner=PixelCleaner())
        cleaned = time.perf_counter() - t
    print(
        f"\n--clean-pixels on {n} US images 320x240 with burned-in text: {cleaned:.2f} s "
        f"({cleaned / n * 1000:.0f} ms/image) vs {plain:.2f} s without ({(cleaned - plain) / n * 1000:.0f} ms/image for OCR)"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
