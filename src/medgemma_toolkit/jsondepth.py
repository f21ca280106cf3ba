"""Bounded JSON nesting, for request bodies, row files and JSON strings inside them (tool-call arguments).

`[` x 200,000 costs 200 KB and makes Python's `json` raise RecursionError, which callers did not expect (a 500, an
"internal error"); a few thousand levels parse but then crash whatever walks the value recursively. No input we
take needs more than a few levels, so anything deeper than `MAX_DEPTH` is refused with a one-line error.

>>> loads_bounded('{"a": [1, {"b": 2}]}')
{'a': [1, {'b': 2}]}
"""

from __future__ import annotations

import json
from typing import Any

from .errors import BadInput

MAX_DEPTH = 64  # lists and objects inside each other


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests lists/objects more than `limit` levels (iteratively: no recursion of its own)."""
    if not isinstance(value, (list, dict)):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > limit:
            return True
        children = obj.values() if isinstance(obj, dict) else obj
        stack.extend((c, depth + 1) for c in children if isinstance(c, (list, dict)))
    return False


def check_depth(value: Any, what: str, limit: int = MAX_DEPTH) -> Any:
    """`value`, or `BadInput` naming `what` when it nests deeper than `limit`."""
    if isinstance(value, (list, dict)) and too_deep(value, limit):
        raise BadInput(f"{what} is nested more than {limit} levels deep")
    return value


def loads_bounded(text: str | bytes, what: str = "JSON", limit: int = MAX_DEPTH) -> Any:
    """`json.loads`, with nesting beyond `limit` a `BadInput` (also when the parser itself gives up on it).
    Other parse errors stay `json.JSONDecodeError`, for callers that word them themselves."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadInput(f"{what} is nested more than {limit} levels deep") from None
    return check_depth(value, what, limit)
