"""Task kinds as registered objects, as lm-evaluation-harness keeps its `output_type`s: what a kind requires of a
row, how it turns an item into prompts, how it scores a parsed answer and what it adds to the summary.

A task's YAML names its kind (`kind: mcq`); `TaskSpec.task_kind` is the object. Nothing outside this module compares
a kind to a name, so a new kind is one subclass here and one `register` line, and every step (row checks, prompts,
scoring, the log-likelihood mode, metric conventions, the summary) follows from it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import BadInput
from .conventions import VQAConvention
from .items import EvalItem, Unit, format_options, prompt_hash
from .metrics import confusion, per_condition_f1, rouge_l
from .rows import RowError

if TYPE_CHECKING:
    from .spec import TaskSpec


@dataclass(frozen=True)
class Score:
    """One parsed answer, scored: `correct` (None where a kind has no right answer, e.g. reports), `score` (the
    per-answer value metrics average) and, for VQA, whether the convention counts the question as closed."""

    correct: bool | None
    score: float
    closed: bool | None = None


class TaskKind(ABC):
    """How one kind of task asks and scores. Subclasses set the class attributes and implement `score`."""

    name: ClassVar[str]
    per_condition: ClassVar[bool] = False  # one prompt per (item, condition) instead of one per item
    loglikelihood: ClassVar[bool] = False  # `--mode loglikelihood` can score it (option letters as continuations)
    conventions: ClassVar[bool] = False  # metric conventions (eval/conventions.py) other than ours apply

    def check(self, spec: TaskSpec, item: EvalItem) -> None:
        """Raise `RowError` when a row lacks what this kind needs (read time, before any model loads). The base
        kind asks for nothing beyond what every reader already checks."""
        return None

    def expand(self, spec: TaskSpec, item: EvalItem, conditions: tuple[str, ...]) -> list[Unit]:
        """The prompts for one item: by default one, the task's template with the options filled in."""
        opts = "" if item.options_in_question else format_options(item.options)
        inline = "" if item.options_in_question else " ".join(f"({k}) {v}" for k, v in item.options.items())
        text = spec.prompt.format(question=item.question.strip(), options=opts, options_inline=inline, condition="")
        if not opts:
            text = re.sub(r"\n{3,}", "\n\n", text)  # no empty options block between question and request
        return [Unit(item.id, item, text.strip(), item.answer)]

    @abstractmethod
    def score(self, unit: Unit, parsed: str | None, convention: VQAConvention) -> Score:
        """Score one parsed answer (None: unparseable, which is wrong)."""

    def summary(self, scored: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Sections this kind adds to summary.json, from the records that were answered."""
        return {}


class MultipleChoice(TaskKind):
    name = "mcq"
    loglikelihood = True

    def check(self, spec: TaskSpec, item: EvalItem) -> None:
        if not item.options or item.answer not in item.options:
            raise RowError(f"{item.location}: a multiple-choice row needs options and the correct option")
        if spec.requires_images and not item.images:
            raise RowError(f"{item.location}: an image question needs an image path")

    def score(self, unit: Unit, parsed: str | None, convention: VQAConvention) -> Score:
        ok = parsed is not None and parsed == unit.gold
        return Score(ok, float(ok))

    def summary(self, scored: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not scored:
            return {}
        labels, columns, matrix = confusion(scored)
        # rows: the correct option; columns: the parsed answer, the last one for answers that could not be parsed
        return {"confusion": {"labels": labels, "columns": columns, "matrix": matrix}}


class Conditions(TaskKind):
    """A yes/no question per labelled condition (CXR classification); F1 per condition, then macro-averaged."""

    name = "conditions"
    per_condition = True

    def expand(self, spec: TaskSpec, item: EvalItem, conditions: tuple[str, ...]) -> list[Unit]:
        units = []
        for cond in conditions:
            if cond not in item.labels:
                continue  # uncertain or unlabelled for this condition: not asked, as in the protocol
            text = spec.prompt.format(condition=cond.lower(), question=item.question, options="")
            units.append(Unit(f"{item.id}::{cond}", item, text.strip(), "yes" if item.labels[cond] else "no", cond))
        return units

    def score(self, unit: Unit, parsed: str | None, convention: VQAConvention) -> Score:
        ok = parsed is not None and parsed == unit.gold
        return Score(ok, float(ok))

    def summary(self, scored: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"per_condition_f1": per_condition_f1(scored)}


class VisualQA(TaskKind):
    """Open and closed questions about an image, scored by the run's metric convention."""

    name = "vqa"
    conventions = True

    def check(self, spec: TaskSpec, item: EvalItem) -> None:
        if not item.images:
            raise RowError(f"{item.location}: a VQA row needs an image path")
        if not item.answer:
            raise RowError(f"{item.location}: missing reference answer")

    def score(self, unit: Unit, parsed: str | None, convention: VQAConvention) -> Score:
        v = convention.score(parsed, unit.gold or "", unit.item.answer_type)
        return Score(v.correct, v.score, v.closed)


class Report(TaskKind):
    """Free text against a reference report (ROUGE-L per answer); no single right answer."""

    name = "report"

    def check(self, spec: TaskSpec, item: EvalItem) -> None:
        if not item.answer:
            raise RowError(f"{item.location}: missing reference answer")

    def score(self, unit: Unit, parsed: str | None, convention: VQAConvention) -> Score:
        return Score(None, rouge_l(parsed, unit.gold or ""))


KINDS: dict[str, TaskKind] = {}


def register(kind: TaskKind) -> TaskKind:
    KINDS[kind.name] = kind
    return kind


for _kind in (MultipleChoice(), Conditions(), VisualQA(), Report()):
    register(_kind)


def get_kind(name: str) -> TaskKind:
    try:
        return KINDS[name]
    except KeyError:
        raise BadInput(f"unknown task kind {name!r}; one of {', '.join(KINDS)}") from None


def expand_units(spec: TaskSpec, items: list[EvalItem], conditions: tuple[str, ...] = ()) -> list[Unit]:
    """The prompts for every item, in dataset order (the runner sorts by length for batching)."""
    kind = spec.task_kind
    digests: dict[str, str] = {}
    units = [u for it in items for u in kind.expand(spec, it, conditions)]
    for u in units:
        u.prompt_hash = prompt_hash(u.text, u.item.images, digests)
    return units
