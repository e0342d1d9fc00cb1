"""Optimizers and the core decide from declared capabilities: no built-in problem name appears in their code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gdla
from gdla.demo import BUILTIN_DIST

ROOT = Path(__file__).resolve().parents[1]
CHECKED = [ROOT / "gdla", ROOT / "plugins" / "optimizers"]


def builtin_problem_names() -> set[str]:
    names = {entry.name for entry in gdla.registry.entries("problem") if entry.plugin == BUILTIN_DIST}
    assert {"inverse", "svd", "sparse", "toeplitz", "toeplitz-net"} <= names  # the check below is not vacuous
    return names


def string_constants(source: str) -> list[tuple[int, str]]:
    """Every string constant in code, docstrings excluded (they may show examples)."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


@pytest.mark.parametrize("folder", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_builtin_problem_name_in_code(folder: Path) -> None:
    names = builtin_problem_names()
    found = []
    for path in sorted(folder.rglob("*.py")):
        for line, value in string_constants(path.read_text()):
            if value in names:
                found.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert not found, "problem names in optimizer/core code:\n" + "\n".join(found)


def test_the_check_finds_a_name() -> None:
    assert string_constants('def f(p):\n    """Doc "inverse"."""\n    return p.name == "inverse"\n') == [(3, "inverse")]
