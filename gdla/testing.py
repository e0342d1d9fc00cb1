"""Contract test cases for problem and optimizer plugins.

Plugin authors subclass them in a pytest module and get the checks every gdla plugin must pass::

    from gdla.testing import OptimizerContract, ProblemContract

    class TestMyProblem(ProblemContract):
        problem_name = "my-problem"

    class TestMyOptimizer(OptimizerContract):
        optimizer_name = "my-optimizer"

Override :meth:`ProblemContract.make_problem` (or :meth:`OptimizerContract.make_problem`) to test
other instances, and the class attributes to change options or tolerances. Needs pytest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import torch

from gdla.backend import extension_status
from gdla.capabilities import LinearLeastSquares
from gdla.errors import PluginError
from gdla.loop import solve
from gdla.optimizer import Optimizer
from gdla.plugin_checks import check_loss, check_params, check_quadratic, check_residual, check_solution
from gdla.problem import Params, Problem
from gdla.registry import get_optimizer, get_problem
from gdla.testing_units import UnitsSweep

__all__ = ["OptimizerContract", "ProblemContract", "SmallLeastSquares", "assert_close_relative", "relative_error"]


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """``‖value − reference‖ / ‖reference‖`` in float64 (absolute if the reference is zero)."""
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    scale = float(torch.linalg.vector_norm(reference))
    diff = float(torch.linalg.vector_norm(value - reference))
    return diff / scale if scale > 0 else diff


def assert_close_relative(value: torch.Tensor, reference: torch.Tensor, tol: float, what: str = "value") -> None:
    """Assert that the relative error of ``value`` against ``reference`` is at most ``tol``."""
    err = relative_error(value, reference)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def _random_like(params: Params, seed: int) -> Params:
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(value.shape, generator=generator, dtype=torch.float64).to(value)
        for key, value in params.items()
    }


def _holds(check: Callable[[], Any]) -> Any:
    """``check()`` of :mod:`gdla.plugin_checks`; its :class:`~gdla.errors.PluginError` (naming the plugin, the
    method and the rule) as the contract's failure."""
    try:
        return check()
    except PluginError as exc:
        raise AssertionError(str(exc)) from exc


def _dot(a: Params, b: Params) -> float:
    return float(sum((a[key].double() * b[key].double()).sum() for key in a))


class ProblemContract(UnitsSweep):
    """Checks every problem plugin must pass; subclass it as ``Test...`` and set ``problem_name``."""

    problem_name: ClassVar[str] = ""
    #: Options for :func:`gdla.solve` in the convergence checks.
    solve_options: ClassVar[dict[str, Any]] = {}
    #: Largest acceptable ``Result.metrics["error"]`` after solving, per dtype.
    error_tol: ClassVar[dict[torch.dtype, float]] = {torch.float64: 1e-6, torch.float32: 1e-3}

    def make_problem(self, dtype: torch.dtype) -> Problem:
        """The instance under test; by default the problem's seed scenario."""
        return get_problem(self.problem_name).example(dtype=dtype)

    def _params(self, problem: Problem, seed: int = 1) -> Params:
        return problem.init_params(torch.Generator().manual_seed(seed))

    def test_registered(self) -> None:
        cls = get_problem(self.problem_name)
        assert issubclass(cls, Problem)
        assert cls.name == self.problem_name
        assert cls.summary, "give the problem a one-line summary"

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_dtype_and_conversion(self, dtype: torch.dtype) -> None:
        problem = self.make_problem(dtype)
        assert problem.dtype == dtype
        other = torch.float64 if dtype == torch.float32 else torch.float32
        converted = problem.to(dtype=other)
        assert converted.dtype == other
        assert problem.dtype == dtype, "to() must not change the original"
        assert problem.to(dtype=dtype).dtype == dtype

    def test_init_params_follow_the_generator(self) -> None:
        problem = self.make_problem(torch.float64)
        first = self._params(problem, 7)
        second = self._params(problem, 7)
        _holds(lambda: check_params(problem, first))  # dict, tensors, the problem's dtype and device
        assert first.keys() == second.keys() and first, "init_params must return a non-empty dict of tensors"
        for key in first:
            assert isinstance(first[key], torch.Tensor), f"param {key!r} is not a tensor"
            assert first[key].dtype == problem.dtype and first[key].device == problem.device
            assert torch.equal(first[key], second[key]), f"param {key!r} is not reproducible"

    def test_loss_is_a_finite_scalar(self) -> None:
        problem = self.make_problem(torch.float64)
        loss = problem.loss(self._params(problem))
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0, f"loss must be a 0-dim tensor, got {loss!r}"
        assert math.isfinite(float(loss))
        _holds(lambda: check_loss(problem, self._params(problem)))  # on the problem's device, differentiable

    def test_residual_and_solution_keep_their_rules(self) -> None:
        """``residual`` a finite number ``>= 0``; ``solution`` a tensor or a tuple of tensors (what --save writes)."""
        problem = self.make_problem(torch.float64)
        params = self._params(problem)
        _holds(lambda: check_residual(problem, params))
        _holds(lambda: check_solution(problem, problem.solution(params)))

    def test_declared_quadratic_has_an_affine_gradient(self) -> None:
        problem = self.make_problem(torch.float64)
        if problem.quadratic is not True:
            pytest.skip("the problem does not declare quadratic = True")
        _holds(lambda: check_quadratic(problem, self._params(problem)))

    def test_gradient_matches_finite_differences(self) -> None:
        """``loss_and_grad`` against a central difference of ``loss`` along a random direction."""
        problem = self.make_problem(torch.float64)
        params = self._params(problem)
        loss, grads = problem.loss_and_grad(params, "autograd")
        assert grads.keys() == params.keys()
        torch.testing.assert_close(loss, problem.loss(params).detach())
        direction = _random_like(params, 3)
        h = 1e-6
        plus = float(problem.loss({k: v + h * direction[k] for k, v in params.items()}))
        minus = float(problem.loss({k: v - h * direction[k] for k, v in params.items()}))
        slope = (plus - minus) / (2 * h)
        expected = _dot(grads, direction)
        assert abs(slope - expected) <= 1e-5 * (abs(expected) + abs(float(loss)) + 1e-12), (slope, expected)

    def test_fused_path_matches_autograd(self) -> None:
        problem = self.make_problem(torch.float64)
        if problem.fused_reason() is not None or not extension_status()[0]:
            pytest.skip(problem.fused_reason() or "the compiled extension is not built")
        params = self._params(problem)
        loss, grads = problem.loss_and_grad(params, "fused")
        reference_loss, reference_grads = problem.loss_and_grad(params, "autograd")
        torch.testing.assert_close(loss, reference_loss, rtol=1e-10, atol=1e-12)
        for key in grads:
            torch.testing.assert_close(grads[key], reference_grads[key], rtol=1e-9, atol=1e-11)

    def test_reference_params_solve_the_problem(self) -> None:
        """The residual vanishes at the reference and the loss is minimal there."""
        problem = self.make_problem(torch.float64)
        exact = problem.reference_params()
        if exact is None:
            pytest.skip("the problem declares no reference_params()")
        assert exact.keys() == self._params(problem).keys()
        assert float(problem.residual(exact)) <= 1e-8, "residual(reference_params()) must be about 0"
        assert float(problem.error(exact)) <= 1e-8, "error(reference_params()) must be about 0"
        at_reference = float(problem.loss(exact))
        for seed in range(3):
            step = _random_like(exact, 10 + seed)
            nearby = {k: v + 1e-3 * step[k] for k, v in exact.items()}
            assert float(problem.loss(nearby)) >= at_reference - 1e-12, "the loss must be minimal at the reference"

    def test_project_is_idempotent(self) -> None:
        problem = self.make_problem(torch.float64)
        params = self._params(problem)
        with torch.no_grad():
            problem.project(params)
            once = {k: v.clone() for k, v in params.items()}
            problem.project(params)
        for key in params:
            torch.testing.assert_close(params[key], once[key], rtol=1e-12, atol=1e-14)

    def test_declared_least_squares_form_reproduces_the_loss(self) -> None:
        problem = self.make_problem(torch.float64)
        form = problem.least_squares()
        if form is None:
            pytest.skip("the problem declares no least_squares()")
        assert isinstance(form, LinearLeastSquares)
        params = self._params(problem)
        x = params[form.key]
        torch.testing.assert_close(form.loss_of(form.residual(x)), problem.loss(params), rtol=1e-10, atol=1e-14)
        d, r = _random_like({"d": x}, 4)["d"], _random_like({"r": form.rhs}, 5)["r"]
        left, right = float((form.apply(d) * r).sum()), float((d * form.adjoint(r)).sum())
        assert abs(left - right) <= 1e-10 * (abs(left) + 1), "adjoint must be the adjoint of apply"
        # the least-squares gradient Jᵀr points along the loss's own gradient (same minimiser)
        _, grads = problem.loss_and_grad(params, "autograd")
        g, lsq = grads[form.key].flatten(), form.gradient(x)[1].flatten()
        if form.block_dims is None:
            cosine = float(g @ lsq) / (float(g.norm()) * float(lsq.norm()) + 1e-300)
            assert cosine >= 1 - 1e-9, f"least-squares gradient not parallel to the loss gradient (cos {cosine})"

    def test_declared_sum_of_squares_reproduces_the_loss(self) -> None:
        problem = self.make_problem(torch.float64)
        form = problem.sum_of_squares()
        if form is None:
            pytest.skip("the problem declares no sum_of_squares()")
        params = self._params(problem)
        torch.testing.assert_close(form.loss_of(form.residuals(params)), problem.loss(params), rtol=1e-10, atol=1e-14)

    def test_declared_matrix_inverse_is_the_reference(self) -> None:
        problem = self.make_problem(torch.float64)
        inverse = problem.matrix_inverse()
        if inverse is None:
            pytest.skip("the problem declares no matrix_inverse()")
        expected = torch.linalg.pinv(inverse.A)
        assert_close_relative(problem.reference(), expected, 1e-8, "reference against pinv(A)")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_solve_reaches_reference(self, dtype: torch.dtype) -> None:
        problem = self.make_problem(dtype)
        result = solve(problem, seed=0, **self.solve_options)
        assert result.stop_reason in ("converged", "stalled", "max_steps"), result.summary()
        assert result.metrics["error"] <= self.error_tol[dtype], result.summary()
        assert len(result.losses) == result.steps + 1 > 1

    def test_same_seed_same_result(self) -> None:
        problem = self.make_problem(torch.float64)
        options = {**self.solve_options, "max_steps": 30, "tol": 0}
        a = solve(problem, seed=3, **options)
        b = solve(problem, seed=3, **options)
        assert a.losses == b.losses
        for key in a.params:
            assert torch.equal(a.params[key], b.params[key])

    def test_result_is_json_ready(self) -> None:
        problem = self.make_problem(torch.float64)
        result = solve(problem, **{**self.solve_options, "max_steps": 5, "tol": 0})
        text = json.dumps(result.to_dict())
        assert json.loads(text)["problem"] == self.problem_name
        json.dumps(problem.describe())


class SmallLeastSquares(Problem):
    r"""``min_x ½‖A x − b‖²`` for a fixed well-conditioned ``A`` (6 × 4): the contract's quadratic.

    It declares only :meth:`least_squares` (no name any optimizer knows), so it is also the model
    of a third-party problem that gets ``cg``, ``line-search``, ``heavy-ball`` and ``auto``.
    """

    name = "contract-least-squares"
    summary = "a small least-squares problem for optimizer contracts"

    def __init__(self, A: torch.Tensor, b: torch.Tensor) -> None:
        self.A, self.b = A, b

    @classmethod
    def example(
        cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64
    ) -> SmallLeastSquares:
        n = size or 4
        generator = torch.Generator().manual_seed(seed)
        A = torch.randn(n + 2, n, generator=generator, dtype=torch.float64) / math.sqrt(n) + torch.eye(n + 2, n)
        b = torch.randn(n + 2, generator=generator, dtype=torch.float64)
        return cls(A.to(dtype), b.to(dtype))

    def init_params(self, generator: torch.Generator) -> Params:
        x = torch.rand(self.A.shape[-1], generator=generator, dtype=torch.float64)
        return {"x": x.to(self.A)}

    def loss(self, params: Params) -> torch.Tensor:
        return (self.A @ params["x"] - self.b).square().sum() / 2

    def least_squares(self) -> LinearLeastSquares:
        A = self.A
        return LinearLeastSquares(
            key="x", apply=lambda d: A @ d, adjoint=lambda r: A.mT @ r, rhs=self.b,
            loss_of=lambda r: r.square().sum() / 2, gram_factor=A,
        )

    def solution(self, params: Params) -> torch.Tensor:
        return params["x"].detach()

    def residual(self, params: Params) -> torch.Tensor:
        """``‖Aᵀ(A x − b)‖ / ‖Aᵀ b‖``: the normal equations' relative residual."""
        normal = self.A.mT @ (self.A @ params["x"] - self.b)
        return torch.linalg.vector_norm(normal) / torch.linalg.vector_norm(self.A.mT @ self.b)

    def reference(self) -> torch.Tensor:
        return torch.linalg.lstsq(self.A, self.b.unsqueeze(-1)).solution.squeeze(-1)

    def reference_params(self) -> Params:
        return {"x": self.reference()}

    def error(self, params: Params) -> torch.Tensor:
        reference = self.reference()
        return torch.linalg.vector_norm(params["x"] - reference) / torch.linalg.vector_norm(reference)


class OptimizerContract:
    """Checks every optimizer plugin must pass; subclass it as ``Test...`` and set ``optimizer_name``."""

    optimizer_name: ClassVar[str] = ""
    #: Options for :func:`gdla.solve` (``lr``, ``max_steps``...) in the convergence check.
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 5000}
    #: Largest acceptable relative error on the contract's quadratic after solving.
    error_tol: ClassVar[float] = 1e-6

    def make_problem(self) -> Problem:
        """The problem the contract runs on: :class:`SmallLeastSquares` by default."""
        return SmallLeastSquares.example()

    def _build(self, problem: Problem, params: Params) -> Optimizer:
        cls = get_optimizer(self.optimizer_name)
        options = {k: v for k, v in self.solve_options.items() if k not in ("max_steps", "tol")}
        return cls(problem, params, max_steps=self.solve_options.get("max_steps", 100), **options)

    def test_registered(self) -> None:
        cls = get_optimizer(self.optimizer_name)
        assert issubclass(cls, Optimizer) and cls.name == self.optimizer_name
        assert cls.summary, "give the optimizer a one-line summary"
        assert cls.unsupported_reason(self.make_problem()) is None

    def test_memory_estimate_is_bytes_and_leaves_the_parameters(self) -> None:
        """``estimated_bytes`` (what the pre-construction memory check reads) is a byte count or ``None``."""
        problem = self.make_problem()
        params = problem.init_params(torch.Generator().manual_seed(0))
        before = {key: value.clone() for key, value in params.items()}
        options = {k: v for k, v in self.solve_options.items() if k not in ("max_steps", "tol")}
        need = get_optimizer(self.optimizer_name).estimated_bytes(problem, params, options)
        assert need is None or (isinstance(need, int) and need >= 0), f"estimated_bytes returned {need!r}"
        for key, value in params.items():
            assert torch.equal(value, before[key]), f"estimated_bytes changed params[{key!r}]"

    def test_converges_on_a_small_quadratic(self) -> None:
        problem = self.make_problem()
        result = solve(problem, optimizer=self.optimizer_name, tol=1e-10, **self.solve_options)
        assert float(problem.error(result.params)) <= self.error_tol, result.summary()

    def test_step_returns_a_finite_scalar(self) -> None:
        problem = self.make_problem()
        params = problem.init_params(torch.Generator().manual_seed(0))
        optimizer = self._build(problem, params)
        for _ in range(3):
            with torch.no_grad():
                loss = optimizer.step()
            assert isinstance(loss, torch.Tensor) and loss.numel() == 1, f"step() returned {loss!r}"
            assert math.isfinite(float(loss))

    def test_advance_in_bulk_equals_one_step_a_call(self) -> None:
        """``advance(n)`` takes 1 to ``n`` steps with the bits of as many ``advance(1)``; with a tolerance it
        returns a residual per step, or takes one step."""
        problem = self.make_problem()
        bulk = self._build(problem, problem.init_params(torch.Generator().manual_seed(0)))
        single = self._build(problem, problem.init_params(torch.Generator().manual_seed(0)))
        for tol in (0.0, 1e-300):  # a tolerance no step reaches: every rule of advance applies, nothing stops
            losses: list[float] = []
            with torch.no_grad():
                while len(losses) < 6:
                    stretch = bulk.advance(6 - len(losses), tol)
                    count = stretch.losses.numel()
                    assert stretch.losses.dim() == 1 and 1 <= count <= 6 - len(losses), f"advance returned {stretch}"
                    assert stretch.residuals is None or stretch.residuals.shape == stretch.losses.shape
                    assert tol > 0 or stretch.residuals is None
                    assert stretch.residuals is not None or tol == 0 or count == 1
                    losses += stretch.losses.tolist()
                one = [float(single.advance(1, tol).losses[0]) for _ in range(6)]
            assert losses == one
            for key in bulk.params:
                assert torch.equal(bulk.params[key], single.params[key])

    def test_same_seed_same_bits(self) -> None:
        problem = self.make_problem()
        options = {**self.solve_options, "max_steps": 25, "tol": 0}
        a = solve(problem, optimizer=self.optimizer_name, seed=5, **options)
        b = solve(problem, optimizer=self.optimizer_name, seed=5, **options)
        assert a.losses == b.losses
        for key in a.params:
            assert torch.equal(a.params[key], b.params[key])

    def test_state_dict_round_trip(self) -> None:
        """Saving the state after some steps and loading it into a fresh optimizer continues identically."""
        problem = self.make_problem()
        params = problem.init_params(torch.Generator().manual_seed(0))
        first = self._build(problem, params)
        with torch.no_grad():
            for _ in range(4):
                first.step()
        state = first.state_dict()
        copy = {key: value.clone() for key, value in params.items()}
        with torch.no_grad():
            going_on = [float(first.step()) for _ in range(4)]
            second = self._build(problem, copy)
            second.load_state_dict(state)
            restored = [float(second.step()) for _ in range(4)]
        assert going_on == restored
        for key in params:
            assert torch.equal(params[key], copy[key])
