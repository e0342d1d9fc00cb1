"""``line-search``: steepest descent with the exact step on quadratic losses, and its refusals."""

from __future__ import annotations

import math

import pytest
import torch

import gdla
from gdla.testing import relative_error
from gdla_plugins.optimizers.line_search import ExactLineSearch, steepest_descent_steps
from gdla_plugins.problems.inverse import InverseProblem


def solve(problem: gdla.Problem, **options: object) -> gdla.Result:
    return gdla.solve(problem, optimizer="line-search", backend="autograd", **options)


def test_first_step_is_the_exact_minimiser_along_the_gradient() -> None:
    problem = InverseProblem.well_conditioned(5, seed=2)
    params = problem.init_params(torch.Generator().manual_seed(0))
    start = params["M"].clone()
    # the Hessian of mean((A M − I)²) over 5x5 entries acts as G ↦ (2/25) AᵀA G
    loss, grads = problem.loss_and_grad(params)
    g = grads["M"]
    Hg = (2 / 25) * problem.A.T @ problem.A @ g
    t_exact = float((g * g).sum() / (g * Hg).sum())
    opt = ExactLineSearch(problem, params)
    torch.testing.assert_close(opt.step(), loss)
    assert opt.last_step == pytest.approx(t_exact, rel=1e-10)
    torch.testing.assert_close(params["M"], start - t_exact * g)
    # exact: the new gradient is orthogonal to the one it stepped along
    _, after = problem.loss_and_grad(params)
    assert abs(float((after["M"] * g).sum())) <= 1e-12 * float((g * g).sum())


def test_steepest_descent_matches_its_estimate_on_a_benign_matrix() -> None:
    problem = InverseProblem.well_conditioned(8, seed=1)
    result = solve(problem)
    assert result.converged, result.summary()
    assert relative_error(result.solution, torch.linalg.inv(problem.A)) <= 1e-9
    opt = ExactLineSearch(problem, problem.init_params(torch.Generator()))
    expected = opt.expected_steps(result.settings["tol"])
    assert result.steps <= expected <= 2 * result.steps, (result.steps, expected)  # measured 27 vs 28


def test_cg_direction_is_linear_cg() -> None:
    A = torch.rand(16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    result = solve(InverseProblem(A), direction="cg", tol=1e-8)
    assert result.converged, result.summary()
    assert result.steps <= 32, result.summary()  # measured 19: at most 16 distinct eigenvalues
    assert relative_error(result.solution, torch.linalg.inv(A)) <= 1e-8


@pytest.mark.parametrize(("name", "options"), [("toeplitz", {}), ("sparse", {"size": 10, "loss": "mse"})])
def test_other_quadratic_problems(name: str, options: dict) -> None:
    problem = gdla.get_problem(name).example(**options)
    result = solve(problem)
    assert result.converged, result.summary()
    assert relative_error(problem.solution(result.params), problem.reference()) <= 1e-7


def test_rank_deficient_pseudo_stays_finite() -> None:
    gen = torch.Generator().manual_seed(6)
    A = torch.rand(6, 3, generator=gen, dtype=torch.float64) @ torch.rand(3, 6, generator=gen, dtype=torch.float64)
    result = solve(InverseProblem(A, pseudo=True), tol=0, max_steps=300)
    assert all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] == pytest.approx(3 / 36, rel=1e-6)  # the floor: 3 unreachable unit directions
    assert relative_error(result.solution, torch.linalg.pinv(A)) <= 1e-2  # steepest descent is slow, not wrong


def test_steepest_descent_steps_formula() -> None:
    assert steepest_descent_steps(1.0, 1e-8) == 1.0
    # contraction (κ−1)/(κ+1) = 9/11 per step
    assert steepest_descent_steps(10.0, 1e-6) == math.ceil(math.log(1e-6) / math.log(9 / 11))
    assert steepest_descent_steps(math.inf, 1e-6) == math.inf


def test_refuses_problems_that_are_not_quadratic() -> None:
    for problem, fragment in [
        (gdla.get_problem("svd").example(), "problem 'svd'"),
        (gdla.get_problem("sparse").example(hops=2, loss="mse"), "hops=2"),
    ]:
        reason = ExactLineSearch.unsupported_reason(problem)
        assert reason is not None and "quadratic" in reason and fragment in reason, reason
        with pytest.raises(gdla.InputError, match="'line-search' cannot solve"):
            solve(problem)


def test_frobenius_norm_loss_through_its_least_squares_form() -> None:
    # ‖SX − Y‖_F is not quadratic, but its declared least-squares form has the same minimiser
    problem = gdla.get_problem("sparse").example()
    result = solve(problem, max_steps=2000)
    assert result.converged, result.summary()
    assert float(problem.error(result.params)) <= 1e-8


def test_problem_that_does_not_say_is_refused_with_the_fix() -> None:
    class Silent(InverseProblem):
        name = "silent-quadratic"
        quadratic = None  # says nothing, whatever the parent says

        def least_squares(self) -> None:
            return None

    reason = ExactLineSearch.unsupported_reason(Silent(torch.eye(3, dtype=torch.float64)))
    assert reason is not None and "quadratic = True" in reason

    class Declared(Silent):
        quadratic = True

    assert ExactLineSearch.unsupported_reason(Declared(torch.eye(3, dtype=torch.float64))) is None


def test_bad_options() -> None:
    problem = InverseProblem.well_conditioned(3)
    with pytest.raises(gdla.InputError, match="lr: optimizer 'line-search' has no learning rate"):
        solve(problem, lr=0.5)
    with pytest.raises(gdla.InputError, match="direction: expected one of 'steepest', 'cg'"):
        solve(problem, direction="newton")
    with pytest.raises(gdla.InputError, match="has no option 'beta'"):
        solve(problem, beta=0.5)
