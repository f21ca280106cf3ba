"""Counts calls of a few toolkit functions in every process of a test run (the driver and each worker).

Put this folder first on PYTHONPATH and name a log file in MEDGEMMA_COUNT_LOG: Python imports `sitecustomize` at
start-up in every process (spawned pool workers inherit the environment), and this one wraps, as soon as their
module is imported, `medgemma_toolkit.api.load_backend` (every model load, `MedGemma.load`) and
`medgemma_toolkit.api.load_parts` (every image source decoded into model parts, `MedGemma.media`). Each call
appends "PID NAME" to the log. The functions still run: the run is the real one, only observed.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import sys
from typing import Any

LOG = os.environ.get("MEDGEMMA_COUNT_LOG")
WATCH = {"medgemma_toolkit.api": ("load_backend", "load_parts")}


def _counted(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with open(str(LOG), "a", encoding="utf-8") as f:  # one short line per call: appends do not interleave
            f.write(f"{os.getpid()} {name}\n")
        return fn(*args, **kwargs)

    return call


class _Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in WATCH:
            return None
        sys.meta_path.remove(self)  # find the real spec, then wrap its loader once
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            for name in WATCH[fullname]:
                setattr(module, name, _counted(name, getattr(module, name)))

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if LOG:
    sys.meta_path.insert(0, _Watch())
