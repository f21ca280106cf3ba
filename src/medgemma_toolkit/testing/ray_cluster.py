"""A real Ray cluster on loopback for tests and benchmarks: a head node and worker nodes as separate `ray start`
processes, each in its own session so it can be killed (one node) or torn down (all) without touching any other
Ray on the machine (`ray stop` would stop every cluster of this user, other people's test runs included)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

OBJECT_STORE_BYTES = 100_000_000  # per node: the tests move file names and small reports, not images


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def session_pids(sid: int) -> list[int]:
    """Every process of session `sid` (Ray's workers make their own process groups, but stay in the session)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:  # state, ppid, pgrp, session
            pids.append(int(d.name))
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL every process of the session (a node lost at once: raylet, object store, workers)."""
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class RayCluster:
    """`address` is the head's HOST:PORT; `nodes[0]` the head's `ray start --block` process, the rest workers."""

    address: str
    temp_dir: Path
    env: dict[str, str]
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add_node(self, num_cpus: int = 1) -> subprocess.Popen[bytes]:
        cmd = [_ray_bin(), "start", "--address", self.address, "--num-cpus", str(num_cpus), "--block",
               "--node-ip-address", "127.0.0.1", "--object-store-memory", str(OBJECT_STORE_BYTES),
               "--disable-usage-stats"]  # fmt: skip
        log = open(self.temp_dir / f"node{len(self.nodes)}.log", "wb")
        p = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(p)
        return p

    def kill_node(self, index: int) -> None:
        """Lose node `index` at once, as a crashed machine would (SIGKILL its whole session)."""
        kill_session(self.nodes[index].pid)
        self.nodes[index].wait(timeout=30)

    def replace_node(self, index: int) -> None:
        """Start a new worker node in place of the lost node `index` (as KubeRay replaces a pod) and wait for it."""
        self.nodes.pop(index)
        self.add_node()
        self.wait_nodes(len(self.nodes))

    def alive_nodes(self) -> int:
        """Nodes the cluster counts as alive, asked from a separate driver process."""
        code = "import ray; ray.init(address=%r, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        out = subprocess.run([sys.executable, "-c", code % self.address], env=self.env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.alive_nodes() >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"Ray cluster at {self.address}: fewer than {n} nodes after {timeout:.0f} s")

    def stop(self) -> None:
        for p in reversed(self.nodes):
            kill_session(p.pid)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


def start_cluster(temp_dir: Path, source_root: Path | None = None, nodes: int = 2, head_cpus: int = 1) -> RayCluster:
    """A head node (`head_cpus` CPUs) plus `nodes - 1` worker nodes of 1 CPU, on 127.0.0.1; `source_root` first on the workers'
    PYTHONPATH (so they import the toolkit under test, not an installed copy)."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    # Token authentication with a token of this cluster's own: independent of any ~/.ray/auth_token on the machine
    # (a cluster started while one exists requires it). Drivers must run with `cluster.env`.
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": os.urandom(16).hex(),
    }
    if source_root is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source_root), os.environ.get("PYTHONPATH", "")) if p)
    port = _free_port()
    cluster = RayCluster(f"127.0.0.1:{port}", temp_dir, env)
    cmd = [_ray_bin(), "start", "--head", "--port", str(port), "--num-cpus", str(head_cpus), "--include-dashboard=false",
           "--temp-dir", str(temp_dir), "--node-ip-address", "127.0.0.1", "--object-store-memory",
           str(OBJECT_STORE_BYTES), "--disable-usage-stats", "--block"]  # fmt: skip
    log = open(temp_dir / "head.log", "wb")
    cluster.nodes.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        for _ in range(nodes - 1):
            cluster.add_node()
        cluster.wait_nodes(nodes)
    except BaseException:
        cluster.stop()
        raise
    return cluster
