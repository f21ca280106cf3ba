"""Write embeddings where the user asked: Parquet (one row per vector, manifest columns beside it) or NumPy.

`.npy` holds the (n, dim) float32 matrix alone; its rows are described, in order, by `<file>.jsonl` beside it
(one JSON object per row: kind, input (index of the --image or --text), source, instance_number, sop_instance_uid, label, patch, text).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, BadInput

COLUMNS = ("kind", "input", "source", "instance_number", "sop_instance_uid", "label", "patch", "text")


def rows_for(entries: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [{c: (kind if c == "kind" else e.get(c)) for c in COLUMNS} for e in entries]


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_embeddings(path: str | Path, rows: list[dict[str, Any]], vectors: np.ndarray) -> list[Path]:
    """Write `vectors` (n, dim) with their `rows`; returns the files written. The suffix picks the format."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".parquet", ".npy"):
        raise BadInput(f"--out {p}: use a .parquet or .npy file name")
    if not p.parent.is_dir():
        raise BadInput(f"--out {p}: folder {p.parent} does not exist")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if suffix == ".npy":
        side = p.with_name(p.name + ".jsonl")

        def save(t: Path) -> None:
            with open(t, "wb") as f:
                np.save(f, vectors)

        _atomic(p, save)
        _atomic(side, lambda t: t.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)))
        return [p, side]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise BackendUnavailable("writing .parquet needs pyarrow: pip install 'medgemma-toolkit[embed]'") from None
    cols: dict[str, Any] = {c: [r.get(c) for r in rows] for c in COLUMNS}
    cols["patch"] = [json.dumps(v) if v is not None else None for v in cols["patch"]]
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    table = pa.table({**{c: pa.array(v) for c, v in cols.items()}, "embedding": emb})
    _atomic(p, lambda t: pq.write_table(table, t))
    return [p]
