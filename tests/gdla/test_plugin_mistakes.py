"""A plugin author's mistake is a clear error naming the plugin, the class, the method and the rule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

import gdla
from gdla.testing import OptimizerContract, SmallLeastSquares, relative_error


class VectorLoss(SmallLeastSquares):
    name = "vector-loss"

    def loss(self, params: gdla.Params) -> torch.Tensor:
        return (self.A @ params["x"] - self.b).square() / 2  # forgot the sum


class SilentStep(gdla.Optimizer):
    name = "silent-step"
    summary = "updates but returns nothing"
    default_lr = 0.1

    def step(self) -> torch.Tensor:
        _, grads = self.problem.loss_and_grad(self.params)
        for key, value in self.params.items():
            value.sub_(self.lr * grads[key])
        return None  # type: ignore[return-value]  # forgot the loss


@pytest.fixture
def mistakes(register_plugin: Any) -> None:
    def problems(register: Any) -> None:
        register(VectorLoss)

    def optimizers(register: Any) -> None:
        register(SilentStep)

    plugin = type(
        "P",
        (),
        {
            "register_problems": staticmethod(gdla.hookimpl(problems)),
            "register_optimizers": staticmethod(gdla.hookimpl(optimizers)),
        },
    )
    register_plugin(plugin, name="mistakes")


@pytest.mark.parametrize(
    ("make", "optimizer", "words"),
    [
        (  # a loss that is not a scalar
            lambda: VectorLoss.example(),
            "adam",
            ("problem 'vector-loss'", "VectorLoss", "loss() must return a scalar tensor", "shape (6,)"),
        ),
        (  # a step that returns nothing
            lambda: SmallLeastSquares.example(),
            "silent-step",
            ("optimizer 'silent-step'", "SilentStep", "step() must return the loss", "returned None"),
        ),
    ],
)
def test_a_broken_rule_names_the_plugin(mistakes: None, make: Any, optimizer: str, words: tuple[str, ...]) -> None:
    with pytest.raises(gdla.PluginError) as info:
        gdla.solve(make(), optimizer=optimizer, max_steps=5)
    text = str(info.value)
    for word in words:
        assert word in text, text


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["solve", "vector-loss", "--optimizer", "adam", "--steps", "3"], ["loss() must return a scalar tensor"]),
        (["solve", "inverse", "--optimizer", "silent-step", "--steps", "3"], ["step() must return the loss"]),
    ],
)
def test_the_command_says_so_in_one_paragraph(
    mistakes: None, cli: Any, error_of: Any, argv: list[str], words: list[str]
) -> None:
    code, out, err = cli(*argv)
    assert code == 1 and out == ""
    line = error_of(err)
    for word in words:
        assert word in line, line


class RaisingStep(SilentStep):
    name = "raising-step"

    def step(self) -> torch.Tensor:
        raise ValueError("no step today")


class SilentLater(SilentStep):
    """Returns the loss at its first step only."""

    name = "silent-later"
    taken = 0

    def step(self) -> torch.Tensor:
        type(self).taken += 1
        loss, _ = self.problem.loss_and_grad(self.params)
        super().step()
        return loss if type(self).taken == 1 else None  # type: ignore[return-value]


class RaisingEstimate(SilentStep):
    name = "raising-estimate"

    @classmethod
    def estimated_bytes(cls, problem: gdla.Problem, params: gdla.Params, options: Any) -> int | None:
        raise KeyError("n")


class RaisingInit(SmallLeastSquares):
    name = "raising-init"

    def __init__(self, A: torch.Tensor, b: torch.Tensor) -> None:
        raise ValueError("A must be square")


class RaisingReference(SmallLeastSquares):
    name = "raising-reference"

    def reference(self) -> torch.Tensor:
        raise RuntimeError("lstsq is not available")


@pytest.fixture
def raising(register_classes: Any) -> None:
    register_classes(RaisingStep, SilentLater, RaisingEstimate, RaisingInit, RaisingReference, name="raising")


@pytest.mark.parametrize(
    ("problem", "optimizer", "words"),
    [
        ("contract", "raising-step", ("optimizer 'raising-step'", "step() raised ValueError: no step today")),
        ("contract", "silent-later", ("optimizer 'silent-later'", "step() must return the loss", "returned None")),
        ("contract", "raising-estimate", ("optimizer 'raising-estimate'", "estimated_bytes() raised KeyError: 'n'")),
        ("raising-init", "adam", ("problem 'raising-init'", "__init__() raised ValueError: A must be square")),
    ],
)
def test_an_exception_in_plugin_code_names_it(raising: None, problem: str, optimizer: str, words: tuple[str]) -> None:
    SilentLater.taken = 0
    with pytest.raises(gdla.PluginError) as info:
        gdla.solve(SmallLeastSquares.example() if problem == "contract" else problem, optimizer=optimizer, max_steps=5)
    text = str(info.value)
    assert "distribution 'local'" in text and f"{__name__}." in text, text
    for word in words:
        assert word in text, text
    assert optimizer != "silent-later" or SilentLater.taken == 2  # the first step's loss was fine
    cause = info.value.__cause__
    assert cause is not None and (optimizer == "silent-later" or not isinstance(cause, gdla.GdlaError)), cause


def test_the_command_names_a_reference_that_raises(raising: None, cli: Any, error_of: Any) -> None:
    code, out, err = cli("solve", "raising-reference", "--optimizer", "cg")
    assert code == 1
    line = error_of(err)
    assert "problem 'raising-reference'" in line and "distribution 'local'" in line, line
    assert line.endswith("reference() raised RuntimeError: lstsq is not available (--debug shows the traceback)"), line


def test_the_readmes_raw_optimizer_works(register_classes: Any) -> None:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(# a raw optimizer.*?)```", text, re.S)
    assert block, "the README lost its raw optimizer"
    namespace: dict[str, Any] = {"__name__": "readme_raw_optimizer"}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102
    register_classes(namespace["BarzilaiBorwein"], name="readme-raw")
    problem = SmallLeastSquares.example(12)
    result = gdla.solve(problem, optimizer="barzilai-borwein", max_steps=500)
    assert result.stop_reason == "converged", result.summary()
    assert relative_error(result.solution, problem.reference()) <= 1e-8  # against torch.linalg.lstsq
    contract = type("C", (OptimizerContract,), {"optimizer_name": "barzilai-borwein"})()
    contract.test_state_dict_round_trip()
    contract.test_step_returns_a_finite_scalar()
