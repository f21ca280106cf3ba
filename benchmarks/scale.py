"""Benchmark: `deid` scaled out - one process vs a local pool of 2 workers vs Ray actors, side by side, with two
independent one-process runs over the two halves of the tree as the reference of what 2 cores give.

Each contender de-identifies the same synthetic tree (`testing/deid_tree.py`: CT series of 256x256 slices under
patient-named folders) in child processes:
- `1 process`: `deidentify_path(IN, OUT)`, the default path;
- `pool 2`: the same with `ScalePlan(workers=2)` (the local pool: forked workers where safe);
- `pool 2 spawn`: the pool with `MEDGEMMA_POOL_START=spawn` (what every pool did before workers were forked);
- `2 halves`: two `1 process` runs at once, each over half of the patient folders into its own OUT: no pool, no
  driver, no shared output tree. The best two cores can do with this code, as a reference row;
- `ray 2`: `ScalePlan(workers=2, ray_address=HEAD)` on a loopback cluster of one head node with 2 CPUs (started
  before, not timed; the run joins it, starts its actors and stops them).
`CPU s`: the CPU time of the contender's processes (driver and pool workers, their imports included; not Ray's,
whose actors live in the cluster). Two times per contender: `run s`, from the call to the return (imports done, as a library user waits), and
`process s`, from starting the process to its exit (as a shell user waits: interpreter and imports included). For
`2 halves`, `run s` is the slower half's.

Contenders alternate within each of `--repeat` rounds (the order rotates), and the medians are reported, with the
median of the per-round ratios: the machine is shared, so only ratios taken side by side mean much. Outputs are
checked byte-identical to the single process's. Peak memory per worker at the full size and at a quarter of it
(flat means it does not grow with the number of files). Ray's daemons use CPU even when idle: the cluster's own
CPU use is measured for `--idle` seconds before the runs and reported in % of one CPU.

Run it under `flock /work/heavy.lock` and read the load average printed beside the numbers:
    python benchmarks/scale.py [--files 2000] [--repeat 5] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RAY_ACTOR = b"ray::_Worker"  # the process title of the actors of scale/ray_actors.py


def _child(src: str, dst: str, key: str, workers: int, address: str | None) -> None:
    """In the child: one de-identification run; print wall seconds and the pool workers' peak RSS (MiB)."""
    from medgemma_toolkit.deid import deidentify_path
    from medgemma_toolkit.scale import ScalePlan

    t = time.perf_counter()
    plan = ScalePlan(workers=workers, ray_address=address)
    rep = deidentify_path(src, dst, uid_key=bytes.fromhex(key), plan=plan, quiet=True)
    wall = time.perf_counter() - t
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime  # driver and pool workers, imports included
    print(
        json.dumps(
            {"wall": wall, "cpu": cpu, "workers_peak_mb": kids.ru_maxrss / 1024, "written": rep["files_written"]}
        )
    )


class _RaySampler(threading.Thread):
    """Samples the resident set of the Ray actor processes every 0.1 s."""

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
                    if not (d / "cmdline").read_bytes().startswith(RAY_ACTOR):
                        continue
                    for line in (d / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
                except OSError:
                    continue
            time.sleep(0.1)


def _launch(src: Path, dst: Path, key: str, workers: int, address: str | None, env: dict[str, str]):
    shutil.rmtree(dst, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", str(src), str(dst), key, str(workers), address or ""]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(p: subprocess.Popen) -> dict:
    out, err = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"a contender failed:\n{err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _run(name: str, trees: dict[str, Path], work: Path, key: str, cfg: tuple[int, str | None, dict[str, str]]):
    """One contender once; (result, output folders to compare)."""
    workers, address, env = cfg
    sampler = _RaySampler()
    sampler.start()
    t = time.perf_counter()
    if name == "2 halves":
        ps = [_launch(trees[h], work / f"out_{h}", key, 1, None, env) for h in ("half_a", "half_b")]
        parts = [_result(p) for p in ps]
        res = {"wall": max(r["wall"] for r in parts), "cpu": sum(r["cpu"] for r in parts), "workers_peak_mb": 0.0}
        outs = [work / "out_half_a", work / "out_half_b"]
    else:
        res = _result(_launch(trees["full"], work / "out", key, workers, address, env))
        outs = [work / "out"]
    res["process"] = time.perf_counter() - t
    sampler.stop.set()
    sampler.join()
    if address:
        res["workers_peak_mb"] = sampler.peak_mb
    return res, outs


def _tree_bytes(roots: list[Path]) -> dict[str, bytes]:
    """File contents by relative path (the halves' trees merged; the reports left out: they name other trees)."""
    got: dict[str, bytes] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.name != "deid_report.json":
                got[str(p.relative_to(root))] = p.read_bytes()
    return got


def _split(src: Path, a: Path, b: Path) -> None:
    """Hard-link the patient folders of `src` alternately under `a` and `b`."""
    for k, d in enumerate(sorted(p for p in src.iterdir() if p.is_dir())):
        subprocess.run(["cp", "-al", str(d), str((a if k % 2 == 0 else b) / d.name)], check=True)


def _cpu_of_session(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return total


def _ray_idle(cluster, seconds: float) -> float:
    """The cluster's own CPU use while it runs nothing, in % of one CPU."""
    from medgemma_toolkit.testing.ray_cluster import session_pids

    def pids() -> list[int]:
        return [pid for node in cluster.nodes for pid in session_pids(node.pid)]

    before = _cpu_of_session(pids())
    time.sleep(seconds)
    return 100 * (_cpu_of_session(pids()) - before) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle-cluster CPU measurement")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        src, dst, key, workers, address = args.child
        _child(src, dst, key, int(workers), address or None)
        return
    from medgemma_toolkit.testing.deid_tree import build_deid_tree

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("MEDGEMMA_POOL_START", None)
    work = Path(tempfile.mkdtemp(prefix="scalebench", dir="/tmp"))
    cluster = None
    try:
        trees = {
            "full": build_deid_tree(work / "in_full", files=args.files, rows=args.rows, media=False),
            "quarter": build_deid_tree(work / "in_quarter", files=args.files // 4, rows=args.rows, media=False),
            "half_a": work / "in_half_a",
            "half_b": work / "in_half_b",
        }
        trees["half_a"].mkdir()
        trees["half_b"].mkdir()
        _split(trees["full"], trees["half_a"], trees["half_b"])
        key = os.urandom(32).hex()
        spawn = {**env, "MEDGEMMA_POOL_START": "spawn"}
        contenders: dict[str, tuple[int, str | None, dict[str, str]]] = {
            "1 process": (1, None, env),
            "pool 2": (2, None, env),
            "pool 2 spawn": (2, None, spawn),
            "2 halves": (1, None, env),
        }
        idle = None
        if not args.no_ray:
            from medgemma_toolkit.testing.ray_cluster import start_cluster

            cluster = start_cluster(work / "ray", ROOT / "src", nodes=1, head_cpus=2)
            ray_env = {**cluster.env, "PYTHONPATH": env["PYTHONPATH"]}  # the cluster's auth token
            contenders["ray 2"] = (2, cluster.address, ray_env)
            time.sleep(3)  # let the fresh cluster settle before measuring it idle
            idle = _ray_idle(cluster, args.idle)
        runs: dict[str, list[dict]] = {name: [] for name in contenders}
        peaks: dict[str, dict[str, float]] = {name: {} for name in contenders}
        reference = None
        names = list(contenders)
        load0 = os.getloadavg()
        for r in range(args.repeat):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                res, outs = _run(name, trees, work, key, contenders[name])
                runs[name].append(res)
                peaks[name]["full"] = max(peaks[name].get("full", 0.0), res["workers_peak_mb"])
                got = _tree_bytes(outs)
                reference = reference or got
                assert got == reference, f"{name}: outputs differ from the first run's"
        for name in ("pool 2", "ray 2"):  # memory per worker at a quarter of the files: flat or growing?
            if name in contenders:
                res, _ = _run(name, {"full": trees["quarter"]}, work, key, contenders[name])
                peaks[name]["quarter"] = res["workers_peak_mb"]
        load1 = os.getloadavg()
        n = args.files

        def med(name: str, k: str) -> float:
            return statistics.median(x[k] for x in runs[name])

        def ratio(a: str, b: str, k: str) -> float:
            return statistics.median(x[k] / y[k] for x, y in zip(runs[a], runs[b]))

        print(f"deid of {n} files ({args.rows}x{args.rows} CT slices), median of {args.repeat} alternating rounds; "
              f"load average {load0[0]:.2f} before, {load1[0]:.2f} after, on {os.cpu_count()} CPUs")  # fmt: skip
        print(
            f"{'contender':<13} {'run s':>6} {'files/s':>8} {'process s':>10} {'CPU s':>6} {'peak MiB/worker full':>21} {'quarter':>8}"
        )
        for name in contenders:
            p = peaks[name]
            q = f"{p['quarter']:8.0f}" if "quarter" in p else f"{'-':>8}"
            f = f"{p['full']:21.0f}" if p.get("full") else f"{'-':>21}"
            print(
                f"{name:<13} {med(name, 'wall'):6.2f} {n / med(name, 'wall'):8.0f} {med(name, 'process'):10.2f} {med(name, 'cpu'):6.2f} {f} {q}"
            )
        print("speed-ups over 1 process (median of per-round ratios; run s / process s):")
        for name in ("pool 2", "pool 2 spawn", "2 halves"):
            print(f"  {name:<13} {ratio('1 process', name, 'wall'):.2f}x / {ratio('1 process', name, 'process'):.2f}x")
        print("  goal: pool 2 >= 1.8x")
        if "ray 2" in contenders:
            print(f"ray 2 vs pool 2: {ratio('ray 2', 'pool 2', 'wall') - 1:+.0%} run time, "
                  f"{ratio('ray 2', 'pool 2', 'process') - 1:+.0%} process time (goal <= +15%)")  # fmt: skip
            print(
                f"Ray cluster idle (head node, 2 CPUs, nothing running): {idle:.0f}% of one CPU over {args.idle:.0f} s"
            )
        print("outputs byte-identical across contenders (the halves' two trees together): yes")
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
