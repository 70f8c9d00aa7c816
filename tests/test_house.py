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


def _modules(root: Path = PACKAGE) -> list[Path]:
    return sorted(root.rglob("*.py"))


def long_functions(root: Path = PACKAGE) -> list[str]:
    """``path:line name (n lines)`` of every function over the limit under ``root``."""
    long = []
    for path in _modules(root):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    return long


def long_modules(root: Path = PACKAGE) -> list[str]:
    return [f"{p.relative_to(root)} ({n} lines)" for p in _modules(root)
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]


def test_no_function_over_80_lines():
    assert long_functions() == []


def test_no_module_over_500_lines():
    assert long_modules() == []


def test_the_checks_can_fail(tmp_path):
    """An 81-line method and a 501-line module are found; 80 and 500 lines pass."""
    body = "\n".join(f"        x{i} = {i}" for i in range(79))
    (tmp_path / "a.py").write_text(f"class A:\n    def ok(self):\n{body}\n\n    def long(self):\n{body}\n        y = 1\n")
    (tmp_path / "b.py").write_text("x = 1\n" * 500)
    assert long_functions(tmp_path) == ["a.py:83 long (81 lines)"]
    assert long_modules(tmp_path) == []
    (tmp_path / "b.py").write_text("x = 1\n" * 501)
    assert long_modules(tmp_path) == ["b.py (501 lines)"]
