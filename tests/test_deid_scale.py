"""`deid --workers N` and `deid --ray ADDRESS`: the same files, byte for byte, and the same report as one process;
resumable after a lost worker node, with nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medgemma_toolkit.testing.deid_tree import build_deid_tree

# One truncated file fails (exit 2), one text file is skipped: the merged report must say so like one process.
DEID_ARGS = ("--retain-modified-dates",)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path (temporaries and journals included: none may be left)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("deidtree")
    key = root / "key.bin"
    key.write_bytes(bytes(range(32)))
    return build_deid_tree(root / "in", files=200), key


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory) -> tuple[dict[str, bytes], str]:
    """`deid IN OUT` in one process: the files and the summary line every scaled-out run must reproduce."""
    from medgemma_toolkit.cli import main

    src, key = tree
    out = tmp_path_factory.mktemp("ref") / "out"
    with pytest.raises(SystemExit) as e:
        main(["deid", *DEID_ARGS, "--uid-key", str(key), str(src), str(out)])
    assert e.value.code == 2  # the truncated file
    files = tree_bytes(out)
    assert len(files) == 199 and "deid_report.json" in files  # 198 outputs + the report
    return files, json.loads(files["deid_report.json"])["files_written"]


def _same(out: Path, reference) -> None:
    got = tree_bytes(out)
    assert sorted(got) == sorted(reference[0])  # no file missing, no temporary or journal left
    assert got == reference[0]


def test_workers_2_writes_the_same_bytes_and_report(tree, reference, tmp_path, cli):
    src, key = tree
    r = cli("deid", *DEID_ARGS, "--uid-key", str(key), "--workers", "2", str(src), str(tmp_path / "out"))
    assert r.returncode == 2 and "de-identified 198 file(s)" in r.stdout and "failed 1" in r.stdout, r.stderr
    _same(tmp_path / "out", reference)


def test_scale_options_are_checked_before_any_work(tree, tmp_path, cli):
    src, key = tree
    for args, message in [
        (("--workers", "0"), "--workers 0: give 1 or more"),
        (("--ray", "nowhere"), "--ray nowhere: give auto, local or HOST:PORT"),
        (("--resume",), "--resume needs --uid-key"),
        (("--workers", "2", str(src / "notes.txt")), "take a directory IN"),
    ]:
        argv = [*args] if len(args) == 3 else [*args, str(src)]
        r = cli("deid", *argv, str(tmp_path / "o"))
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    # A bad start-method override is the plan's too: said before the output folder and its journal exist.
    r = cli("deid", "--workers", "2", str(src), str(tmp_path / "o"), env={"MEDGEMMA_POOL_START": "thread"})
    assert r.returncode == 2 and "MEDGEMMA_POOL_START=thread: give fork or spawn" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def _kill_when_journaled(cmd: list[str], journal: Path, lines: int, env: dict[str, str]) -> int:
    """Start `cmd` in its own session; SIGKILL the whole session (driver and workers) once the journal holds
    `lines` finished files. The journal's line count at that moment."""
    import signal

    from medgemma_toolkit.testing.ray_cluster import kill_session

    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        end = time.monotonic() + 240
        while time.monotonic() < end and p.poll() is None:
            if journal.exists() and journal.read_text().count("\n") > lines:
                break
            time.sleep(0.005)
        done = journal.read_text().count("\n") - 1 if journal.exists() else -1
        kill_session(p.pid)
        assert p.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
        return done
    finally:
        if p.poll() is None:
            p.kill()


def test_a_killed_run_is_finished_by_resume(tree, reference, tmp_path, cli):
    """`deid --workers 2` killed at once (driver and workers, SIGKILL) part-way: what it wrote is complete, and
    `--resume` finishes the tree without redoing the journaled files, identical to one uninterrupted process."""
    from medgemma_toolkit.deid.parallel import JOURNAL_NAME

    src, key = tree
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medgemma_toolkit", "deid", *DEID_ARGS, "--uid-key", str(key), "--workers", "2",
           str(src), str(out)]  # fmt: skip
    done = _kill_when_journaled(cmd, out / JOURNAL_NAME, 20, {**os.environ})
    assert 20 <= done < 198
    journal = [json.loads(line) for line in (out / JOURNAL_NAME).read_text().splitlines()[1:] if line.endswith("}")]
    kept = {e["value"]["entry"]["file"]: (out / e["value"]["entry"]["file"]).stat().st_ino for e in journal
            if "error" not in e["value"]["entry"] and "skipped" not in e["value"]["entry"]}  # fmt: skip
    r = cli("deid", *DEID_ARGS, "--uid-key", str(key), "--retain-uids", "--resume", str(src), str(out))
    assert r.returncode == 2 and "the interrupted run used other settings" in r.stderr  # refused, nothing changed
    r = cli("deid", *DEID_ARGS, "--uid-key", str(key), "--workers", "2", "--resume", str(src), str(out))
    assert r.returncode == 2 and "de-identified 198 file(s)" in r.stdout, r.stderr
    _same(out, reference)  # no temporary, no journal, nothing missing, every byte the same
    assert {f: (out / f).stat().st_ino for f in kept} == kept  # journaled files were not written again


def _ray_env(ray_cluster) -> dict[str, str]:
    return {**ray_cluster.env, "HF_HUB_OFFLINE": "1"}  # its PYTHONPATH and its auth token


@pytest.mark.slow
def test_ray_two_nodes_write_the_same_bytes_and_report(ray_cluster, tree, reference, tmp_path):
    src, key = tree
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medgemma_toolkit", "deid", *DEID_ARGS, "--uid-key", str(key), "--ray",
           ray_cluster.address, "--workers", "2", str(src), str(out)]  # fmt: skip
    r = subprocess.run(cmd, env=_ray_env(ray_cluster), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "de-identified 198 file(s)" in r.stdout, r.stdout + r.stderr
    _same(out, reference)
    assert "Doe" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_ray_node_killed_mid_run_loses_nothing(ray_cluster, tree, reference, tmp_path):
    """The second node (its raylet, object store and actor: the whole process session) is SIGKILLed once 20 files
    are journaled. The driver hands the lost actor's chunks to the other actor and the run itself completes: every
    file, byte-identical, nothing half-written (no --resume needed)."""
    from medgemma_toolkit.deid.parallel import JOURNAL_NAME

    src, key = tree
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medgemma_toolkit", "deid", *DEID_ARGS, "--uid-key", str(key), "--ray",
           ray_cluster.address, "--workers", "2", str(src), str(out)]  # fmt: skip
    p = subprocess.Popen(cmd, env=_ray_env(ray_cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = out / JOURNAL_NAME
    try:
        end = time.monotonic() + 240
        while time.monotonic() < end and p.poll() is None:
            if journal.exists() and journal.read_text().count("\n") > 20:
                break
            time.sleep(0.005)
        assert p.poll() is None, "the run ended before the node could be killed"
        ray_cluster.kill_node(1)
        stdout, stderr = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    try:
        assert p.returncode == 2 and "de-identified 198 file(s)" in stdout, stdout + stderr
        assert "Traceback" not in stderr
        _same(out, reference)
    finally:
        ray_cluster.replace_node(1)  # later tests get their two nodes back
