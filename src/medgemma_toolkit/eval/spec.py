"""Evaluation tasks as data: one YAML file per task under `eval/tasks/`, validated by `TaskSpec`.

A task names its reader (the public release's file format), its kind (how an item becomes one or more prompts and
how an answer is scored), the prompt text, the parser, the metrics and the protocol's generation settings. Hooks are
small Python functions looked up by these names, so adding a benchmark is usually one YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import yaml

from ..errors import BadInput
from .kinds import KINDS, TaskKind


@dataclass(frozen=True)
class TaskSpec:
    """A versioned evaluation protocol. Change `version` whenever a change could move a score."""

    name: str
    version: str
    description: str
    kind: str  # a name in `kinds.KINDS`; `task_kind` is the object
    reader: str  # name in `formats.READERS`; the generic JSONL/CSV format is always accepted as well
    prompt: str  # str.format template: {question} {options} {condition}
    parser: str  # name in `parsers.PARSERS`
    metrics: tuple[str, ...]
    primary_metric: str
    max_new_tokens: int = 512
    think_max_new_tokens: int = 2048
    protocol: str = "medgemma-eval"  # zero-shot, greedy, no system prompt
    condition_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_condition_set: str | None = None
    # --split NAME -> how a release marks it: {ids_file} (eval/splits/), {column, equals|prefix}, {id_prefix},
    # {file: word in the file name}; hf_split: the split name in Hugging Face copies.
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    # CXR: each release's own label names -> the condition names asked (CXR14's "Effusion" = "Pleural Effusion").
    label_names: dict[str, dict[str, str]] = field(default_factory=dict)
    sample: str | None = None  # file under eval/samples/
    requires_images: bool = False  # every row must carry an image (image MCQ); VQA rows always need one
    references: tuple[str, ...] = ()

    @property
    def task_kind(self) -> TaskKind:
        """How this task asks and scores (`kinds.py`)."""
        return KINDS[self.kind]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def conditions(self, name: str | None = None) -> tuple[str, ...]:
        key = name or self.default_condition_set
        if key is None or key not in self.condition_sets:
            raise BadInput(
                f"task {self.name!r} has no condition set {key!r}; choose one of: "
                f"{', '.join(self.condition_sets) or '(none)'}"
            )
        return self.condition_sets[key]


def _spec_from_dict(data: dict[str, Any], origin: str) -> TaskSpec:
    known = {f.name for f in fields(TaskSpec)}
    unknown = set(data) - known
    if unknown:
        raise BadInput(f"{origin}: unknown task field(s) {', '.join(sorted(unknown))}")
    try:
        data = dict(data)
        data["version"] = str(data["version"])
        data["metrics"] = tuple(data["metrics"])
        data["references"] = tuple(data.get("references", ()))
        data["condition_sets"] = {k: tuple(v) for k, v in (data.get("condition_sets") or {}).items()}
        data["splits"] = {str(k): dict(v) for k, v in (data.get("splits") or {}).items()}
        data["label_names"] = {
            str(k): {str(a): str(b) for a, b in (v or {}).items()} for k, v in (data.get("label_names") or {}).items()
        }
        spec = TaskSpec(**data)
    except (KeyError, TypeError) as e:
        raise BadInput(f"{origin}: invalid task definition ({e})") from None
    if spec.kind not in KINDS:
        raise BadInput(f"{origin}: kind must be one of {', '.join(KINDS)}")
    for name, rule in spec.splits.items():
        if not {"ids_file", "column", "id_prefix", "file", "hf_split"} & set(rule):
            raise BadInput(f"{origin}: split {name!r} needs ids_file, column, id_prefix, file or hf_split")
    if spec.primary_metric not in spec.metrics:
        raise BadInput(f"{origin}: primary_metric {spec.primary_metric!r} is not in metrics")
    return spec


@lru_cache(maxsize=1)
def builtin_tasks() -> dict[str, TaskSpec]:
    """Every task shipped in `eval/tasks/*.yaml`, by name."""
    out: dict[str, TaskSpec] = {}
    for entry in sorted(files(__package__).joinpath("tasks").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            spec = _spec_from_dict(yaml.safe_load(entry.read_text()), entry.name)
            out[spec.name] = spec
    return out


def get_task(name: str) -> TaskSpec:
    """A built-in task by name, or a task YAML file given by path."""
    if name.endswith((".yaml", ".yml")):
        from pathlib import Path

        p = Path(name)
        if not p.is_file():
            raise BadInput(f"{name}: task file not found")
        return _spec_from_dict(yaml.safe_load(p.read_text()) or {}, name)
    tasks = builtin_tasks()
    if name not in tasks:
        raise BadInput(f"unknown task {name!r}; choose one of: {', '.join(tasks)} (or a task .yaml file)")
    return tasks[name]


def sample_path(spec: TaskSpec) -> Traversable:
    """The shipped sample data file for a task (our own items, for demos and tests)."""
    if not spec.sample:
        raise BadInput(f"task {spec.name!r} ships no sample data; give --data")
    return files(__package__).joinpath("samples").joinpath(spec.sample)
