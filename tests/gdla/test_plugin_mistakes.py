"""A plugin author's mistake is a clear error naming the plugin, the class, the method and the rule."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gdla
from gdla.testing import SmallLeastSquares


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
