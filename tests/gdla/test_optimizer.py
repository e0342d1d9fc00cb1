"""``gdla.optimizer``: the ``Optimizer`` interface and the ``GradientOptimizer`` adapter to ``torch.optim``."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

import gdla
from gdla.errors import InputError


class WeightedDistance(gdla.Problem):
    r"""Test double: :math:`f(x) = \sum_i w_i (x_i - c_i)^2`, minimised at ``x = c``.

    Records the backend its gradient was asked for.
    """

    name = "weighted-distance"
    summary = "test double: a separable quadratic"
    square_only: ClassVar[bool] = False

    def __init__(self, weights: torch.Tensor, centre: torch.Tensor) -> None:  # shape: (n,) each
        self.weights, self.centre = weights, centre
        self.backends: list[str] = []

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> WeightedDistance:
        return cls(torch.tensor([0.5, 1.0, 2.0], dtype=dtype), torch.tensor([1.0, -2.0, 3.0], dtype=dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.centre.dtype

    @property
    def device(self) -> torch.device:
        return self.centre.device

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> WeightedDistance:
        if dtype in (None, self.dtype) and device is None:
            return self
        return WeightedDistance(self.weights.to(dtype=dtype, device=device), self.centre.to(dtype=dtype, device=device))

    def init_params(self, generator: torch.Generator) -> gdla.Params:
        return {"x": torch.zeros_like(self.centre)}

    def loss(self, params: gdla.Params) -> torch.Tensor:
        return (self.weights * (params["x"] - self.centre) ** 2).sum()

    def loss_and_grad(self, params: gdla.Params, backend: str = "autograd") -> tuple[torch.Tensor, gdla.Params]:
        self.backends.append(backend)
        return super().loss_and_grad(params, "autograd")

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.weights * (x - self.centre)

    def solution(self, params: gdla.Params) -> torch.Tensor:
        return params["x"]

    def residual(self, params: gdla.Params) -> torch.Tensor:
        return torch.linalg.vector_norm(params["x"] - self.centre) / torch.linalg.vector_norm(self.centre)

    def reference(self) -> torch.Tensor:
        return self.centre

    def error(self, params: gdla.Params) -> torch.Tensor:
        return self.residual(params)


class PlainDescent(gdla.GradientOptimizer):
    """Test double: ``torch.optim.SGD`` without options; the default rate reads the problem."""

    name = "plain-descent"
    summary = "test double: torch.optim.SGD"

    @classmethod
    def unsupported_reason(cls, problem: gdla.Problem) -> str | None:
        return "it only solves square problems" if getattr(problem, "square_only", False) else None

    @classmethod
    def default_lr_for(cls, problem: gdla.Problem) -> float | None:
        return 0.25 / float(problem.weights.max())  # half of 1/L, with L = 2 max(w) the top curvature

    def build(self, tensors: list[torch.Tensor], lr: float | None, **options: Any) -> torch.optim.Optimizer:
        if options:
            raise InputError(f"options: plain-descent takes none, received {sorted(options)}")
        return torch.optim.SGD(tensors, lr=lr)


class SquareOnly(WeightedDistance):
    name = "square-only"
    square_only = True


def make(problem: WeightedDistance | None = None, **options: Any) -> PlainDescent:
    problem = problem or WeightedDistance.example()
    return PlainDescent(problem, problem.init_params(torch.Generator().manual_seed(0)), **options)


def test_closure_sets_the_gradients_and_returns_the_loss() -> None:
    opt = make()
    x = opt.params["x"]
    opt.params["x"].add_(torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64))
    loss = opt._closure()
    torch.testing.assert_close(x.grad, opt.problem.gradient(x), rtol=0, atol=0)
    assert float(loss) == pytest.approx(float(opt.problem.loss({"x": x})), rel=1e-15)
    assert torch.equal(x, torch.full((3,), 0.5, dtype=torch.float64))  # the closure does not move x


def test_step_returns_the_loss_before_the_update_and_descends() -> None:
    opt = make(lr=0.1)
    x = opt.params["x"]
    for _ in range(3):
        before = x.clone()
        loss = opt.step()
        assert float(loss) == pytest.approx(float(opt.problem.loss({"x": before})), rel=1e-15)
        torch.testing.assert_close(x, before - 0.1 * opt.problem.gradient(before), rtol=1e-15, atol=1e-15)


def test_backend_reaches_the_problem() -> None:
    problem = WeightedDistance.example()
    make(problem, backend="fused").step()
    assert problem.backends == ["fused"]


def test_default_lr_comes_from_the_problem() -> None:
    opt = make()
    assert opt.lr == 0.125
    assert make(lr=0.3).lr == 0.3


@pytest.mark.parametrize("lr", [0, -1.0, float("inf"), "0.1", True])
def test_invalid_lr(lr: Any) -> None:
    with pytest.raises(InputError, match=r"^lr: expected a"):
        make(lr=lr)


def test_schedule_steps_after_each_update() -> None:
    opt = make(lr=0.2, schedule="exponential", schedule_options={"gamma": 0.5})
    x = opt.params["x"]
    expected = x.clone()
    for t in range(4):
        assert opt.torch_optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.5**t)
        expected = expected - 0.2 * 0.5**t * opt.problem.gradient(expected)
        opt.step()
        torch.testing.assert_close(x, expected, rtol=1e-14, atol=1e-15)
    assert opt.describe()["schedule"] == "exponential"


def test_max_steps_is_the_schedule_horizon() -> None:
    opt = make(lr=0.2, max_steps=6, schedule="cosine")
    assert opt.max_steps == 6
    for _ in range(6):
        opt.step()
    assert opt.torch_optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)


def test_schedule_errors_are_input_errors() -> None:
    with pytest.raises(InputError, match=r"^schedule: expected one of"):
        make(schedule="sawtooth")
    with pytest.raises(InputError, match=r"^schedule_options: given \['gamma'\]"):
        make(schedule_options={"gamma": 0.5})


def test_options_reach_build_and_describe() -> None:
    with pytest.raises(InputError, match=r"^options: plain-descent takes none, received \['momentum'\]"):
        make(momentum=0.9)
    assert make(lr=0.5).describe() == {"name": "plain-descent", "lr": 0.5}
    assert make().scheduler is None and make().schedule is None


def test_unsupported_problem_is_refused_with_the_reason() -> None:
    problem = SquareOnly.example()
    with pytest.raises(InputError) as info:
        make(problem)
    assert str(info.value) == (
        "optimizer: 'plain-descent' cannot solve problem 'square-only': it only solves square problems"
    )


def test_solve_refuses_an_unsupported_problem_before_iterating(register_plugin) -> None:
    class Plugin:
        @staticmethod
        @gdla.hookimpl
        def register_optimizers(register: Any) -> None:
            register(PlainDescent)

    register_plugin(Plugin, name="plain-descent-plugin")
    problem = SquareOnly.example()
    with pytest.raises(InputError, match="cannot solve problem 'square-only'"):
        gdla.solve(problem, optimizer="plain-descent", backend="autograd")
    assert problem.backends == []

    result = gdla.solve(WeightedDistance.example(), optimizer="plain-descent", backend="autograd")
    assert result.converged
    torch.testing.assert_close(result.solution, WeightedDistance.example().centre, rtol=1e-9, atol=1e-9)


def test_optimizer_base_defaults() -> None:
    class Stay(gdla.Optimizer):
        name = "stay"
        default_lr = None

        def step(self) -> torch.Tensor:
            return self.problem.loss(self.params)

    problem = WeightedDistance.example()
    opt = Stay(problem, problem.init_params(torch.Generator()), max_steps=7, tolerance=3)
    assert opt.lr is None and opt.max_steps == 7 and opt.options == {"tolerance": 3}
    assert Stay.unsupported_reason(problem) is None and Stay.default_lr_for(problem) is None
    assert opt.expected_steps(1e-6) is None
    assert opt.describe() == {"name": "stay", "lr": None}
    assert float(opt.step()) == pytest.approx(0.5 * 1 + 1.0 * 4 + 2.0 * 9)


def test_gradient_optimizer_needs_build() -> None:
    class NoBuild(gdla.GradientOptimizer):
        name = "no-build"

    with pytest.raises(TypeError, match="build"):
        NoBuild(WeightedDistance.example(), {"x": torch.zeros(3)})
