"""The README's "Writing a plugin" example works as written, with no name anywhere in gdla."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

import gdla
from gdla.testing import OptimizerContract, ProblemContract

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_plugin() -> dict[str, Any]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Writing a plugin") :]
    block = re.search(r"```python\n(# my_package/plugin\.py.*?)```", section, re.S)
    assert block, "the README lost its plugin example"
    namespace: dict[str, Any] = {"__name__": "readme_plugin"}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102
    return namespace


@pytest.fixture
def plugin(register_plugin: Any) -> dict[str, Any]:
    namespace = readme_plugin()
    hooks = {key: namespace[key] for key in ("register_problems", "register_optimizers")}
    register_plugin(type("ReadmePlugin", (), {k: staticmethod(v) for k, v in hooks.items()}), name="readme")
    return namespace


@pytest.mark.parametrize("method", ["auto", "cg", "line-search", "heavy-ball", "descent"])
def test_every_method_solves_the_readme_problem(plugin: dict[str, Any], method: str) -> None:
    problem = plugin["Fit"].example()
    result = gdla.solve(problem, optimizer=method, max_steps=5000)
    assert result.converged, result.summary()
    assert float(problem.error(result.params)) <= 1e-8
    if method == "auto":
        assert result.settings["optimizer.method"] == "cg"


def test_the_command_line(plugin: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from gdla.cli import main

    code = main(["solve", "fit", "--optimizer", "descent"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "fit with descent" in out and "converged" in out


class TestReadmeProblemContract(ProblemContract):
    problem_name = "fit"

    @pytest.fixture(autouse=True)
    def _registered(self, plugin: dict[str, Any]) -> None:
        return None


class TestReadmeOptimizerContract(OptimizerContract):
    optimizer_name = "descent"
    solve_options = {"max_steps": 3000}

    @pytest.fixture(autouse=True)
    def _registered(self, plugin: dict[str, Any]) -> None:
        return None


def test_dtype_device_and_to_come_from_the_base_class(plugin: dict[str, Any]) -> None:
    problem = plugin["Fit"].example()
    assert problem.dtype == torch.float64 and problem.device == torch.device("cpu")
    single = problem.to(dtype=torch.float32)
    assert single.dtype == torch.float32 and single.A.dtype == torch.float32 and problem.A.dtype == torch.float64
