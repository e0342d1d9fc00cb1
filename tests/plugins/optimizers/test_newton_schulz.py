"""``newton-schulz``: inverses and pseudo-inverses in tens of steps, its step estimate, and the polar iteration."""

from __future__ import annotations

import math

import pytest
import torch

import gdla
from gdla.testing import relative_error
from gdla_plugins.optimizers.newton_schulz import (
    NewtonSchulz,
    batched_inverse,
    newton_schulz_steps,
    polar_newton_schulz,
    safe_start,
)
from gdla_plugins.problems.inverse import InverseProblem


def hilbert(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    return 1.0 / (i[:, None] + i[None, :] + 1)


def seeded_rand(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def relative_residual(A: torch.Tensor, M: torch.Tensor) -> float:
    eye = torch.eye(A.shape[-2], dtype=A.dtype)
    return float((torch.linalg.matrix_norm(A @ M - eye) / math.sqrt(A.shape[-2])).max())


def test_random_64_converges_in_tens_of_steps() -> None:
    A = seeded_rand(64)
    result = gdla.solve(InverseProblem(A), optimizer="newton-schulz", tol=1e-8, backend="autograd")
    assert result.converged, result.summary()
    assert result.steps <= 40, result.summary()  # measured: 26 (plain GD needs ~κ² = 10⁶ and more)
    assert relative_residual(A, result.solution) <= 1e-8
    assert relative_error(result.solution, torch.linalg.inv(A)) <= 1e-6


def test_hilbert_6_reaches_1e_6() -> None:
    A = hilbert(6)  # κ ≈ 1.5e7
    result = gdla.solve(InverseProblem(A), optimizer="newton-schulz", tol=1e-6, backend="autograd")
    assert result.converged, result.summary()
    assert result.steps <= 60, result.summary()  # measured: 53
    assert relative_error(result.solution, torch.linalg.inv(A)) <= 1e-6


@pytest.mark.parametrize("matrix", ["rand64", "rand16", "hilbert6", "benign"])
def test_expected_steps_match_the_run(matrix: str) -> None:
    A, tol = {
        "rand64": (seeded_rand(64), 1e-8),
        "rand16": (seeded_rand(16, seed=3), 1e-8),
        "hilbert6": (hilbert(6), 1e-6),
        "benign": (InverseProblem.well_conditioned(8, seed=1).A, 1e-10),
    }[matrix]
    result = gdla.solve(InverseProblem(A), optimizer="newton-schulz", tol=tol, backend="autograd")
    assert result.converged
    assert abs(newton_schulz_steps(A, tol) - result.steps) <= 3, (newton_schulz_steps(A, tol), result.steps)


@pytest.mark.parametrize("side", ["right", "left"])
def test_rectangular_pseudo_inverse(side: str) -> None:
    A = torch.rand(7, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    result = gdla.solve(InverseProblem(A, side=side, pseudo=True), optimizer="newton-schulz", backend="autograd")
    assert result.converged, result.summary()
    assert relative_error(result.solution, torch.linalg.pinv(A)) <= 1e-9


def test_batched_and_side_both() -> None:
    A = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for side in ("both", "right", "left"):
        result = gdla.solve(InverseProblem(A, side=side), optimizer="newton-schulz", backend="autograd")
        assert result.converged, result.summary()
        assert relative_error(result.solution, torch.linalg.inv(A)) <= 1e-8


def test_float32() -> None:
    A = InverseProblem.well_conditioned(6, batch=(50,), seed=5, dtype=torch.float32).A
    result = gdla.solve(InverseProblem(A), optimizer="newton-schulz", backend="autograd")  # tol 1e-5
    assert result.converged and result.steps <= 10, result.summary()
    assert relative_error(result.solution, torch.linalg.inv(A.double())) <= 1e-5


def test_singular_pseudo_stays_finite_and_lands_on_pinv() -> None:
    gen = torch.Generator().manual_seed(6)
    A = torch.rand(6, 3, generator=gen, dtype=torch.float64) @ torch.rand(3, 6, generator=gen, dtype=torch.float64)
    problem = InverseProblem(A, pseudo=True)
    params = problem.init_params(gen)
    opt = NewtonSchulz(problem, params)
    # far past convergence and without the problem's projection: rounding in the null-space block
    # would double every step (overflow after ~1000) if the iteration did not clean it
    losses = [float(opt.step()) for _ in range(400)]
    assert all(math.isfinite(x) for x in losses)
    assert bool(torch.isfinite(params["M"]).all())
    assert relative_error(params["M"], torch.linalg.pinv(A)) <= 1e-10
    # the loss floor of a rank-3 6x6 matrix: (6 - 3) unit eigenvalues of I - A A⁺ over 36 entries
    assert losses[-1] == pytest.approx(3 / 36, rel=1e-9)


def test_singular_without_pseudo_is_refused_at_construction() -> None:
    A = torch.ones(3, 3, dtype=torch.float64)
    with pytest.raises(gdla.SingularMatrixError):
        InverseProblem(A)


def test_step_returns_the_loss_at_the_iterate_it_started_from() -> None:
    problem = InverseProblem(seeded_rand(5), side="left")
    params = problem.init_params(torch.Generator().manual_seed(0))
    opt = NewtonSchulz(problem, params)
    # the first step starts from the safe start, writing it into the parameters
    first = opt.step()
    torch.testing.assert_close(first, problem.loss({"M": safe_start(problem.A)}))
    for _ in range(3):
        before = problem.loss(params)
        torch.testing.assert_close(opt.step(), before)


def test_start_init_keeps_the_problems_start() -> None:
    problem = InverseProblem(seeded_rand(5), init="scaled-transpose")
    params = problem.init_params(torch.Generator().manual_seed(0))
    start = params["M"].clone()
    NewtonSchulz(problem, params, start="init")
    assert torch.equal(params["M"], start)


def test_unsupported_problems_and_bad_options() -> None:
    svd = gdla.get_problem("svd").example()
    reason = NewtonSchulz.unsupported_reason(svd)
    assert reason is not None and "matrix_inverse()" in reason
    with pytest.raises(gdla.InputError, match="cannot solve problem 'svd'"):
        gdla.solve(svd, optimizer="newton-schulz", backend="autograd")
    problem = InverseProblem(seeded_rand(4))
    with pytest.raises(gdla.InputError, match="lr: optimizer 'newton-schulz' has no learning rate"):
        gdla.solve(problem, optimizer="newton-schulz", lr=0.1, backend="autograd")
    with pytest.raises(gdla.InputError, match="has no option 'momentum'"):
        gdla.solve(problem, optimizer="newton-schulz", momentum=0.9, backend="autograd")
    with pytest.raises(gdla.InputError, match="start: expected one of 'safe', 'init'"):
        gdla.solve(problem, optimizer="newton-schulz", start="zeros", backend="autograd")


def test_batched_inverse_pytorch_path() -> None:
    A = InverseProblem.well_conditioned(4, batch=(1000,), seed=7, dtype=torch.float32).A
    X, steps = batched_inverse(A, tol=1e-6, backend="autograd")
    eye = torch.eye(4, dtype=torch.float64)
    residual = torch.linalg.matrix_norm(A.double() @ X.double() - eye) / 2
    assert float(residual.max()) <= 2e-6  # float32 rounding of the last product on top of tol
    assert relative_error(X, torch.linalg.inv(A.double())) <= 1e-5
    assert int(steps.max()) <= 10 and int(steps.min()) >= 1
    broken = A.clone()
    broken[3, 0, 0] = math.nan
    with pytest.raises(gdla.InputError, match="A: expected finite entries, received 1 NaN/Inf entry"):
        batched_inverse(broken, tol=1e-6)


@pytest.mark.skipif(not gdla.extension_status()[0], reason="compiled extension gdla._C not available")
def test_batched_inverse_fused_kernel_agrees() -> None:
    A = InverseProblem.well_conditioned(4, batch=(1000,), seed=7, dtype=torch.float32).A
    fused, fused_steps = batched_inverse(A, tol=1e-6, backend="fused")
    plain, _ = batched_inverse(A, tol=1e-6, backend="autograd")
    assert relative_error(fused, plain) <= 1e-5
    assert int(fused_steps.max()) <= 10
    problem = InverseProblem(A)
    result = gdla.solve(problem, optimizer="newton-schulz", backend="fused", tol=1e-5)
    assert result.converged and result.settings["optimizer.fused_kernel"] is True
    assert relative_error(result.solution, torch.linalg.inv(A.double())) <= 1e-4


@pytest.mark.skipif(not gdla.extension_status()[0], reason="compiled extension gdla._C not available")
@pytest.mark.parametrize("side", ["right", "left", "both"])
def test_fused_steps_follow_the_pytorch_steps(side: str) -> None:
    A = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(11), dtype=torch.float64) + torch.eye(7)
    runs = {}
    for backend in ("fused", "autograd"):
        problem = InverseProblem(A, side=side)
        params = problem.init_params(torch.Generator())
        opt = NewtonSchulz(problem, params, backend=backend)
        losses = [float(opt.step()) for _ in range(12)]
        runs[backend] = (losses, params["M"])
    assert opt.describe()["fused_kernel"] is False
    torch.testing.assert_close(runs["fused"][1], runs["autograd"][1], rtol=1e-10, atol=1e-12)
    assert runs["fused"][0] == pytest.approx(runs["autograd"][0], rel=1e-10)


def test_polar_iteration_matches_the_svd_polar_factor() -> None:
    gen = torch.Generator().manual_seed(8)
    U = torch.randn(10, 4, generator=gen, dtype=torch.float64) * 5  # needs the scaling: ‖U‖₂ > √3
    W, _, Zh = torch.linalg.svd(U, full_matrices=False)
    Q = polar_newton_schulz(U)
    torch.testing.assert_close(Q, W @ Zh, rtol=0, atol=1e-12)
    torch.testing.assert_close(Q.mT @ Q, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-13)


def test_polar_iteration_is_a_cheap_retraction_and_batched() -> None:
    gen = torch.Generator().manual_seed(9)
    Q, _ = torch.linalg.qr(torch.randn(3, 12, 5, generator=gen, dtype=torch.float64))
    nudged = Q + 1e-4 * torch.randn(3, 12, 5, generator=gen, dtype=torch.float64)
    W, _, Zh = torch.linalg.svd(nudged, full_matrices=False)
    torch.testing.assert_close(polar_newton_schulz(nudged, max_steps=3), W @ Zh, rtol=0, atol=1e-12)
    with pytest.raises(gdla.InputError, match="expected a tall matrix"):
        polar_newton_schulz(torch.randn(3, 5, dtype=torch.float64))
