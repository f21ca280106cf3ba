"""Worker factories for the tests of `scale/`: importable by name in spawned processes and Ray actors."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

from ..errors import BadInput


def make_square(delay: float = 0.0) -> Callable[[int], tuple[int, int, str]]:
    """A worker that squares ints and names the process and the build it ran in (one build per process)."""
    build = uuid.uuid4().hex

    def square(x: int) -> tuple[int, int, str]:
        if delay:
            time.sleep(delay)
        return x * x, os.getpid(), build

    return square


def make_failing(kind: str) -> Callable[[int], int]:
    """A worker that fails on unit 3: with a `BadInput` (shown as is) or a `ValueError` quoting "secret" data."""

    def fail(x: int) -> int:
        if x == 3:
            if kind == "bad_input":
                raise BadInput("unit 3 is not usable")
            raise ValueError("Doe^Janet in the header")
        return x

    return fail


DRIVER_MARK = ""  # set by a test in the driver: a forked worker sees the driver's value, a spawned one the default


def make_marked() -> Callable[[int], str]:
    """A worker that returns `DRIVER_MARK` as its process sees it (tells a forked pool from a spawned one)."""
    return lambda x: DRIVER_MARK
