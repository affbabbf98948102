"""The benchmarks import what exists: every `from stages... import name` in benchmarks/*.py (at module level or
inside a function, where it runs only when the benchmark does) names a module and attribute that are there, so a
refactor of the stages cannot leave a benchmark broken until someone runs it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def stage_imports(path: Path) -> list[tuple[int, str, str]]:
    """`(line, module, name)` for every `from stages... import name` in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(node.lineno, node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "stages"
            for alias in node.names]


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_a_benchmark_imports_only_names_the_stages_define(path):
    missing = []
    for line, module, name in stage_imports(path):
        if not hasattr(importlib.import_module(module), name):
            missing.append(f"{path.name}:{line}: {module}.{name}")
    assert not missing, missing
