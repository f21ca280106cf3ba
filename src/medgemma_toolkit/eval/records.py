"""Append-only JSONL record files: flushed per batch, resumable, and a result cache shared across runs.

A kill at any moment leaves at most one partial last line, which `read_records` drops (and `RecordLog` truncates
before appending), so `--resume` never duplicates or loses a finished item. Records hold no DICOM header values:
only our ids, hashes, the model's text and scores.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def read_records(path: Path) -> tuple[list[Record], int]:
    """Complete records in file order, and the byte length of the intact prefix (a torn tail is excluded)."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    out: list[Record] = []
    good = 0
    pos = 0
    for line in data.splitlines(keepends=True):
        pos += len(line)
        if not line.endswith(b"\n"):
            break  # written partly when the process died
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good = pos
    return out, good


class RecordLog:
    """An open JSONL file that every finished batch is appended to and flushed (and fsync'd) at once."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        records, good = read_records(path) if resume else ([], 0)
        self.done: dict[str, Record] = {r["key"]: r for r in records}
        if resume and path.exists() and path.stat().st_size != good:
            with open(path, "r+b") as f:
                f.truncate(good)
        self._f = open(path, "a" if resume else "w", encoding="utf-8")

    def append(self, records: list[Record]) -> None:
        for r in records:
            self._f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
            self.done[r["key"]] = r
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def default_cache_dir() -> Path:
    env = os.environ.get("MEDGEMMA_EVAL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medgemma_toolkit" / "eval"


class ResultCache:
    """Finished records keyed by (model fingerprint, task@version, generation settings) and (item key, prompt hash).

    One JSONL per run configuration; a re-run of the same configuration (any --out) reuses the answers.
    """

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:20]
        self.path = root / f"{digest}.jsonl"
        records, _ = read_records(self.path)
        self.entries = {(r["key"], r["prompt_hash"]): r for r in records}
        self._log: RecordLog | None = None

    def get(self, key: str, prompt_hash: str) -> Record | None:
        return self.entries.get((key, prompt_hash))

    def put(self, records: list[Record]) -> None:
        if self._log is None:
            self._log = RecordLog(self.path, resume=True)
        self._log.append(records)
        for r in records:
            self.entries[(r["key"], r["prompt_hash"])] = r

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
