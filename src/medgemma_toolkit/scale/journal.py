"""Resumable runs: a journal of the units done, and atomic file writes.

A worker writes each output under a temporary name and renames it, so an output is complete or absent. The driver
then appends one line per finished unit to the journal (key + what the report needs), flushed at once: a run
killed at any moment (driver, worker, node) leaves outputs that are complete and a journal that names only units
whose outputs are complete. A re-run reads the journal, skips those units and redoes the rest (workers are
idempotent, so a unit written but not yet journaled is simply written again, identically).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import BadInput


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through `.NAME.<pid>.tmp` and a rename: readers see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Journal:
    """`path`: JSON lines, the first the run's settings (`header`), then {"key": ..., "value": ...} per unit done.

    `resume=False` starts afresh (an old journal is replaced); `resume=True` keeps what an interrupted run with the
    same header recorded (`done`) and refuses a different header in one line. A torn last line (killed mid-write)
    is ignored."""

    def __init__(self, path: Path, header: dict[str, Any], resume: bool) -> None:
        self.path = path
        self.done: dict[str, Any] = {}
        self._torn = False
        if resume and path.exists():
            self.done = self._read(path, header)
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (resume and path.exists())
        self._f = open(path, "w" if fresh else "a", encoding="utf-8")
        if fresh:
            self._line({"header": header})
        elif self._torn:
            self._f.write("\n")

    def _read(self, path: Path, header: dict[str, Any]) -> dict[str, Any]:
        done: dict[str, Any] = {}
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        try:
            first = json.loads(lines[0])["header"]
        except (ValueError, KeyError, TypeError):
            raise BadInput(f"{path}: not a journal of an interrupted run (remove it to start afresh)") from None
        if first != json.loads(json.dumps(header)):
            raise BadInput(f"{path}: the interrupted run used other settings; use the same ones (or start afresh)")
        for line in lines[1:]:
            if not line:
                continue
            try:
                row = json.loads(line)
                done[row["key"]] = row.get("value")
            except (ValueError, KeyError, TypeError):  # the torn last line of a killed run
                self._torn = True
        return done

    def _line(self, obj: Any) -> None:
        self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._f.flush()

    def add(self, key: str, value: Any = None) -> None:
        """Record `key` done (after its output is in place)."""
        self._line({"key": key, "value": value})

    def close(self, remove: bool) -> None:
        """Close; `remove` when the run completed (nothing left to resume)."""
        self._f.close()
        if remove:
            self.path.unlink(missing_ok=True)
