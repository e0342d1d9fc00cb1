"""``heavy-ball``: Polyak's method tuned from estimated extreme Hessian eigenvalues, against the exact tuning."""

from __future__ import annotations

import math

import pytest
import torch

import gdla
from gdla.testing import relative_error
from gdla_plugins.optimizers.heavy_ball import HeavyBall, heavy_ball_parameters, heavy_ball_steps
from gdla_plugins.problems.inverse import InverseProblem


def exact_hessian_ends(A: torch.Tensor) -> tuple[float, float]:
    """``L`` and ``μ`` of mean((A M − I)²) for square ``A``: ``(2/n²) σ²`` at the singular values' ends."""
    sigma = torch.linalg.svdvals(A)
    n = A.shape[-1]
    return 2 * float(sigma[0]) ** 2 / n**2, 2 * float(sigma[-1]) ** 2 / n**2


def matrix_with_condition(n: int, kappa: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q1 @ torch.diag(torch.logspace(0, -math.log10(kappa), n, dtype=torch.float64)) @ q2.T


def solve(problem: gdla.Problem, **options: object) -> gdla.Result:
    return gdla.solve(problem, optimizer="heavy-ball", backend="autograd", **options)


@pytest.mark.parametrize("case", ["rand16", "kappa100"])
def test_estimated_tuning_within_twice_the_exact_tuning(case: str) -> None:
    A = {
        "rand16": torch.rand(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
        "kappa100": matrix_with_condition(20, 100.0, seed=1),
    }[case]
    problem = InverseProblem(A)
    L, mu = exact_hessian_ends(A)
    exact = solve(problem, tol=1e-6, L=L, mu=mu, max_steps=10_000)
    tuned = solve(problem, tol=1e-6, max_steps=10_000)
    assert exact.converged and tuned.converged, (exact.summary(), tuned.summary())
    # measured (tol 1e-8): rand16 2497 exact vs 1934 tuned, kappa100 1261 vs 1027; the 5% margin on L
    # keeps the top eigen-direction off the critically damped boundary, so the estimate is no slower
    assert tuned.steps <= 2 * exact.steps, (tuned.steps, exact.steps)
    assert relative_error(tuned.solution, torch.linalg.inv(A)) <= 1e-4


def test_estimates_of_the_hessian_ends() -> None:
    A = torch.rand(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    problem = InverseProblem(A)
    opt = HeavyBall(problem, problem.init_params(torch.Generator()))
    L, mu = exact_hessian_ends(A)
    assert opt.L == pytest.approx(1.05 * L, rel=1e-8)  # Lanczos is exact here; then the margin
    assert opt.mu == pytest.approx(mu, rel=1e-6)
    alpha, beta = heavy_ball_parameters(opt.L, opt.mu)
    assert (opt.alpha, opt.beta) == (alpha, beta)
    info = opt.describe()
    assert info["lr"] == alpha and info["momentum"] == beta and info["lanczos_matvecs"] > 0


def test_parameter_formulas() -> None:
    alpha, beta = heavy_ball_parameters(100.0, 1.0)
    assert alpha == pytest.approx(4 / 121)
    assert beta == pytest.approx((9 / 11) ** 2)
    # the contraction per step is √β = (√κ − 1)/(√κ + 1)
    assert heavy_ball_steps(100.0, 1e-6) == math.ceil(math.log(1e-6) / math.log(9 / 11))


def test_expected_steps_match_the_run() -> None:
    problem = InverseProblem(matrix_with_condition(20, 100.0, seed=1))
    result = solve(problem, tol=1e-8, max_steps=10_000)
    opt = HeavyBall(problem, problem.init_params(torch.Generator()))
    expected = opt.expected_steps(1e-8)
    assert result.steps / 2 <= expected <= 2 * result.steps, (expected, result.steps)


def test_other_quadratic_problems() -> None:
    for problem in (gdla.get_problem("toeplitz").example(), gdla.get_problem("sparse").example(size=8, loss="mse")):
        result = solve(problem, max_steps=5000)
        assert result.converged, result.summary()
        assert relative_error(problem.solution(result.params), problem.reference()) <= 1e-7


def test_rank_deficient_pseudo_skips_the_null_space() -> None:
    gen = torch.Generator().manual_seed(6)
    A = torch.rand(6, 3, generator=gen, dtype=torch.float64) @ torch.rand(3, 6, generator=gen, dtype=torch.float64)
    problem = InverseProblem(A, pseudo=True)
    opt = HeavyBall(problem, problem.init_params(torch.Generator()))
    sigma = torch.linalg.svdvals(A)
    assert opt.mu == pytest.approx(2 * float(sigma[2]) ** 2 / 36, rel=1e-4)  # smallest nonzero, not 0
    result = solve(problem, tol=1e-9, max_steps=5000)
    assert result.converged and all(math.isfinite(x) for x in result.losses)
    assert relative_error(result.solution, torch.linalg.pinv(A)) <= 1e-6


def test_refusals_and_bad_options() -> None:
    reason = HeavyBall.unsupported_reason(gdla.get_problem("svd").example())
    assert reason is not None and "quadratic" in reason
    problem = InverseProblem.well_conditioned(4)
    with pytest.raises(gdla.InputError, match="lr: optimizer 'heavy-ball' has no learning rate"):
        solve(problem, lr=0.1)
    with pytest.raises(gdla.InputError, match="mu: expected a value <= L"):
        solve(problem, L=1.0, mu=2.0)
    with pytest.raises(gdla.InputError, match="L: expected a number > 0"):
        solve(problem, L=-1.0, mu=0.5)
    with pytest.raises(gdla.InputError, match="has no option 'momentum'"):
        solve(problem, momentum=0.9)


def test_too_small_L_diverges_and_says_so() -> None:
    problem = InverseProblem(torch.rand(8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    L, mu = exact_hessian_ends(problem.A)
    result = solve(problem, L=L / 10, mu=mu, max_steps=2000)
    assert result.stop_reason == "diverged"
    assert result.message == gdla.result.STOP_REASONS["diverged"]
