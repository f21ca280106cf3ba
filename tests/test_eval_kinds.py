"""Task kinds are registered objects (eval/kinds.py): nothing else in the toolkit switches on a kind's name, and a
new kind registered once is what every step (row checks, prompts, scoring, summary) follows."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.eval.items import EvalItem, Unit
from medgemma_toolkit.eval.kinds import KINDS, Score, TaskKind, expand_units, get_kind, register
from medgemma_toolkit.eval.rows import RowError
from medgemma_toolkit.eval.spec import get_task

SRC = Path(__file__).resolve().parents[1] / "src" / "medgemma_toolkit"


def _kind_name_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing something's `.kind` with a registered kind's name (or a tuple of them)."""

    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            on_kind = any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides)
            if on_kind and any(names(s) & set(KINDS) for s in sides):
                lines.append(node.lineno)
    return lines


def test_no_module_but_the_registry_compares_a_task_kind_by_name():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "kinds.py" and path.parent.name == "eval":
            continue
        for line in _kind_name_comparisons(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(SRC)}:{line}")
    assert not offenders, "compare through spec.task_kind, not the kind's name: " + ", ".join(offenders)


def test_the_check_finds_a_comparison_when_there_is_one():
    assert _kind_name_comparisons(ast.parse('if spec.kind in ("vqa", "report"):\n    pass\n')) == [1]
    assert _kind_name_comparisons(ast.parse('if spec.kind == "mcq":\n    pass\n')) == [1]
    assert _kind_name_comparisons(ast.parse('if part.kind == "text":\n    pass\n')) == []


def test_each_task_resolves_to_its_registered_kind():
    for name, kind in (("medqa", "mcq"), ("cxr_classification", "conditions"), ("vqa_rad", "vqa")):
        assert get_task(name).task_kind is KINDS[kind]
    with pytest.raises(BadInput, match="unknown task kind"):
        get_kind("ranking")


def test_a_registered_kind_drives_expansion_scoring_and_summary():
    class Shouting(TaskKind):
        """A toy kind: two prompts per item, right when the answer is the gold in capitals."""

        name = "shouting"

        def check(self, spec, item):
            if not item.answer:
                raise RowError("no answer")

        def expand(self, spec, item, conditions):
            return [Unit(f"{item.id}::{i}", item, f"{item.question} ({i})", item.answer.upper()) for i in (1, 2)]

        def score(self, unit, parsed, convention):
            return Score(parsed == unit.gold, float(parsed == unit.gold))

        def summary(self, scored):
            return {"shouted": len(scored)}

    register(Shouting())
    try:
        import dataclasses

        spec = dataclasses.replace(get_task("medqa"), kind="shouting")
        item = EvalItem("q1", "test:1", question="Say yes", options={}, answer="yes")
        units = expand_units(spec, [item])
        assert [u.key for u in units] == ["q1::1", "q1::2"] and all(u.prompt_hash for u in units)
        assert spec.task_kind.score(units[0], "YES", None).correct is True  # type: ignore[arg-type]
        assert spec.task_kind.summary([{}, {}]) == {"shouted": 2}
        with pytest.raises(RowError):
            spec.task_kind.check(spec, EvalItem("q2", "test:2", question="?", options={}, answer=""))
    finally:
        del KINDS["shouting"]
