"""The implicit backward's declared fast paths (:mod:`gdla.adjoints`): the SVD's known adjoint against
``torch.linalg.svd``'s gradient and the generic Hessian path, and a declared sum of squares by Gauss-Newton
(toeplitz-net's bands against the least-squares bands' gradient; a non-zero residual takes the Hessian)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gdla
from gdla import differentiation
from gdla.adjoints import gauss_newton, svd_adjoint
from gdla.capabilities import SingularValueDecomposition, SumOfSquares

DOUBLE = torch.float64
SVDProblem = gdla.get_problem("svd")


def _weights(like: tuple[torch.Tensor, ...], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in like]


def _weighted(parts: tuple[torch.Tensor, ...], weights: list[torch.Tensor | None]) -> torch.Tensor:
    return sum((p * w).sum() for p, w in zip(parts, weights, strict=True) if w is not None)  # type: ignore[return-value]


@pytest.mark.parametrize("shape", [(4, 3), (3, 3), (2, 4)])
@pytest.mark.parametrize("given", ["USV", "U", "V", "S"])
def test_the_svd_adjoint_is_torchs_backward(shape: tuple[int, int], given: str) -> None:
    M = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=DOUBLE).requires_grad_()
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    weights = [w if key in given else None for w, key in zip(_weights((U, S, Vh.mT)), "USV", strict=True)]
    (reference,) = torch.autograd.grad(_weighted((U, S, Vh.mT), weights), M)
    ours = svd_adjoint(*weights, U.detach(), S.detach(), Vh.detach().mT)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-13)


def test_repeated_singular_values_are_handled_as_torch_does() -> None:
    """Vectors' gradients divide by σⱼ² − σᵢ²: not finite for repeated values; the values' gradient always is."""
    M = torch.diag(torch.tensor([2.0, 2.0, 1.0], dtype=DOUBLE)).requires_grad_()
    U, S, Vh = torch.linalg.svd(M)
    wu, ws, _ = _weights((U, S, Vh))
    (torch_u,) = torch.autograd.grad((U * wu).sum(), M, retain_graph=True)
    ours_u = svd_adjoint(wu, None, None, U.detach(), S.detach(), Vh.detach().mT)
    assert not bool(torch_u.isfinite().all()) and not bool(ours_u.isfinite().all())
    (torch_s,) = torch.autograd.grad((S * ws).sum(), M)
    torch.testing.assert_close(svd_adjoint(None, ws, None, U.detach(), S.detach(), Vh.detach().mT), torch_s)


class _GenericSVD(SVDProblem):  # type: ignore[misc,valid-type]
    """svd without ``params_of``: the implicit backward takes CG on the loss's Hessian."""

    name = "test-svd-generic"

    def singular_value_decomposition(self) -> SingularValueDecomposition:
        declared = super().singular_value_decomposition()
        return SingularValueDecomposition(declared.matrix, declared.rank, declared.load, declared.store)


@pytest.mark.parametrize(("shape", "rank"), [((3, 2), None), ((2, 3), None), ((4, 3), 2)])
def test_the_svd_fast_path_equals_torch_and_the_generic_path(
    shape: tuple[int, int], rank: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    M = torch.rand(*shape, generator=torch.Generator().manual_seed(2), dtype=DOUBLE).requires_grad_()
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    k = min(shape) if rank is None else rank
    weights: list[torch.Tensor | None] = list(_weights((U[:, :k], S[:k], Vh[:k].mT), seed=3))
    (reference,) = torch.autograd.grad(_weighted((U[:, :k], S[:k], Vh[:k].mT), weights), M)
    generic = differentiation._Implicit._generic
    for cls in (SVDProblem, _GenericSVD):
        result = gdla.solve(cls(M, rank=rank), optimizer="riemannian-svd", tol=1e-13)
        if cls is SVDProblem:  # the declared adjoint, not the loss's Hessian
            monkeypatch.setattr(differentiation._Implicit, "_generic", None)
        (ours,) = torch.autograd.grad(_weighted(result.solution, weights), M)
        monkeypatch.setattr(differentiation._Implicit, "_generic", generic)
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-11)


def test_gauss_newton_is_j_transpose_curvature_j() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, generator=g, dtype=DOUBLE).requires_grad_()
    A = torch.randn(4, 3, generator=g, dtype=DOUBLE)

    def residuals(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(A @ x) - 0.3

    def loss_of(r: torch.Tensor) -> torch.Tensor:
        return r.square().sum().square()  # ∇²ℓ = 4‖r‖² I + 8 r rᵀ

    u = torch.randn(3, generator=g, dtype=DOUBLE)
    with torch.enable_grad():
        (found,) = gauss_newton(residuals(x), loss_of, [x])([u])
    J = torch.autograd.functional.jacobian(residuals, x.detach())
    r = residuals(x.detach())
    curvature = 4 * r.square().sum() * torch.eye(4, dtype=DOUBLE) + 8 * torch.outer(r, r)
    torch.testing.assert_close(found, J.mT @ curvature @ J @ u, rtol=1e-12, atol=1e-13)


def _least_squares_bands(rows: torch.Tensor, probes: torch.Tensor, b: int) -> torch.Tensor:
    """Each row's bands minimising ``mean_k ‖(T − B(c)) y_k‖² / ‖y_k‖²`` by ``torch.linalg.pinv`` (differentiable)."""
    n = rows.shape[-1]
    offset = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # j − i; T[i, j] = row[n // 2 + j − i]
    inside = (offset + n // 2 >= 0) & (offset + n // 2 < n)
    T = torch.where(inside, rows[:, (offset + n // 2).clamp(0, n - 1)], 0.0)  # (N, n, n)
    basis = torch.stack([(offset == m - b).to(rows.dtype) for m in range(2 * b + 1)])  # B(c) = Σ c_m basis_m
    Y = (probes / probes.norm(dim=-1, keepdim=True)).mT  # (n, K)
    design = (basis @ Y).flatten(-2).mT  # (n·K, 2b+1)
    return (torch.linalg.pinv(design) @ (T @ Y).flatten(-2).mT).mT


def test_toeplitz_net_bands_get_the_least_squares_bands_gradient() -> None:
    """At a perfect fit the bands are each row's least-squares bands: their derivative is lstsq's (weights: not)."""
    g = torch.Generator().manual_seed(5)
    rows = (torch.rand(3, 5, generator=g, dtype=DOUBLE) * 5).requires_grad_()
    probes = torch.randn(6, 5, generator=g, dtype=DOUBLE)
    problem = gdla.get_problem("toeplitz-net")(rows, hidden=4, probes=probes, bandwidth=2)
    result = gdla.solve(problem, tol=1e-13)
    expected = _least_squares_bands(rows, probes, 2)
    torch.testing.assert_close(result.solution, expected, rtol=1e-10, atol=1e-10)
    (weight,) = _weights((expected,), seed=6)
    (ours,) = torch.autograd.grad((result.solution * weight).sum(), rows)
    (reference,) = torch.autograd.grad((expected * weight).sum(), rows)
    torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-9)
    assert result.warnings == []


class _Curve(gdla.Problem):
    """``min (x − a)² + (x² − 2a)²`` over a scalar ``x``, declared as a sum of squares: non-zero residual at the
    answer, so Gauss-Newton is not the Hessian there."""

    name = "test-curve"
    summary = "a sum of squares whose residual does not vanish"

    def __init__(self, a: torch.Tensor) -> None:
        self.a = a.detach()

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = DOUBLE) -> Any:
        return cls(torch.tensor(1.0, dtype=dtype))

    def init_params(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"x": torch.ones((), dtype=self.a.dtype)}

    def _residuals(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        x = params["x"]
        return torch.stack([x - self.a, x.square() - 2 * self.a])

    def sum_of_squares(self) -> SumOfSquares:
        return SumOfSquares(residuals=self._residuals)

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._residuals(params).square().sum()

    def solution(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return params["x"].detach()

    def residual(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        x = params["x"]
        return (2 * (x - self.a) + 4 * x * (x.square() - 2 * self.a)).abs() / (1 + 4 * self.a.abs())

    def reference(self) -> torch.Tensor:
        return torch.tensor(0.0, dtype=self.a.dtype)

    def error(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.residual(params)


def test_a_sum_of_squares_with_a_residual_left_takes_the_hessian() -> None:
    a = torch.tensor(1.0, dtype=DOUBLE, requires_grad=True)
    x = gdla.solve(_Curve(a), optimizer="levenberg-marquardt", tol=1e-14).solution
    (ours,) = torch.autograd.grad(x, a)
    x0 = float(x)  # d/da of 2(x − a) + 4x(x² − 2a) = 0: (2 + 12x² − 8a) dx = (2 + 8x) da
    assert abs(float(ours) - (2 + 8 * x0) / (2 + 12 * x0**2 - 8)) < 1e-9
