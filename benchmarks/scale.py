"""Benchmark: `deid` scaled out - one process vs a local pool of 2 workers vs Ray Data actors, side by side.

Each contender de-identifies the same synthetic tree (`testing/deid_tree.py`: CT series of 256x256 slices under
patient-named folders) in its own child process, so wall time includes what a user waits for (worker start-up,
imports; for Ray, joining the cluster and starting the actors, but not starting the cluster, which is up before):
- `1 process`: `deidentify_path(IN, OUT)`, the default path;
- `pool 2`: the same with `ScalePlan(workers=2)` (spawn pool);
- `ray 2`: `ScalePlan(workers=2, ray_address=HEAD)` on a loopback cluster of one head node with 2 CPUs.
Outputs are checked byte-identical to the single process's. Peak memory: the pool workers' maximum resident set
(RUSAGE_CHILDREN, read in the driver child), and the Ray actors' (sampled from /proc while they run), at the full
size and at a quarter of it: flat means it does not grow with the number of files.

Contenders alternate `--repeat` times (default 2); the best time of each is compared. The machine is shared:
run it under `flock /work/heavy.lock` and read the load average printed beside the numbers.

Run: .venv/bin/python benchmarks/scale.py [--files 2000] [--repeat 2] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _child(src: str, dst: str, key: str, workers: int, address: str | None) -> None:
    """In the child: one de-identification run; print wall seconds and the pool workers' peak RSS (MiB)."""
    from medgemma_toolkit.deid import deidentify_path
    from medgemma_toolkit.scale import ScalePlan

    t = time.perf_counter()
    plan = ScalePlan(workers=workers, ray_address=address)
    rep = deidentify_path(src, dst, uid_key=bytes.fromhex(key), plan=plan, quiet=True)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "workers_peak_mb": peak, "written": rep["files_written"]}))


class _RaySampler(threading.Thread):
    """Samples the resident set of Ray Data actor processes (`ray::MapWorker...`) every 0.1 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for d in Path("/proc").iterdir():
                if not d.name.isdigit():
                    continue
                try:
                    if not (d / "cmdline").read_bytes().startswith(b"ray::MapWorker"):
                        continue
                    for line in (d / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
                except OSError:
                    continue
            time.sleep(0.1)


def _run(src: Path, dst: Path, key: str, workers: int, address: str | None, env: dict[str, str]) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    sampler = _RaySampler()
    sampler.start()
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(src), str(dst), key, str(workers), address or ""],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    sampler.stop.set()
    sampler.join()
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if address:
        res["workers_peak_mb"] = sampler.peak_mb
    return res


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        src, dst, key, workers, address = args.child
        _child(src, dst, key, int(workers), address or None)
        return
    from medgemma_toolkit.testing.deid_tree import build_deid_tree

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    work = Path(tempfile.mkdtemp(prefix="scalebench", dir="/tmp"))
    cluster = None
    try:
        sizes = {"full": args.files, "quarter": args.files // 4}
        trees = {k: build_deid_tree(work / f"in_{k}", files=n, rows=args.rows, media=False) for k, n in sizes.items()}
        key = os.urandom(32).hex()
        contenders: dict[str, tuple[int, str | None]] = {"1 process": (1, None), "pool 2": (2, None)}
        if not args.no_ray:
            from medgemma_toolkit.testing.ray_cluster import start_cluster

            cluster = start_cluster(work / "ray", ROOT / "src", nodes=1, head_cpus=2)
            contenders["ray 2"] = (2, cluster.address)
            env = {**cluster.env, "PYTHONPATH": env["PYTHONPATH"]}  # the cluster's auth token
        best: dict[str, dict] = {}
        peaks: dict[str, dict[str, float]] = {name: {} for name in contenders}
        reference = None
        for size, src in trees.items():
            for _ in range(args.repeat if size == "full" else 1):
                for name, (workers, address) in contenders.items():
                    dst = work / f"out_{size}"
                    res = _run(src, dst, key, workers, address, env)
                    peaks[name][size] = max(peaks[name].get(size, 0.0), res["workers_peak_mb"])
                    if size == "full":
                        got = _tree_bytes(dst)
                        if reference is None:
                            reference = got
                        assert got == reference, f"{name}: outputs differ from the first run's"
                        if name not in best or res["wall"] < best[name]["wall"]:
                            best[name] = res
        load = os.getloadavg()
        n = args.files
        one, pool = best["1 process"]["wall"], best["pool 2"]["wall"]
        print(f"deid of {n} files ({args.rows}x{args.rows} CT slices), best of {args.repeat}; load average "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
        print(f"{'contender':<10} {'wall s':>7} {'files/s':>8} {'peak MiB/worker full':>21} {'quarter':>8}")
        for name, res in best.items():
            p = peaks[name]
            print(f"{name:<10} {res['wall']:7.2f} {n / res['wall']:8.0f} {p.get('full', 0):21.0f} "
                  f"{p.get('quarter', 0):8.0f}")  # fmt: skip
        print(f"pool 2 vs 1 process: {one / pool:.2f}x (goal >= 1.8x)")
        if "ray 2" in best:
            print(f"ray 2 vs pool 2: {best['ray 2']['wall'] / pool - 1:+.0%} time (goal <= +15%)")
        print("outputs byte-identical across contenders: yes")
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
