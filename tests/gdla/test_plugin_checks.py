"""Each rule of gdla.plugin_checks: a plugin's result that breaks it is a PluginError before the first step, naming
the plugin, its class, the method, the rule and what it returned; a plugin that keeps them passes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import gdla
from gdla import plugin_checks
from gdla.plugin_checks import (
    built_in,
    check_adjoint,
    check_quadratic,
    check_start,
    checked_condition,
    checked_metrics,
    describe,
)
from gdla.testing import SmallLeastSquares


class Counting(gdla.Optimizer):
    """Gradient descent that counts its steps: the checks must fail before the first one."""

    name = "counting"
    summary = "gradient descent that counts its steps"
    default_lr = 0.1
    steps = 0

    def step(self) -> torch.Tensor:
        type(self).steps += 1
        loss, grads = self.problem.loss_and_grad(self.params)
        for key, value in self.params.items():
            value.sub_(self.lr * grads[key])
        return loss


def variant(name: str, **methods: Any) -> type[SmallLeastSquares]:
    """SmallLeastSquares with some methods (or attributes) replaced: one mistake each."""
    return type(name, (SmallLeastSquares,), {"name": name.lower(), "__module__": __name__, **methods})


def _numpy_loss(self: Any, params: gdla.Params) -> torch.Tensor:
    x = params["x"].detach().numpy()
    return torch.as_tensor(float(np.sum((self.A.numpy() @ x - self.b.numpy()) ** 2) / 2))


def _least_squares_with(**changes: Any) -> Any:
    def least_squares(self: Any) -> gdla.LinearLeastSquares:
        A = self.A
        fields = {"key": "x", "apply": lambda d: A @ d, "adjoint": lambda r: A.mT @ r, "rhs": self.b,
                  "loss_of": lambda r: r.square().sum() / 2, **changes}
        if callable(fields["adjoint"]) and fields["adjoint"].__name__ == "wrong":
            fields["adjoint"] = lambda r: A.mT @ r + 0.1 * r.sum()
        return gdla.LinearLeastSquares(**fields)

    return least_squares


def _wrong(r: torch.Tensor) -> torch.Tensor:  # a marker: _least_squares_with builds the wrong adjoint
    raise AssertionError


_wrong.__name__ = "wrong"


MISTAKES = {
    "numpy-loss": (variant("NumpyLoss", loss=_numpy_loss), ("loss() must be differentiable", "no grad_fn")),
    "meta-loss": (
        variant("MetaLoss", loss=lambda self, p: SmallLeastSquares.loss(self, p).to("meta")),
        ("loss() must return a tensor on the problem's device cpu", "on meta"),
    ),
    "vector-residual": (
        variant("VectorResidual", residual=lambda self, p: self.A.mT @ (self.A @ p["x"] - self.b)),
        ("residual() must return a scalar tensor >= 0", "shape (4,)"),
    ),
    "negative-residual": (
        variant("NegativeResidual", residual=lambda self, p: -SmallLeastSquares.residual(self, p)),
        ("residual() must return a finite number >= 0", "a negative residual would pass any tol"),
    ),
    "float32-params": (
        variant("Float32Params", init_params=lambda self, g: {"x": torch.zeros(4, dtype=torch.float32)}),
        ("init_params() must return a dict of torch.float64 tensors on the problem's device cpu",
         "'x': a torch.float32 "),
    ),
    "meta-params": (
        variant("MetaParams", init_params=lambda self, g: {"x": torch.zeros(4, dtype=torch.float64, device="meta")}),
        ("init_params() must return", "on meta"),
    ),
    "tensor-params": (
        variant("TensorParams", init_params=lambda self, g: torch.zeros(4, dtype=torch.float64)),
        ("init_params() must return a dict", "a torch.float64 tensor of shape (4,)"),
    ),
    "misshapen-params": (
        variant("MisshapenParams", init_params=lambda self, g: {"x": torch.zeros(5, dtype=torch.float64)}),
        ("loss() raised RuntimeError", "it must accept the parameters init_params() returned ('x': (5,))"),
    ),
    "list-solution": (
        variant("ListSolution", solution=lambda self, p: p["x"].tolist()),
        ("solution() must return a tensor or a tuple of tensors (what --save writes)", "returned a list"),
    ),
    "wrong-adjoint": (
        variant("WrongAdjoint", least_squares=_least_squares_with(adjoint=_wrong)),
        ("least_squares() must give an adjoint that is the adjoint of apply", "on random d, r"),
    ),
    "wrong-key": (
        variant("WrongKey", least_squares=_least_squares_with(key="y")),
        ("least_squares() must name a parameter of init_params() ('x') as its key", "key='y'"),
    ),
    "wrong-sum-of-squares": (
        variant("WrongSumOfSquares", least_squares=_least_squares_with(loss_of=lambda r: r.square().sum())),
        ("sum_of_squares() must reproduce loss(params)", "at the starting point"),
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_broken_rule_stops_the_solve_before_its_first_step(mistake: str) -> None:
    cls, words = MISTAKES[mistake]
    Counting.steps = 0
    problem = cls.example()
    with pytest.raises(gdla.PluginError) as info:
        gdla.solve(problem, optimizer="cg" if "adjoint" in mistake else "auto", max_steps=5)
    text = str(info.value)
    assert text.startswith(f"problem {cls.name!r} ({__name__}.{cls.__qualname__}, not registered): "), text
    for word in words:
        assert word in text, text
    with pytest.raises(gdla.PluginError):  # a failed check is not remembered as passed
        check_start(problem)


def test_the_error_names_the_registered_distribution(register_classes: Any) -> None:
    cls = MISTAKES["negative-residual"][0]
    register_classes(cls, Counting, name="checks-fixture")
    assert describe(cls) == f"problem 'negativeresidual' ({__name__}.NegativeResidual, distribution 'local')"
    with pytest.raises(gdla.PluginError, match="distribution 'local'.*residual\\(\\) must return"):
        gdla.solve("negativeresidual", optimizer="counting", max_steps=3)
    assert Counting.steps == 0


class Bowl(gdla.Problem):
    """``Σ (x_i − i)² (+ x_i⁴ unless quadratic)``: a quadratic-only declaration, right or wrong."""

    name = "bowl"
    summary = "a bowl"
    quadratic = True
    quartic = False

    def __init__(self, c: torch.Tensor) -> None:
        self.c = c

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> Bowl:
        return cls(torch.arange(float(size or 16), dtype=dtype))

    def init_params(self, generator: torch.Generator) -> gdla.Params:
        return {"x": torch.zeros_like(self.c)}

    def loss(self, params: gdla.Params) -> torch.Tensor:
        x = params["x"]
        return (x - self.c).square().sum() + (x.pow(4).sum() if self.quartic else 0)

    def solution(self, params: gdla.Params) -> torch.Tensor:
        return params["x"].detach()

    def residual(self, params: gdla.Params) -> torch.Tensor:
        return torch.linalg.vector_norm(params["x"] - self.c) / torch.linalg.vector_norm(self.c)

    def reference(self) -> torch.Tensor:
        return self.c

    def error(self, params: gdla.Params) -> torch.Tensor:
        return self.residual(params)


def test_a_nan_residual_is_refused_where_it_is_the_stop_test() -> None:
    """A problem solved as given (no normalised copy): its residual at the start must be a finite number."""
    NanResidual = type("NanResidual", (Bowl,), {"__module__": __name__, "residual": lambda self, p: self.c[0] / 0 * 0})
    with pytest.raises(gdla.PluginError) as info:
        gdla.solve(NanResidual.example(), max_steps=5)
    expected = f"problem 'bowl' ({__name__}.NanResidual, not registered): residual() must return a finite number >= 0"
    assert str(info.value).startswith(expected) and str(info.value).endswith("returned nan"), str(info.value)


def test_quadratic_true_is_probed_for_an_affine_gradient() -> None:
    bowl = Bowl.example()
    check_quadratic(bowl, bowl.init_params(torch.Generator()))  # a true declaration passes
    result = gdla.solve(bowl, optimizer="cg")
    assert result.stop_reason == "converged" and float(result.metrics["error"]) < 1e-8
    Quartic = type("Quartic", (Bowl,), {"quartic": True, "__module__": __name__})
    with pytest.raises(gdla.PluginError, match="quadratic = True declares a quadratic loss .* quadratic = False"):
        gdla.solve(Quartic.example(), optimizer="cg", max_steps=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e30])
def test_a_right_adjoint_passes_the_dot_test_at_any_scale(dtype: torch.dtype, scale: float) -> None:
    generator = torch.Generator().manual_seed(1)
    A = (torch.randn(300, 200, generator=generator, dtype=torch.float64) * scale).to(dtype)
    problem = SmallLeastSquares(A, torch.randn(300, generator=generator, dtype=torch.float64).to(dtype))
    check_adjoint(problem, problem.least_squares(), problem.init_params(torch.Generator()))
    check_start(problem)  # every rule, in the caller's units


def test_the_builtins_pass_and_are_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """gdla's own problems pass every rule, and a solve skips the checks for them (their contract tests check the
    rules); a subclass from outside gdla is checked once."""
    calls: list[str] = []
    for name in gdla.problems():
        problem = gdla.get_problem(name).example()
        assert built_in(type(problem))
        loss = type(problem).loss
        monkeypatch.setattr(type(problem), "loss", lambda self, p, loss=loss: calls.append(self.name) or loss(self, p))
        check_start(problem)
        assert calls == []  # skipped: a built-in
        monkeypatch.setattr(plugin_checks, "BUILT_IN_PACKAGE", "none")  # checked as a third party's would be
        check_start(problem)
        checked = len(calls)
        check_start(problem)  # remembered: no second loss
        assert len(calls) == checked > 0
        monkeypatch.undo()
        calls.clear()
    outside = type("Outside", (type(gdla.get_problem("inverse").example()),), {})  # defined here: not built in
    assert not built_in(outside)


def test_metrics_and_the_condition_estimate_must_be_numbers() -> None:
    """What the report reads after the run (``checked_metrics``, ``checked_condition``): a string is the plugin's
    mistake, named; a deferred figure is checked when it is computed."""
    problem = SmallLeastSquares.example()
    params = problem.init_params(torch.Generator())
    figures = checked_metrics(problem, problem.metrics(params))
    assert sorted(figures) == ["error", "residual"]
    assert figures["error"]() == pytest.approx(float(problem.error(params)), rel=1e-12)
    assert checked_condition(problem) is None
    inverse = gdla.get_problem("inverse").example()
    assert checked_condition(inverse) == inverse.condition_estimate() > 1
    Strings = variant("Strings", metrics=lambda self, p: {"residual": "small"}, condition_estimate=lambda self: "ok")
    wrong = Strings.example()
    where = f"problem 'strings' ({__name__}.Strings, not registered): "
    with pytest.raises(gdla.PluginError) as info:
        checked_metrics(wrong, wrong.metrics(params))
    assert str(info.value) == where + "metrics() must return real numbers (or zero-argument callables that compute " \
        "them), returned 'residual': 'small'"
    with pytest.raises(gdla.PluginError) as info:
        checked_condition(wrong)
    assert str(info.value) == where + "condition_estimate() must return a number >= 1 or None, returned 'ok'"
    pending = checked_metrics(wrong, {"fit": lambda: "good"})  # deferred: nothing is computed yet
    with pytest.raises(gdla.PluginError, match="metrics\\(\\) must return real numbers .* returned 'fit': 'good'"):
        pending["fit"]()
