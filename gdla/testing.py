"""A contract test case for problem plugins.

Plugin authors subclass :class:`ProblemContract` in a pytest module and get the checks every
gdla problem must pass::

    from gdla.testing import ProblemContract

    class TestMyProblem(ProblemContract):
        problem_name = "my-problem"

Override :meth:`ProblemContract.make_problem` to test other instances, and the class attributes
to change the optimizer or the tolerances. Needs pytest.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
import torch

from gdla.loop import solve
from gdla.problem import Problem
from gdla.registry import get_problem

__all__ = ["ProblemContract", "assert_close_relative", "relative_error"]


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


class ProblemContract:
    """Checks every problem plugin must pass; subclass it as ``Test...`` and set ``problem_name``."""

    problem_name: ClassVar[str] = ""
    #: Options for :func:`gdla.solve` in the convergence checks.
    solve_options: ClassVar[dict[str, Any]] = {}
    #: Largest acceptable ``Result.metrics["error"]`` after solving, per dtype.
    error_tol: ClassVar[dict[torch.dtype, float]] = {torch.float64: 1e-6, torch.float32: 1e-3}

    def make_problem(self, dtype: torch.dtype) -> Problem:
        """The instance under test; by default the problem's seed scenario."""
        return get_problem(self.problem_name).example(dtype=dtype)

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
        first = problem.init_params(torch.Generator().manual_seed(7))
        second = problem.init_params(torch.Generator().manual_seed(7))
        assert first.keys() == second.keys()
        for key in first:
            assert first[key].dtype == problem.dtype
            assert torch.equal(first[key], second[key]), f"param {key!r} is not reproducible"

    def test_loss_and_grad_match_autograd(self) -> None:
        problem = self.make_problem(torch.float64)
        params = problem.init_params(torch.Generator().manual_seed(1))
        loss, grads = problem.loss_and_grad(params, "autograd")
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        expected = problem.loss(leaves)
        expected.backward()
        torch.testing.assert_close(loss, expected.detach())
        for key, leaf in leaves.items():
            reference = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            torch.testing.assert_close(grads[key], reference, msg=f"gradient of {key!r}")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_solve_reaches_reference(self, dtype: torch.dtype) -> None:
        problem = self.make_problem(dtype)
        result = solve(problem, seed=0, **self.solve_options)
        assert result.stop_reason in ("converged", "stalled", "max_steps"), result.summary()
        assert result.metrics["error"] <= self.error_tol[dtype], result.summary()
        assert len(result.losses) == result.steps > 0

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
