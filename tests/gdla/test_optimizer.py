"""``gdla.optimizer``: the ``Optimizer`` interface and the ``GradientOptimizer`` adapter to ``torch.optim``."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import pytest
import torch

import gdla
import gdla.optimizer
import gdla.options
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


def test_solve_refuses_an_unsupported_problem_before_iterating(register_classes) -> None:
    register_classes(PlainDescent, name="plain-descent-plugin")
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


# -- the run protocol: advance ---------------------------------------------------------------------
class Projected(WeightedDistance):
    """A test double whose projection clips ``x`` at 2.5 (it records each call)."""

    name = "projected"

    def __init__(self, weights: torch.Tensor, centre: torch.Tensor) -> None:
        super().__init__(weights, centre)
        self.projections = 0

    def project(self, params: gdla.Params) -> None:
        self.projections += 1
        params["x"].clamp_(max=2.5)


def projected() -> Projected:
    example = WeightedDistance.example()
    return Projected(example.weights, example.centre)


def test_default_advance_takes_one_step_and_projects() -> None:
    problem = projected()
    opt = PlainDescent(problem, problem.init_params(torch.Generator()), lr=0.4)
    stretch = opt.advance(10, tol=1e-6)
    assert isinstance(stretch, gdla.optimizer.Stretch) and stretch.residuals is None
    assert stretch.losses.dtype == torch.float64 and stretch.losses.tolist() == [0.5 + 4.0 + 18.0]
    assert problem.projections == 1
    # one step of lr 0.4 from 0: x = 0.8 w c, then clipped at 2.5
    expected = torch.clamp(0.8 * problem.weights * problem.centre, max=2.5)
    assert torch.equal(opt.params["x"], expected)


def test_advance_names_a_step_that_returns_no_scalar() -> None:
    class Vector(gdla.Optimizer):
        name = "vector-loss"
        default_lr = None

        def step(self) -> torch.Tensor:
            return torch.zeros(3)

    problem = WeightedDistance.example()
    opt = Vector(problem, problem.init_params(torch.Generator()))
    with pytest.raises(gdla.PluginError) as info:
        opt.advance(1)
    assert str(info.value) == (
        f"optimizer 'vector-loss' ({__name__}.test_advance_names_a_step_that_returns_no_scalar.<locals>.Vector): "
        "step() must return the loss it evaluated as a scalar tensor, returned a tensor of shape (3,) "
        "(problem 'weighted-distance')"
    )


class LegacyDescent(gdla.Optimizer):
    """A plugin written against the old protocol: ``run`` and ``run_tested`` beside ``step`` (gradient descent)."""

    name = "legacy-descent"
    default_lr = 0.1

    def step(self) -> torch.Tensor:
        x = self.params["x"]
        loss = self.problem.loss(self.params)
        x.sub_(self.lr * self.problem.gradient(x))
        return loss

    def run(self, steps: int) -> torch.Tensor | None:
        return torch.stack([self.step() for _ in range(steps)])

    def run_tested(self, steps: int, tol: float) -> gdla.optimizer.TestedRun | None:
        losses, residuals = [], []
        for _ in range(steps):
            losses.append(self.step())
            residuals.append(self.problem.residual(self.params))
            if residuals[-1] <= tol:
                break
        return gdla.optimizer.TestedRun(torch.stack(losses), torch.stack(residuals))


class NewDescent(LegacyDescent):
    """The same method without the old bulk methods: one step a call."""

    name = "new-descent"
    run = gdla.Optimizer.run
    run_tested = gdla.Optimizer.run_tested


def _legacy_class() -> type[LegacyDescent]:
    return type("Legacy", (LegacyDescent,), {})  # a fresh class: the warning is once per class


def test_an_old_style_plugin_warns_once_and_keeps_its_bulk_runs() -> None:
    problem = WeightedDistance.example()
    legacy = _legacy_class()
    opt = legacy(problem, problem.init_params(torch.Generator()))
    twin = NewDescent(problem, problem.init_params(torch.Generator()))
    with pytest.warns(DeprecationWarning, match=r"'legacy-descent' \(.*Legacy\) implements run\(\)/run_tested\(\), "
                      r"which are deprecated: implement advance\(steps, tol\) instead"):
        bulk = opt.advance(7)
    assert bulk.residuals is None and len(bulk.losses) == 7
    assert bulk.losses.tolist() == [float(twin.advance(1).losses[0]) for _ in range(7)]
    assert torch.equal(opt.params["x"], twin.params["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per class
        tested = opt.advance(500, tol=1e-3)
    assert tested.residuals is not None and len(tested.residuals) == len(tested.losses) < 500
    assert float(tested.residuals[-1]) <= 1e-3 < float(tested.residuals[:-1].min())


def test_an_old_style_plugin_solves_as_before(register_classes) -> None:
    register_classes(_legacy_class(), NewDescent, name="legacy-descent-plugin")
    problem = WeightedDistance.example()
    with pytest.warns(DeprecationWarning, match="implement advance"):
        bulk = gdla.solve(problem, optimizer="legacy-descent", backend="autograd", tol=1e-8)
    watched = gdla.solve(problem, optimizer="legacy-descent", backend="autograd", tol=1e-8, callback=lambda *a: None)
    plain = gdla.solve(problem, optimizer="new-descent", backend="autograd", tol=1e-8)
    assert bulk.converged and bulk.losses == watched.losses == plain.losses and bulk.steps == plain.steps
    assert torch.equal(bulk.solution, plain.solution)


def test_an_old_style_run_is_not_used_where_the_loop_must_project() -> None:
    problem = projected()
    opt = _legacy_class()(problem, problem.init_params(torch.Generator()))
    with pytest.warns(DeprecationWarning):
        assert len(opt.advance(5).losses) == 1  # run() does not project: one step, then the projection
    assert problem.projections == 1
    assert len(opt.advance(5, tol=1e-9).losses) == 1 and problem.projections == 2


# -- options, learning rates and fused paths declared once ---------------------------------------------
class Declared(gdla.Optimizer):
    name = "declared"
    default_lr = None
    options = {
        "blocks": gdla.options.Option(gdla.options.choice("independent", "global"), "independent"),
        "restart": gdla.options.Option(gdla.options.optional_count, None),
    }
    kernel_free = "computes in plain tensor algebra (no fused kernel)"

    def step(self) -> torch.Tensor:
        return self.problem.loss(self.params)


def test_declared_options_are_resolved_once_with_their_defaults() -> None:
    problem = WeightedDistance.example()
    params = problem.init_params(torch.Generator())
    assert Declared(problem, params).options == {"blocks": "independent", "restart": None}
    assert Declared(problem, params, restart=3, max_steps=9).options == {"blocks": "independent", "restart": 3}
    with pytest.raises(InputError, match=r"^restart: expected None or an integer >= 1, received 0$"):
        Declared(problem, params, restart=0)
    with pytest.raises(InputError, match=r"^blocks: expected one of 'independent', 'global', received 'all'$"):
        Declared(problem, params, blocks="all")
    with pytest.raises(InputError) as info:
        Declared(problem, params, block="global")
    assert str(info.value) == (
        "block: optimizer 'declared' has no option 'block' (did you mean 'blocks'?); its options: blocks, restart"
    )
    with pytest.raises(InputError, match="has no option 'block'"):
        Declared.refuse_unknown_options({"block": 1})  # the deprecated alias of the same check
    Declared.refuse_unknown_options({"blocks": "global", "max_steps": 3})


def test_a_method_without_a_learning_rate_refuses_one() -> None:
    problem = WeightedDistance.example()
    with pytest.raises(InputError) as info:
        Declared(problem, problem.init_params(torch.Generator()), lr=0.5)
    assert str(info.value) == (
        "lr: optimizer 'declared' has no learning rate (it sizes its steps itself), received 0.5; leave it out"
    )


def test_kernel_free_is_the_fused_reason() -> None:
    problem = WeightedDistance.example()
    assert Declared.fused_reason(problem, {}) == "'declared' computes in plain tensor algebra (no fused kernel)"
    assert PlainDescent.fused_reason(problem, {}) == problem.fused_reason()
