"""``cg``: conjugate gradients on each problem's least-squares form, blockwise or global."""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import gdla
from gdla.testing import relative_error
from gdla_plugins.optimizers._quadratic import HessianView, quadratic_view
from gdla_plugins.optimizers._spectral import Lanczos
from gdla_plugins.optimizers.cg import ConjugateGradient
from gdla_plugins.problems.inverse import InverseProblem


def seeded_rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class LeastSquares(gdla.Problem):
    """``min_x ‖B x − c‖²``: a quadratic problem the optimizers know nothing about but its flag."""

    name = "test-least-squares"
    summary = "dense least squares"
    quadratic = True

    def __init__(self, B: torch.Tensor, c: torch.Tensor) -> None:  # shape: (m, n), (m,)
        self.B, self.c = B, c

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> LeastSquares:
        n = size or 12
        return cls(seeded_rand(2 * n, n, seed=seed).to(dtype), seeded_rand(2 * n, seed=seed + 1).to(dtype))

    def init_params(self, generator: torch.Generator) -> gdla.Params:
        return {"x": torch.zeros(self.B.shape[1], dtype=self.dtype)}

    def loss(self, params: gdla.Params) -> torch.Tensor:
        return (self.B @ params["x"] - self.c).square().sum()

    def solution(self, params: gdla.Params) -> torch.Tensor:
        return params["x"]

    def residual(self, params: gdla.Params) -> torch.Tensor:
        normal = self.B.T @ (self.B @ params["x"] - self.c)
        return torch.linalg.vector_norm(normal) / torch.linalg.vector_norm(self.B.T @ self.c)

    def reference(self) -> torch.Tensor:
        return torch.linalg.lstsq(self.B, self.c).solution

    def error(self, params: gdla.Params) -> torch.Tensor:
        return torch.linalg.vector_norm(params["x"] - self.reference()) / torch.linalg.vector_norm(self.reference())


def solve(problem: gdla.Problem, **options: Any) -> gdla.Result:
    return gdla.solve(problem, optimizer="cg", backend="autograd", **options)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("blocks", ["independent", "global"])
def test_inverse_random_64(side: str, blocks: str) -> None:
    A = seeded_rand(64, 64)
    result = solve(InverseProblem(A, side=side), tol=1e-8, blocks=blocks)
    assert result.converged, result.summary()
    # 64 unknowns per column: finite termination at 64 in exact arithmetic; rounding costs some more
    assert result.steps <= 130, result.summary()  # measured: 116
    assert relative_error(result.solution, torch.linalg.inv(A)) <= 1e-8
    expected_blocks = {"right": "column", "left": "row"}[side] if blocks != "global" else "global"
    assert result.settings["optimizer.blocks"] == expected_blocks


def test_inverse_side_both_and_batch() -> None:
    A = InverseProblem.well_conditioned(6, batch=(4,), seed=3).A
    result = solve(InverseProblem(A, side="both"))
    assert result.converged, result.summary()
    assert relative_error(result.solution, torch.linalg.inv(A)) <= 1e-9


def test_inverse_steps_estimate() -> None:
    A = seeded_rand(64, 64)
    problem = InverseProblem(A)
    opt = ConjugateGradient(problem, problem.init_params(torch.Generator().manual_seed(0)))
    kappa = float(torch.linalg.cond(A)) ** 2
    assert opt.spectrum().worst_condition() == pytest.approx(kappa, rel=1e-3)
    assert opt.expected_steps(1e-8) == 128  # the CG bound √κ/2·ln(2/tol) ≈ 2.9e4 capped at 2 × 64


def test_singular_pseudo_gives_pinv_without_nan() -> None:
    gen = torch.Generator().manual_seed(6)
    A = torch.rand(6, 3, generator=gen, dtype=torch.float64) @ torch.rand(3, 6, generator=gen, dtype=torch.float64)
    result = solve(InverseProblem(A, pseudo=True), tol=0, max_steps=200)
    assert all(math.isfinite(x) for x in result.losses)
    assert relative_error(result.solution, torch.linalg.pinv(A)) <= 1e-9


@pytest.mark.parametrize("loss", ["frobenius", "mse"])
def test_sparse_masked_least_squares_rowwise(loss: str) -> None:
    problem = gdla.get_problem("sparse").example(size=20, loss=loss)
    result = solve(problem)
    assert result.converged, result.summary()
    free_per_row = int(problem.omega.sum(dim=1).max())
    assert result.steps <= free_per_row + 2, result.summary()  # measured: 14 for 15 free entries
    assert relative_error(result.solution, problem.reference()) <= 1e-10
    assert result.settings["optimizer.form"] == "least-squares"
    assert result.settings["optimizer.blocks"] == "row"


def test_sparse_seed_scenario() -> None:
    problem = gdla.get_problem("sparse").example()
    result = solve(problem)
    assert result.converged
    assert relative_error(result.solution, problem.reference()) <= 1e-12


@pytest.mark.parametrize("loss", ["spectral", "frobenius"])
def test_toeplitz_band_least_squares(loss: str) -> None:
    Toeplitz = gdla.get_problem("toeplitz")
    problem = Toeplitz(seeded_rand(3, 11, 11, seed=4), bandwidth=3, loss=loss)
    result = solve(problem)
    assert result.converged, result.summary()
    assert result.steps <= 2 * 7, result.summary()  # 7 band parameters
    assert relative_error(result.solution, problem.reference()) <= 1e-10


def test_generic_quadratic_problem_through_its_flag() -> None:
    problem = LeastSquares.example()
    params = problem.init_params(torch.Generator())
    assert isinstance(quadratic_view(problem, params), HessianView)
    result = solve(problem)
    assert result.converged, result.summary()
    assert result.steps <= 2 * 12
    assert relative_error(result.solution, problem.reference()) <= 1e-10


def test_step_returns_the_problems_loss() -> None:
    problem = gdla.get_problem("sparse").example(size=8)
    params = problem.init_params(torch.Generator())
    opt = ConjugateGradient(problem, params)
    for _ in range(3):
        before = problem.loss(params)
        torch.testing.assert_close(opt.step(), before)


def test_unsupported_problems_and_bad_options() -> None:
    svd = gdla.get_problem("svd").example()
    assert "quadratic" in ConjugateGradient.unsupported_reason(svd)
    sparse2 = gdla.get_problem("sparse").example(hops=2)
    reason = ConjugateGradient.unsupported_reason(sparse2)
    assert "hops=2" in reason and "least-squares" in reason
    with pytest.raises(gdla.InputError, match="'cg' cannot solve problem 'sparse'"):
        solve(sparse2)
    problem = InverseProblem(seeded_rand(4, 4))
    with pytest.raises(gdla.InputError, match="lr: optimizer 'cg' has no learning rate"):
        solve(problem, lr=0.1)
    with pytest.raises(gdla.InputError, match="blocks: expected one of 'independent', 'global'"):
        solve(problem, blocks="rows")
    with pytest.raises(gdla.InputError, match="restart: expected None or an integer >= 1"):
        solve(problem, restart=0)


def test_backend_is_decided_before_the_run() -> None:
    """cg's least-squares form is plain tensor algebra: 'auto' runs autograd, 'fused' is refused up front."""
    problem = gdla.get_problem("inverse")(torch.eye(6, dtype=torch.float64) + 0.1)
    result = gdla.solve(problem, optimizer="cg", backend="autograd")
    assert result.backend == "autograd" and result.converged
    assert gdla.solve(problem, optimizer="cg", backend="auto").backend == "autograd"
    if gdla.extension_status()[0]:
        with pytest.raises(gdla.BackendError, match="'cg' computes with the problem's least-squares operator"):
            gdla.solve(problem, optimizer="cg", backend="fused")
        assert gdla.solve(problem, optimizer="sgd", backend="fused", max_steps=5, tol=0).backend == "fused"


def _with_singular_values(sigma: torch.Tensor) -> LeastSquares:
    """:class:`LeastSquares` (no Gram factor: its Hessian only by double backward) with ``B``'s singular values."""
    n = len(sigma)
    left, _ = torch.linalg.qr(seeded_rand(2 * n, n, seed=1) - 0.5)
    right, _ = torch.linalg.qr(seeded_rand(n, n, seed=2) - 0.5)
    return LeastSquares((left * sigma) @ right.T, seeded_rand(2 * n, seed=3))


@pytest.mark.parametrize(
    ("sigma", "rounds", "expected"),
    [
        # κ(BᵀB) = 2.25: a 2-step run sees κ ≈ 1.62 and predicts a run of 13 steps, whose 2/5 (5.2 products) the
        # 4-step run (the same run resumed: 4 products in all) fits; it sees κ ≈ 2.02 and predicts 14, which the
        # 8-step run would exceed; the 120-step estimate says 15 (the run takes 12)
        (torch.linspace(1.0, 1.5, 60, dtype=torch.float64), [2, 4], 14.0),
        # two distinct values, κ = 1e6: 2 steps find both, and the prediction (capped at 2 × 60) already exceeds
        # the budget of 50
        (torch.cat([torch.full((30,), 1e-3, dtype=torch.float64), torch.ones(30, dtype=torch.float64)]), [2], 120.0),
    ],
)
def test_steps_estimate_without_a_gram_factor_costs_a_share_of_its_run(
    sigma: torch.Tensor, rounds: list[int], expected: float
) -> None:
    problem = _with_singular_values(sigma)
    opt = ConjugateGradient(problem, problem.init_params(torch.Generator()), max_steps=50)
    asked: list[int] = []
    spectrum_run = opt.form.spectrum_run

    def recorded() -> Callable[[int], Any]:
        run = spectrum_run()
        return lambda steps: asked.append(steps) or run(steps)

    opt.form.spectrum_run = recorded  # type: ignore[method-assign]
    assert opt.expected_steps(1e-8) == expected
    assert asked == rounds
    kappa = opt.form.spectrum(rounds[-1]).worst_condition()
    assert expected == min(math.ceil(math.sqrt(kappa) / 2 * math.log(2 / 1e-8)), 120)


def test_the_steps_estimate_keeps_no_lanczos_basis_and_no_cycle() -> None:
    problem = _with_singular_values(torch.linspace(1.0, 1.5, 60, dtype=torch.float64))
    opt = ConjugateGradient(problem, problem.init_params(torch.Generator()), max_steps=50)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        assert opt.expected_steps(1e-8) == 14.0
        gc.collect()
        cyclic = [obj for obj in gc.garbage if isinstance(obj, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert cyclic == []  # the run's basis was freed by reference counting, once the estimate was made
    assert not any(isinstance(value, Lanczos) for value in vars(opt.form).values())
