"""Rows out of the files the releases publish, and the small helpers every per-release reader shares.

`load_rows` yields (location, row) pairs from JSON lines and CSV/TSV (through the toolkit's one row reader,
`rowfile`) and adapts the release layouts on top of it: a JSON list or object, MMLU's header-less CSVs (or their
folder), a parquet file, a `save_to_disk` folder or `hf:NAME[:CONFIG][:SPLIT]` from the local Hugging Face datasets
cache (never downloaded). A reader turns a row into an `EvalItem`, raises `RowError` for a malformed
row, or `SkipRow` (with a reason) for a row the task cannot score.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..jsondepth import loads_bounded
from ..rowfile import Row, read_rows
from .items import LETTERS

# The MMLU subjects MedGemma's report groups as medical; in a folder of MMLU CSVs only these files are read.
MMLU_MED_SUBJECTS = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)
HF_SPLIT_NAMES = ("train", "test", "validation", "valid", "dev", "val")


class RowError(BadInput):
    """One malformed row (message starts with its file:line)."""


class SkipRow(Exception):
    """A well-formed row the task cannot score (unlabelled, multi-answer, not English...): counted by reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ReadContext:
    path: Path  # the data file (or dataset directory)
    image_roots: list[Path]  # where relative image paths are looked up, in order
    explicit_images: bool = False  # --images was given
    _bare_index: dict[str, Path] | None = field(default=None, repr=False)


# -- rows ---------------------------------------------------------------------------------------------------------
def load_rows(path: Path, reader: str, split: str | None = None) -> Iterator[tuple[str, Row | RowError]]:
    """(location, row) pairs from a data file, a folder of MMLU CSVs, a parquet file or a Hugging Face dataset."""
    if str(path).startswith("hf:") or (
        path.is_dir()
        and (
            (path / "dataset_info.json").exists()
            or (path / "state.json").exists()
            or (path / "dataset_dict.json").exists()
        )
    ):
        yield from hf_rows(str(path), split)
        return
    if path.is_dir():
        files = _mmlu_files(path) if reader == "mmlu" else []
        if not files:
            raise BadInput(
                f"{path}: is a directory; give the data file"
                + (" (MMLU: the release's data/test folder of *_test.csv files)" if reader == "mmlu" else "")
            )
        for f in files:
            yield from load_rows(f, reader)
        return
    if not path.is_file():
        raise BadInput(f"{path}: data file not found")
    name, suffix = path.name, path.suffix.lower()
    if suffix == ".csv" and reader == "mmlu" and not _has_header(path):
        yield from _mmlu_rows(path)
        return
    if suffix == ".parquet":  # a file from a Hugging Face dataset repository
        try:
            import pandas as pd

            frame = pd.read_parquet(path)
        except Exception as e:  # corrupt file, no parquet engine: one line
            raise BadInput(f"{name}: cannot read parquet ({type(e).__name__})") from None
        for i, row in enumerate(frame.to_dict(orient="records")):
            yield f"{name}[{i}]", {**_plain(row), "_hf": True}
        return
    if suffix in (".csv", ".tsv"):
        for r in read_rows(path):
            yield r.where, r.row
        return
    if suffix == ".json":
        try:
            data = loads_bounded(path.read_text(encoding="utf-8-sig"), name)  # deep nesting: one line, not a crash
        except UnicodeDecodeError as e:
            raise BadInput(f"{path}: cannot read ({type(e).__name__})") from None
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # MedMCQA's .json files are JSON lines: read them as such below
                raise BadInput(f"{name}:{e.lineno}: not valid JSON ({e.msg})") from None
            data = None
        if isinstance(data, dict) and _looks_like_row(data):  # a one-row MedMCQA file: one row, not a map
            yield f"{name}:1", data
            return
        if data is not None:
            yield from _json_rows(name, data)
            return
    for r in read_rows(path, "jsonl"):  # JSON lines (any other suffix); a bad line is raised by the caller
        yield r.where, (r.row if r.error is None else RowError(f"{r.where}: {r.error}"))


def _looks_like_row(d: dict[str, Any]) -> bool:
    """A single row object (has a question field and no nested rows) rather than PubMedQA's {PMID: row} map."""
    return any(k in d for k in ("question", "QUESTION")) and not all(isinstance(v, dict) for v in d.values())


def _json_rows(name: str, data: Any) -> Iterator[tuple[str, Row]]:
    if isinstance(data, list):
        for i, row in enumerate(data):
            yield f"{name}[{i}]", row
    elif isinstance(data, dict) and data and all(isinstance(v, str) for v in data.values()):
        raise BadInput(
            f"{name}: maps ids to bare answers (like PubMedQA's test_ground_truth.json): that is a split, "
            "not a data file; pass it as --ids with the data file (ori_pqal.json)"
        )
    elif isinstance(data, dict):  # PubMedQA: {PMID: {...}}
        for key, row in data.items():
            yield f"{name}[{key}]", ({"id": key, **row} if isinstance(row, dict) else row)
    else:
        raise BadInput(f"{name}: expected a JSON list or object of rows")


def _mmlu_files(folder: Path) -> list[Path]:
    """The medical subjects' CSVs in MMLU's data/test (or dev/val) folder; also accepts the release's data/ root."""
    if (folder / "test").is_dir() and not any(folder.glob("*.csv")):
        folder = folder / "test"
    return sorted(f for f in folder.glob("*.csv") if f.stem.rsplit("_", 1)[0] in MMLU_MED_SUBJECTS)


def _mmlu_rows(path: Path) -> Iterator[tuple[str, Row | RowError]]:
    subject = path.stem.removesuffix("_test").removesuffix("_dev").removesuffix("_val")
    with open(path, newline="", encoding="utf-8-sig") as f:
        for i, cols in enumerate(csv.reader(f), 1):
            if len(cols) < 4:
                yield f"{path.name}:{i}", RowError(f"{path.name}:{i}: expected question, options..., answer columns")
                continue
            yield (
                f"{path.name}:{i}",
                {
                    "id": f"{subject}-{i}",
                    "question": cols[0],
                    "options": cols[1:-1],
                    "answer": cols[-1].strip(),
                    "subject": subject,
                },
            )


def _plain(row: Row) -> Row:
    """numpy arrays and scalars from parquet -> lists and Python values (nested ones too)."""
    out = {}
    for k, v in row.items():
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, list):
            v = [_plain(x) if isinstance(x, dict) else (x.tolist() if hasattr(x, "tolist") else x) for x in v]
        elif isinstance(v, dict):
            v = _plain(v)
        out[k] = v
    return out


def _has_header(path: Path) -> bool:
    with open(path, newline="", encoding="utf-8-sig") as f:
        first = next(csv.reader(f), [])
    return bool(first) and first[0].strip().lower() in ("question", "id")


def parse_hf_spec(spec: str, split: str | None = None) -> tuple[str, str | None, str | None]:
    """`hf:NAME[:CONFIG][:SPLIT]` -> (name, config, split). A lone second part is a split only when it is one of
    the usual split names (train/test/validation/...); otherwise it is the config. `--split` overrides."""
    parts = spec[3:].split(":")
    name, rest = parts[0], parts[1:]
    if not name or len(rest) > 2 or any(not p for p in rest):
        raise BadInput(f"{spec}: expected hf:NAME[:CONFIG][:SPLIT]")
    config = sp = None
    if len(rest) == 2:
        config, sp = rest
    elif len(rest) == 1:
        if rest[0] in HF_SPLIT_NAMES:
            sp = rest[0]
        else:
            config = rest[0]
    return name, config, split or sp


@contextmanager
def _offline() -> Iterator[None]:
    """Hub access off for the datasets library while a dataset is opened (the flags are read at import time, so
    the environment variable alone is not enough), restored afterwards for whatever the caller does next."""
    import datasets.config as dc
    import huggingface_hub.constants as hc

    saved = (dc.HF_HUB_OFFLINE, dc.HF_DATASETS_OFFLINE, hc.HF_HUB_OFFLINE)
    dc.HF_HUB_OFFLINE = dc.HF_DATASETS_OFFLINE = hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dc.HF_HUB_OFFLINE, dc.HF_DATASETS_OFFLINE, hc.HF_HUB_OFFLINE = saved


def hf_rows(spec: str, split: str | None = None) -> Iterator[tuple[str, Row]]:
    """A `save_to_disk` folder, or `hf:NAME[:CONFIG][:SPLIT]` from the local datasets cache (offline only)."""
    try:
        import datasets
    except ImportError:
        raise BadInput("reading Hugging Face datasets needs the `datasets` package") from None
    label = spec
    if spec.startswith("hf:"):
        name, config, sp = parse_hf_spec(spec, split)
        try:
            with _offline():
                ds = datasets.load_dataset(name, config)
        except ValueError as e:  # a config or split that the cached dataset does not have: datasets names them
            raise BadInput(f"{spec}: {str(e).splitlines()[0][:300]}") from None
        except Exception:
            raise BadInput(
                f"{spec}: dataset {name!r}"
                + (f" (config {config!r})" if config else "")
                + " is not in the local Hugging Face datasets cache; nothing is downloaded. Download it "
                "yourself, or give a saved folder (save_to_disk) or a parquet file as --data"
            ) from None
        label = name.rsplit("/", 1)[-1]
    else:
        try:
            ds = datasets.load_from_disk(spec)
        except Exception as e:
            raise BadInput(f"{spec}: cannot open the saved dataset ({type(e).__name__})") from None
        sp = split
        label = Path(spec).name
    if isinstance(ds, datasets.DatasetDict):
        have = list(ds)
        if sp is None:
            sp = "test" if "test" in ds else (have[0] if len(have) == 1 else None)
            if sp is None:
                raise BadInput(f"{spec}: has splits {', '.join(have)} and none is 'test'; choose one with --split")
        if sp not in ds:
            raise BadInput(f"{spec}: no split {sp!r}; it has {', '.join(have)}")
        ds = ds[sp]
    elif split is not None and not spec.startswith("hf:"):
        raise BadInput(f"{spec}: holds a single split; --split {split} does not apply to it")
    for i, row in enumerate(ds):
        yield f"{label}[{i}]", {**_plain(row), "_hf": True}


# -- helpers the readers share -------------------------------------------------------------------------------------
def req(row: Row, loc: str, *keys: str) -> Any:
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return row[k]
    raise RowError(f"{loc}: missing field {' or '.join(repr(k) for k in keys)}")


def is_blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def options_of(raw: Any, loc: str) -> dict[str, str]:
    """Options given as {"A": ...}, a list, [{"letter", "content"}], or a JSON string of either."""
    if isinstance(raw, str):
        try:
            raw = loads_bounded(raw, f"{loc}: options")
        except json.JSONDecodeError:
            raw = [o.strip() for o in raw.split("||")] if "||" in raw else None
    if isinstance(raw, list) and raw and all(isinstance(o, dict) and "letter" in o for o in raw):
        raw = {str(o["letter"]): o.get("content") for o in raw}  # MedXpertQA's GitHub release
    if isinstance(raw, dict):
        opts = {str(k).strip().upper(): str(v).strip() for k, v in raw.items() if not is_blank(v)}
        if not all(len(k) == 1 and k in LETTERS for k in opts):
            opts = {LETTERS[i]: v for i, v in enumerate(opts.values())}
    elif isinstance(raw, list):
        opts = {LETTERS[i]: str(v).strip() for i, v in enumerate(raw) if not is_blank(v)}
    else:
        raise RowError(f"{loc}: 'options' must be a mapping or a list")
    if len(opts) < 2:
        raise RowError(f"{loc}: fewer than two options")
    return opts


def gold_letter(answer: Any, options: dict[str, str], loc: str, zero_based: bool = True) -> str:
    """Gold given as a letter, an index, or the option's text."""
    if isinstance(answer, bool):
        raise RowError(f"{loc}: answer {answer!r} is not an option")
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    if isinstance(answer, int) or (isinstance(answer, str) and answer.strip().isdigit()):
        idx = int(answer) - (0 if zero_based else 1)
        if 0 <= idx < len(options):
            return list(options)[idx]
        raise RowError(f"{loc}: answer index {answer} is out of range")
    a = str(answer).strip()
    if a.upper() in options:
        return a.upper()
    for k, v in options.items():
        if v.strip().lower() == a.lower():
            return k
    raise RowError(f"{loc}: answer {a[:40]!r} is neither an option letter nor an option's text")


def row_id(row: Row, loc: str, *keys: str) -> str:
    for k in keys:
        if not is_blank(row.get(k)):
            return str(row[k])
    return loc.replace(":", "-")


# Where the releases put their images below the folder the user points at (NIH ChestX-ray14 unpacks into
# images_001/images/..., SLAKE into imgs/, VQA-RAD copies into "VQA_RAD Image Folder", MedXpertQA into images/).
IMAGE_DIR_NAMES = ("VQA_RAD Image Folder", "imgs", "images")


def default_image_roots(path: Path) -> list[Path]:
    """Beside the data file, its releases' image folders, then the folder above (CheXpert's paths start with the
    dataset folder, so they are relative to the folder that holds it)."""
    if str(path).startswith("hf:"):
        return [Path.cwd()]
    base = path if path.is_dir() else path.parent
    roots = [base] + [base / n for n in IMAGE_DIR_NAMES if (base / n).is_dir()]
    return roots + [base.parent]


def _bare_lookup(ctx: ReadContext, name: str) -> Path | None:
    """A bare file name (CXR14's `Image Index`) found anywhere in the releases' nested image folders."""
    if ctx._bare_index is None:
        ctx._bare_index = {}
        for root in ctx.image_roots:
            for sub in sorted(root.glob("images_*/images")) + sorted(root.glob("images_*")):
                if sub.is_dir():
                    for f in sub.iterdir():
                        ctx._bare_index.setdefault(f.name, f)
    return ctx._bare_index.get(name)


def _embedded_image(obj: Any) -> str:
    """An image stored inside a Hugging Face dataset (encoded bytes or a decoded PIL image), written once to the
    eval cache under its content hash, so records and prompt hashes name a file like any other image."""
    import hashlib
    import io

    from .records import default_cache_dir

    if hasattr(obj, "save"):
        buf = io.BytesIO()
        obj.save(buf, format="PNG")
        data = buf.getvalue()
    else:
        data = bytes(obj["bytes"])
    digest = hashlib.sha256(data).hexdigest()
    folder = default_cache_dir() / "images"
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".jpg" if data[:2] == b"\xff\xd8" else ".png" if data[:4] == b"\x89PNG" else ""
    path = folder / (digest + ext)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path)


def image_paths(row: Row, loc: str, ctx: ReadContext, *keys: str) -> list[str]:
    """Absolute image paths for a row, resolved the way the release lays its files out."""
    raw: Any = None
    for k in keys:
        if not is_blank(row.get(k)) and row.get(k) != []:
            raw = row[k]
            break
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [s.strip() for s in raw.split(";") if s.strip()]
    elif isinstance(raw, dict) or hasattr(raw, "save"):  # one {"image_path"} / HF Image value / PIL image
        raw = [raw]
    out = []
    for p in raw:
        if isinstance(p, dict) and isinstance(p.get("bytes"), (bytes, bytearray)) or hasattr(p, "save"):
            out.append(_embedded_image(p))  # a Hugging Face Image feature: the pixels are in the dataset itself
            continue
        if isinstance(p, dict):  # MedXpertQA MM: {"image_path": ...}; an HF Image feature left undecoded: {"path"}
            p = p.get("image_path") or p.get("path")
        if not isinstance(p, str) or not p:
            raise RowError(f"{loc}: image paths must be strings")
        candidates = [Path(p)] if Path(p).is_absolute() else [root / p for root in ctx.image_roots]
        full = next((c for c in candidates if c.is_file()), None)
        if full is None and "/" not in p:
            full = _bare_lookup(ctx, p)
        if full is None:
            where = ", ".join(str(r) for r in ctx.image_roots[:3])
            hint = "" if ctx.explicit_images else "; give the release's image folder with --images"
            raise RowError(f"{loc}: image file not found: {p} (looked in {where}){hint}")
        out.append(str(full))
    return out


def row_images(row: Row, loc: str, ctx: ReadContext, *keys: str) -> list[str]:
    """A row's images: `prior` then `current` for a comparison row (the order of Google's longitudinal notebook),
    else those under `keys` (see `image_paths`)."""
    if is_blank(row.get("prior")) and is_blank(row.get("current")):
        return image_paths(row, loc, ctx, *keys)
    if any(not is_blank(row.get(k)) and row.get(k) != [] for k in keys):
        raise RowError(f"{loc}: a comparison row gives 'prior' and 'current', not also {'/'.join(keys)}")
    prior, current = image_paths(row, loc, ctx, "prior"), image_paths(row, loc, ctx, "current")
    if not prior or not current:
        raise RowError(f"{loc}: a comparison row needs both 'prior' and 'current'")
    return prior + current
