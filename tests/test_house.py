"""The house's figures, kept: no function over 80 lines, no module over 500 lines (docstrings included).

A long function is where several jobs hide, a long module where several rooms do; both were cut down once and
this keeps them so. (Import cycles: tests/test_models_api.py::test_no_import_cycle.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import refconv

PACKAGE = Path(refconv.__file__).parent
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_over_80_lines():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_no_module_over_500_lines():
    long = [f"{p.relative_to(PACKAGE)} ({n} lines)" for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert long == []


def test_the_checks_can_fail(tmp_path):
    """The counting itself: a 81-line function is found."""
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    tree = ast.parse(f"def f():\n{body}\n")
    fn = tree.body[0]
    assert fn.end_lineno - fn.lineno + 1 == 81 > MAX_FUNCTION_LINES
