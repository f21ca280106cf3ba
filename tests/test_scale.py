"""The generic scale-out core (`scale/`): plans, the in-process path, the local process pool (fork or spawn), ordering, journals."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.scale import InOrder, Journal, ScalePlan, WorkerFailed, run, write_bytes_atomic
from medgemma_toolkit.testing.scale_workers import make_failing, make_square


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "--workers 0: give 1 or more"),
        ({"workers": -2, "ray_address": "auto"}, r"give 0 \(the whole cluster\) or more"),
        ({"ray_address": "10.0.0.1"}, "give auto, local or HOST:PORT"),
        ({"ray_address": "host:99999"}, "give auto, local or HOST:PORT"),
        ({"ray_address": ":6379"}, "give auto, local or HOST:PORT"),
        ({"workers": True}, "whole number"),
    ],
)
def test_plan_refuses_bad_values_in_one_line(kwargs, message):
    with pytest.raises(BadInput, match=message) as e:
        ScalePlan(**kwargs)
    assert "\n" not in str(e.value)


def test_plan_accepts_addresses():
    for address in ("auto", "local", "127.0.0.1:6379", "head.cluster.local:10001", "[::1]:6379"):
        assert ScalePlan(ray_address=address).parallel
    assert not ScalePlan().parallel
    assert ScalePlan(workers=2).parallel
    assert ScalePlan(workers=0, ray_address="auto").describe == "Ray (auto, one actor per CPU)"


def test_single_process_path_runs_here_in_order():
    got = []
    stats = run(list(range(10)), make_square, ScalePlan(), lambda u, r: got.append((u, r[0])))
    assert got == [(i, i * i) for i in range(10)]
    assert stats.workers == 1


def test_local_pool_builds_one_worker_per_process_and_returns_everything():
    got: dict[int, tuple[int, int, str]] = {}
    stats = run(list(range(40)), functools.partial(make_square, 0.01), ScalePlan(workers=2), got.__setitem__)
    assert sorted(got) == list(range(40))
    assert all(r[0] == u * u for u, r in got.items())
    builds = {(r[1], r[2]) for r in got.values()}
    pids = {pid for pid, _ in builds}
    assert len(builds) == len(pids) == stats.workers == 2  # one build per process, two processes did work


def test_pool_forks_a_single_threaded_driver_and_spawns_otherwise(monkeypatch):
    """Forked workers start with the driver's modules and globals (no second import); MEDGEMMA_POOL_START picks."""
    from medgemma_toolkit.scale import local
    from medgemma_toolkit.testing import scale_workers

    monkeypatch.setattr(scale_workers, "DRIVER_MARK", "set in the driver")
    got: dict[int, str] = {}
    for method, seen in (("fork", "set in the driver"), ("spawn", "")):
        monkeypatch.setenv(local.START_ENV, method)
        got.clear()
        run(list(range(8)), scale_workers.make_marked, ScalePlan(workers=2), got.__setitem__)
        assert set(got.values()) == {seen}, method
    monkeypatch.setenv(local.START_ENV, "thread")
    with pytest.raises(BadInput, match="give fork or spawn"):
        run(list(range(8)), scale_workers.make_marked, ScalePlan(workers=2), got.__setitem__)


@pytest.mark.parametrize(
    ("setup", "method"),
    [
        ("import medgemma_toolkit.deid", "fork"),  # numpy (OpenBLAS threads) loaded: still fork
        ("import threading; threading.Thread(target=threading.Event().wait, daemon=True).start()", "spawn"),
        ("import torch", "spawn"),
    ],
)
def test_start_method_is_fork_only_where_safe(setup, method, monkeypatch):
    monkeypatch.delenv("MEDGEMMA_POOL_START", raising=False)
    code = f"{setup}\nfrom medgemma_toolkit.scale.local import start_method\nprint(start_method())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == method


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_errors_are_one_line_without_the_message(workers):
    """In a pool a worker's unexpected error is named by type only; in this process it propagates as it is (the
    CLI's own handler names it the same way)."""
    with pytest.raises(WorkerFailed if workers > 1 else ValueError) as e:
        run(list(range(6)), functools.partial(make_failing, "value"), ScalePlan(workers=workers), lambda u, r: None)
    if workers > 1:
        assert "ValueError" in str(e.value) and "Doe" not in str(e.value)
    with pytest.raises(BadInput, match="unit 3 is not usable"):
        run(list(range(6)), functools.partial(make_failing, "bad_input"), ScalePlan(workers=workers), lambda u, r: None)


def test_in_order_emits_prefixes_only():
    seen: list[int] = []
    buf: InOrder[str] = InOrder(lambda i, item: seen.append(i))
    for i in (2, 0, 3, 1, 5, 4):
        buf.put(i, str(i))
        assert seen == list(range(len(seen)))
    assert seen == [0, 1, 2, 3, 4, 5] and buf.pending == 0


def test_journal_resumes_same_settings_and_ignores_a_torn_line(tmp_path):
    path = tmp_path / ".journal.jsonl"
    j = Journal(path, {"opts": [1]}, resume=False)
    j.add("a", {"n": 1})
    j.add("b", None)
    j.close(remove=False)
    with open(path, "a") as f:
        f.write('{"key": "c", "val')  # killed mid-line
    j = Journal(path, {"opts": [1]}, resume=True)
    assert j.done == {"a": {"n": 1}, "b": None}
    j.add("c", 3)
    j.close(remove=False)
    assert Journal(path, {"opts": [1]}, resume=True).done == {"a": {"n": 1}, "b": None, "c": 3}
    with pytest.raises(BadInput, match="other settings"):
        Journal(path, {"opts": [2]}, resume=True)
    j = Journal(path, {"opts": [2]}, resume=False)
    assert j.done == {}
    j.close(remove=True)
    assert not path.exists()


def test_write_bytes_atomic_leaves_no_temporary(tmp_path):
    target = tmp_path / "d" / "x.json"
    write_bytes_atomic(target, json.dumps({"a": 1}).encode())
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


@pytest.mark.slow
def test_ray_runs_every_unit_on_both_nodes_one_build_per_actor(ray_cluster, monkeypatch):
    for name in ("PYTHONPATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.setenv(name, ray_cluster.env[name])
    got: dict[int, tuple[int, int, str]] = {}
    plan = ScalePlan(workers=2, ray_address=ray_cluster.address)
    run(list(range(300)), functools.partial(make_square, 0.02), plan, got.__setitem__, batch_size=4)
    assert sorted(got) == list(range(300)) and all(r[0] == u * u for u, r in got.items())
    builds = {(r[1], r[2]) for r in got.values()}
    assert len(builds) == len({pid for pid, _ in builds}) == 2  # two actors, each built its worker once


@pytest.mark.slow
def test_ray_actor_lost_mid_run_its_chunks_go_to_the_other(ray_cluster, monkeypatch):
    """The second node is SIGKILLed (raylet, object store, actor) after 20 results of 200 (~5 s of work): the
    chunks its actor held are handed to the actor on the head node, and every unit comes back exactly once."""
    for name in ("PYTHONPATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.setenv(name, ray_cluster.env[name])
    got: dict[int, tuple[int, int, str]] = {}
    seen: list[int] = []

    def on_result(unit: int, result: tuple[int, int, str]) -> None:
        assert unit not in got, "a unit came back twice"
        got[unit] = result
        seen.append(unit)
        if len(seen) == 20:
            ray_cluster.kill_node(1)

    try:
        plan = ScalePlan(workers=2, ray_address=ray_cluster.address)
        run(list(range(200)), functools.partial(make_square, 0.05), plan, on_result, batch_size=4)
    finally:
        ray_cluster.replace_node(1)  # later tests get their two nodes back
    assert sorted(got) == list(range(200)) and all(r[0] == u * u for u, r in got.items())
    assert len({r[1] for r in got.values()}) == 2  # both actors worked before the loss


@pytest.mark.slow
def test_ray_worker_errors_are_one_line(ray_cluster, monkeypatch):
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.setenv(name, ray_cluster.env[name])
    plan = ScalePlan(workers=1, ray_address=ray_cluster.address)
    with pytest.raises(BadInput, match="unit 3 is not usable"):
        run(list(range(6)), functools.partial(make_failing, "bad_input"), plan, lambda u, r: None)
    with pytest.raises(WorkerFailed) as e:
        run(list(range(6)), functools.partial(make_failing, "value"), plan, lambda u, r: None)
    assert "Doe" not in str(e.value) and "\n" not in str(e.value)


def test_gpus_per_actor_follow_the_device():
    from medgemma_toolkit.scale import gpus_for_device

    assert [gpus_for_device(d) for d in ("cuda", "cuda:1", "cpu", "mps", "auto")] == [1.0, 1.0, 0.0, 0.0, None]


def test_ray_missing_is_one_line_naming_the_extra(monkeypatch, tmp_path, cli):
    """Where Ray is not installed (an import that fails, as on a machine without the extra)."""
    import sys

    from medgemma_toolkit.errors import BackendUnavailable
    from medgemma_toolkit.scale import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'medgemma-toolkit\[ray\]'"):
        require_ray()
    (tmp_path / "in").mkdir()
    r = cli("deid", "--ray", "auto", str(tmp_path / "in"), str(tmp_path / "out"))
    assert r.returncode == 2 and "--ray needs Ray: pip install 'medgemma-toolkit[ray]'" in r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_nothing_to_do_starts_no_worker():
    calls = []
    stats = run([], functools.partial(make_failing, "value"), ScalePlan(workers=2), lambda u, r: calls.append(u))
    assert stats.units == stats.workers == 0 and not calls
