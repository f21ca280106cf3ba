"""Every benchmark script still fits the package it measures: each `from medgemma_toolkit... import name` in
`benchmarks/` (at the top or inside a function, where most of them import lazily) names a module and attribute that
exist. A benchmark is run by hand, rarely: a moved function otherwise breaks it silently until someone needs the
number (`eval_runner.py` imported `eval_preset_name` from its old module for a whole round)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parent.parent / "benchmarks").rglob("*.py"))


def toolkit_imports(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) of every `from medgemma_toolkit... import name` in the script."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "medgemma_toolkit" or node.module.startswith("medgemma_toolkit."):
                found += [(node.module, alias.name, node.lineno) for alias in node.names]
    return found


def unresolved(path: Path) -> list[str]:
    missing = []
    for module, name, line in toolkit_imports(path):
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{path.name}:{line}: {module}.{name}")
    return missing


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_benchmark_imports_resolve(path):
    assert unresolved(path) == []


def test_the_check_sees_a_lazy_import_of_a_moved_name(tmp_path):
    """Inside a function, as eval_runner's was: the old home of `eval_preset_name` is reported, its new one and a
    submodule import are not."""
    script = tmp_path / "bench.py"
    script.write_text(
        "def main():\n"
        "    from medgemma_toolkit.eval.runner import eval_preset_name\n"
        "    from medgemma_toolkit.eval.facts import eval_preset_name as ok\n"
        "    from medgemma_toolkit.backends import hf_decode\n"
    )
    assert unresolved(script) == ["bench.py:2: medgemma_toolkit.eval.runner.eval_preset_name"]
