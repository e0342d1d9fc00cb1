"""``riemannian-svd``: trust region on Stiefel pairs for the Brockett cost; values against torch.linalg."""

from __future__ import annotations

import pytest
import torch

import gdla
from gdla.errors import InputError
from gdla.testing import OptimizerContract
from gdla_plugins.optimizers.stiefel_svd import RiemannianSVD, _Brockett, orthonormal
from gdla_plugins.problems.svd import SVDProblem


def matrix(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class TestRiemannianSVDContract(OptimizerContract):
    optimizer_name = "riemannian-svd"
    solve_options = {"max_steps": 200}
    error_tol = 1e-12

    def make_problem(self) -> SVDProblem:
        return SVDProblem(matrix(7, 5))


def check_answer(problem: SVDProblem, params: dict[str, torch.Tensor], tol: float) -> None:
    """Singular values, orthonormality and reconstruction, all against torch.linalg."""
    U, S, V = problem.solution(params)
    reference = torch.linalg.svdvals(problem.M)[: problem.rank]
    assert float((S - reference).abs().max() / reference[0]) <= tol
    eye = torch.eye(problem.rank, dtype=torch.float64)
    assert float(torch.linalg.matrix_norm(U.mT @ U - eye)) <= 1e-12
    assert float(torch.linalg.matrix_norm(V.mT @ V - eye)) <= 1e-12
    U_ref, S_ref, V_ref = problem.reference()
    best = (U_ref * S_ref) @ V_ref.mT
    scale = float(torch.linalg.matrix_norm(problem.M))
    assert float(torch.linalg.matrix_norm((U * S) @ V.mT - best)) / scale <= tol


@pytest.mark.parametrize("shape", [(24, 24), (40, 30), (30, 40)])
def test_auto_solves_dense_svd_to_machine_precision(shape: tuple[int, int]) -> None:
    problem = SVDProblem(matrix(*shape, seed=sum(shape)))
    result = gdla.solve(problem)
    assert result.settings["optimizer.method"] == "riemannian-svd"
    assert "Riemannian trust region" in result.settings["optimizer.reason"]
    assert result.stop_reason == "converged", result.summary()
    check_answer(problem, result.params, 1e-10)


def test_near_equal_singular_values() -> None:
    """Pairs with relative gaps 1e-3: the values to 1e-8 and the vectors' reconstruction alike."""
    generator = torch.Generator().manual_seed(11)
    Q1 = torch.linalg.qr(torch.randn(20, 20, generator=generator, dtype=torch.float64)).Q
    Q2 = torch.linalg.qr(torch.randn(20, 20, generator=generator, dtype=torch.float64)).Q
    sigma = torch.linspace(1, 2, 10, dtype=torch.float64).repeat_interleave(2)
    sigma[1::2] *= 1 + 1e-3
    problem = SVDProblem((Q1 * sigma) @ Q2.mT)
    result = gdla.solve(problem)
    assert result.stop_reason == "converged", result.summary()
    check_answer(problem, result.params, 1e-8)


def test_truncated_rank_five() -> None:
    problem = SVDProblem(matrix(60, 40, seed=4), rank=5)  # a tall matrix, its five leading triplets
    result = gdla.solve(problem)
    assert result.settings["optimizer.method"] == "riemannian-svd"
    assert result.stop_reason == "converged", result.summary()
    check_answer(problem, result.params, 1e-8)


def test_quadratic_convergence_near_the_answer() -> None:
    """Gradient norms fall at least quadratically once small: the Newton regime."""
    from gdla_plugins.optimizers.stiefel_svd import brockett_trust_region_step

    M = matrix(16, 12, seed=9)
    U_ref, _, Vh = torch.linalg.svd(M, full_matrices=False)
    perturb = 1e-2 * matrix(16, 12, seed=10)
    U, V = orthonormal(U_ref + perturb), orthonormal(Vh.mT + 1e-2 * matrix(12, 12, seed=12))
    norms = []
    radius = 10.0
    for _ in range(5):
        U, V, radius, gnorm = brockett_trust_region_step(M, U, V, radius, 10.0, 500)
        norms.append(gnorm)
    big = [g for g in norms if g > 1e-10]  # below that, rounding noise
    assert len(big) >= 3
    for previous, current in zip(big, big[1:], strict=False):
        assert current <= 10 * previous**1.5


def test_riemannian_gradient_is_tangent_and_matches_finite_differences() -> None:
    M = matrix(6, 4, seed=1)
    U, V = orthonormal(matrix(6, 3, seed=2)), orthonormal(matrix(4, 3, seed=3))
    weights = torch.arange(3, 0, -1, dtype=torch.float64) / 3
    point = _Brockett(M, weights, 1.0, U, V)
    gu, gv = point.grad
    assert float((U.mT @ gu + gu.mT @ U).abs().max()) < 1e-14
    xi = (gu - U @ (U.mT @ gu), torch.zeros_like(V))  # a tangent direction
    xi = (xi[0] + U @ (torch.tensor([[0, 1, 0], [-1, 0, 2], [0, -2, 0]], dtype=torch.float64)), xi[1])
    h = 1e-6
    plus = point.value_at(orthonormal(U + h * xi[0]), V)
    minus = point.value_at(orthonormal(U - h * xi[0]), V)
    directional = float((gu * xi[0]).sum())
    assert abs((plus - minus) / (2 * h) - directional) < 1e-7


def test_refuses_learning_rate_and_problems_without_the_capability() -> None:
    problem = SVDProblem(matrix(5, 4))
    params = problem.init_params(torch.Generator())
    with pytest.raises(InputError, match="lr: optimizer 'riemannian-svd' has no learning rate"):
        RiemannianSVD(problem, params, lr=0.1)
    with pytest.raises(InputError, match="has no option 'history_size'"):
        RiemannianSVD(problem, params, history_size=3)
    inverse = gdla.get_problem("inverse").example()
    assert RiemannianSVD.suitability(inverse) is None
    assert "singular_value_decomposition()" in RiemannianSVD.unsupported_reason(inverse)
    assert RiemannianSVD.suitability(problem).rank == 40
    assert "no fused kernel" in RiemannianSVD.fused_reason(problem, {})
