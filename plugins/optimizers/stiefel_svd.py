r"""The (truncated) SVD by a Riemannian trust region on two Stiefel manifolds: converges quadratically.

For ``M`` ``(m, n)`` and rank ``k`` the unknowns are orthonormal ``U`` ``(m, k)`` and ``V``
``(n, k)``; the cost is Brockett's

.. math::

    f(U, V) = -\operatorname{tr}(U^T M V N) / \|M\|_F, \qquad N = \operatorname{diag}(k, k-1, \dots, 1) / k,

whose minimisers on ``St(m, k) × St(n, k)`` are the leading ``k`` singular vector pairs, ordered
by ``N``'s distinct weights (up to a common sign per pair); the singular values are then
``σ = diag(Uᵀ M V)``. Every other critical point is a saddle or a maximum.

With the embedded metric, for ``X ∈ {U, V}`` and its Euclidean gradient ``G``:

* tangent projection ``P_X(Z) = Z − X sym(XᵀZ)``;
* Riemannian gradient ``grad f = (P_U(−M V N), P_V(−Mᵀ U N)) / ‖M‖_F``;
* Riemannian Hessian ``Hess f[ξ] = P_X(∇²f[ξ] − ξ_X sym(XᵀG_X))`` (Absil, Mahony and
  Sepulchre, *Optimization Algorithms on Matrix Manifolds*, §5.5 and §7);
* retraction: the sign-fixed Q factor of ``X + ξ_X``.

Each :meth:`~RiemannianSVD.step` is one iteration of the Riemannian trust-region method
(Absil-Baker-Gallivan; pymanopt's ``TrustRegions``): Steihaug-Toint truncated CG on the model
``f + ⟨grad, η⟩ + ½⟨Hess η, η⟩`` inside the radius ``Δ``, stopped at
``‖r‖ ≤ ‖r₀‖ min(‖r₀‖, 0.1)`` (quadratic convergence near the answer), then the gain ratio ``ρ``
decides acceptance and the new radius. A step costs ``O(m n k)`` per Hessian product: a
truncated SVD never pays for a full decomposition.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

import gdla
from gdla.capabilities import SingularValueDecomposition
from gdla.optimizer import Optimizer, Suitability
from gdla.options import Option, optional_count
from gdla.problem import Params, Problem

__all__ = ["RiemannianSVD", "brockett_trust_region_step"]


Pair = tuple[torch.Tensor, torch.Tensor]


def _sym(A: torch.Tensor) -> torch.Tensor:
    return (A + A.mT) / 2


def _project(X: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """``P_X(Z) = Z − X sym(XᵀZ)``: the tangent component of ``Z`` at ``X`` on the Stiefel manifold."""
    return Z - X @ _sym(X.mT @ Z)


def _inner(a: Pair, b: Pair) -> float:
    return float((a[0] * b[0]).sum() + (a[1] * b[1]).sum())


def orthonormal(X: torch.Tensor) -> torch.Tensor:
    """The sign-fixed Q factor of ``X`` (``diag(R) >= 0``): the QR retraction's map onto the manifold."""
    q, r = torch.linalg.qr(X, mode="reduced")
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)
    return q * signs


class _Brockett:
    """The scaled Brockett cost at one point ``(U, V)``: value, gradient and Hessian products."""

    def __init__(self, M: torch.Tensor, weights: torch.Tensor, scale: float, U: torch.Tensor, V: torch.Tensor):
        self.M, self.N, self.scale = M, weights, scale
        self.U, self.V = U, V
        self.MV = M @ V  # shape: (m, k)
        self.MtU = M.mT @ U  # shape: (n, k)
        self.GU = -self.MV * weights / scale  # Euclidean gradients
        self.GV = -self.MtU * weights / scale
        self.value = -float(((U * self.MV).sum(0) * weights).sum()) / scale
        self.grad = (_project(U, self.GU), _project(V, self.GV))
        self.SU = _sym(U.mT @ self.GU)  # the Weingarten terms' k × k factors
        self.SV = _sym(V.mT @ self.GV)

    def hess(self, xi: Pair) -> Pair:
        xu, xv = xi
        hu = -(self.M @ xv) * self.N / self.scale - xu @ self.SU
        hv = -(self.M.mT @ xu) * self.N / self.scale - xv @ self.SV
        return _project(self.U, hu), _project(self.V, hv)

    def value_at(self, U: torch.Tensor, V: torch.Tensor) -> float:
        return -float(((U * (self.M @ V)).sum(0) * self.N).sum()) / self.scale


def _preconditioner(point: _Brockett) -> Callable[[Pair], Pair]:
    r"""An approximate inverse of the Hessian, exact at the answer for ``k = m = n``.

    Write a tangent vector as ``ξ_U = U A + (I − UUᵀ) P`` (``A`` skew) and likewise ``ξ_V = V C + …``.
    Where ``UᵀMV = diag(σ)``, the Hessian couples only ``(A_ij, C_ij)`` for each pair ``i < j``, as
    ``½ [[s, −t], [−t, s]]`` with ``s = σ_i n_i + σ_j n_j`` and ``t = σ_j n_i + σ_i n_j`` (eigenvalues
    ``(σ_i ± σ_j)(n_i ± n_j) / 2``), and acts on column ``i`` of ``P`` (and ``Q``) about as ``σ_i n_i``.
    Those 2 × 2 blocks are inverted with their eigenvalues' magnitudes (floored), so the
    preconditioner stays positive definite away from the answer, where ``σ`` is not yet ordered.
    """
    sigma = (point.U * point.MV).sum(0) / point.scale  # diag(UᵀMV), scaled
    w = point.N
    top = float((sigma.abs() * w).max()) or 1.0
    floor = 1e-10 * top
    # the pair blocks: eigenvalues on (1, 1) and (1, −1) of [[s, −t], [−t, s]]
    s = sigma[:, None] * w[:, None] + sigma[None, :] * w[None, :]
    t = sigma[None, :] * w[:, None] + sigma[:, None] * w[None, :]
    low = (s - t).abs().clamp(min=floor)  # eigenvalue on (1, 1) / √2: a and c alike
    high = (s + t).abs().clamp(min=floor)  # on (1, −1) / √2
    column = (sigma * w).abs().clamp(min=floor)

    def apply(r: Pair) -> Pair:
        U, V = point.U, point.V
        A, C = U.mT @ r[0], V.mT @ r[1]
        A, C = (A - A.mT) / 2, (C - C.mT) / 2
        P, Q = r[0] - U @ A, r[1] - V @ C
        plus, minus = (A + C) / 2, (A - C) / 2
        # f₂ = ½(s a² + s c² − 2t a c) and ‖ξ‖² = 2a² + 2c²: the Hessian operator is ½[[s, −t], [−t, s]]
        plus, minus = 2 * plus / low, 2 * minus / high
        A_new, C_new = plus + minus, plus - minus
        return U @ A_new + P / column, V @ C_new + Q / column

    return apply


def _truncated_cg(point: _Brockett, radius: float, max_iterations: int) -> tuple[Pair, bool]:
    """Preconditioned Steihaug-Toint CG on the trust-region model (Conn, Gould and Toint, Alg. 7.5.1).

    The region is measured in the preconditioner's norm. Returns ``(η, reached the boundary)``.
    """
    precondition = _preconditioner(point)
    eta = (torch.zeros_like(point.U), torch.zeros_like(point.V))
    r = point.grad
    r0 = math.sqrt(_inner(r, r))
    stop = r0 * min(r0, 0.1)
    z = precondition(r)
    zr = _inner(z, r)
    delta = (-z[0], -z[1])
    e_pe, e_pd, d_pd = 0.0, 0.0, zr
    for _ in range(max_iterations):
        hd = point.hess(delta)
        curvature = _inner(delta, hd)
        alpha = zr / curvature if curvature > 0 else math.inf
        e_pe_new = e_pe + 2 * alpha * e_pd + alpha * alpha * d_pd if math.isfinite(alpha) else math.inf
        if e_pe_new >= radius**2:
            # negative curvature or leaving the region: follow delta to the boundary
            tau = (-e_pd + math.sqrt(max(e_pd * e_pd + d_pd * (radius**2 - e_pe), 0.0))) / d_pd
            return (eta[0] + tau * delta[0], eta[1] + tau * delta[1]), True
        e_pe = e_pe_new
        eta = (eta[0] + alpha * delta[0], eta[1] + alpha * delta[1])
        r = (r[0] + alpha * hd[0], r[1] + alpha * hd[1])
        if math.sqrt(_inner(r, r)) <= stop:
            break
        z = precondition(r)
        zr_old, zr = zr, _inner(z, r)
        beta = zr / zr_old
        delta = (-z[0] + beta * delta[0], -z[1] + beta * delta[1])
        e_pd = beta * (e_pd + alpha * d_pd)
        d_pd = zr + beta * beta * d_pd
    return eta, False


def brockett_trust_region_step(
    M: torch.Tensor, U: torch.Tensor, V: torch.Tensor, radius: float, max_radius: float, inner_iterations: int
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """One Riemannian trust-region iteration on the scaled Brockett cost.

    Returns:
        ``(U, V, radius, gradient norm)`` after the iteration (``U``, ``V`` unchanged if rejected).
    """
    k = U.shape[-1]
    weights = torch.arange(k, 0, -1, dtype=M.dtype, device=M.device) / k
    scale = float(torch.linalg.matrix_norm(M)) or 1.0
    point = _Brockett(M, weights, scale, U, V)
    gnorm = math.sqrt(_inner(point.grad, point.grad))
    eps = torch.finfo(M.dtype).eps
    if gnorm <= 10 * eps * math.sqrt(k):
        return U, V, radius, gnorm  # at the answer to rounding: any step would only add noise
    eta, boundary = _truncated_cg(point, radius, inner_iterations)
    model = _inner(point.grad, eta) + 0.5 * _inner(eta, point.hess(eta))
    U_new, V_new = orthonormal(U + eta[0]), orthonormal(V + eta[1])
    noise = 100 * eps * max(1.0, abs(point.value))
    if -model <= noise:
        # the cost cannot resolve the step's decrease: accept a step that shrinks the gradient (Newton's regime)
        after = _Brockett(M, weights, scale, U_new, V_new)
        if math.sqrt(_inner(after.grad, after.grad)) < gnorm:
            return U_new, V_new, radius, gnorm
        return U, V, radius / 4, gnorm
    value = point.value_at(U_new, V_new)
    # rounding guard as in Manopt: near the answer both decreases sink into the cost's rounding noise
    guard = 10 * eps * max(1.0, abs(point.value))
    rho = (point.value - value + guard) / (-model + guard)
    if rho < 0.25:
        radius /= 4
    elif rho > 0.75 and boundary:
        radius = min(2 * radius, max_radius)
    if rho > 0.1 and model < 0:
        return U_new, V_new, radius, gnorm
    return U, V, radius, gnorm


class RiemannianSVD(Optimizer):
    """Riemannian trust region (truncated CG on the Hessian) on the Brockett cost; no learning rate.

    Serves a problem that declares :class:`~gdla.SingularValueDecomposition`. It starts from the
    problem's factors (orthonormalised), and after every step writes ``U``, ``σ = diag(UᵀMV)``
    and ``V`` back through the declaration's ``store``.

    Options:
        inner_iterations: most truncated-CG iterations per step (default: the tangent space's dimension).
    """

    name = "riemannian-svd"
    summary = "SVD by a Riemannian trust region (truncated CG on the Hessian) on Brockett's cost over Stiefel pairs"
    default_lr = None
    default_max_steps = 500
    options = {
        "inner_iterations": Option(optional_count, None, "truncated-CG iterations per trust-region step")
    }
    kernel_free = "works on the declared matrix with plain tensor algebra (no fused kernel)"
    state_attributes = ("_radius", "_count")

    def __init__(self, problem: Problem, params: Params, **options: Any) -> None:
        super().__init__(problem, params, **options)
        form = problem.singular_value_decomposition()
        assert form is not None  # unsupported_reason() refused the problem otherwise
        self.form: SingularValueDecomposition = form
        m, n = form.matrix.shape
        k = form.rank
        dimension = (m + n) * k - k * (k + 1)
        inner = self.options["inner_iterations"]
        self.inner_iterations = max(dimension, 1) if inner is None else inner
        self.max_radius = math.pi * math.sqrt(2 * k)
        self._radius = self.max_radius / 8
        self._count = 0

    @classmethod
    def unsupported_reason(cls, problem: Problem) -> str | None:
        if problem.singular_value_decomposition() is None:
            return (
                "it needs the problem to declare the matrix whose singular triples it seeks "
                "(Problem.singular_value_decomposition()); use 'lbfgs' or 'adam'"
            )
        return None

    @classmethod
    def suitability(cls, problem: Problem) -> Suitability | None:
        if problem.singular_value_decomposition() is None:
            return None
        return Suitability(
            40, "singular value decomposition: Riemannian trust region on orthonormal U, V (quadratic convergence)"
        )

    def step(self) -> torch.Tensor:
        loss = self.problem.loss(self.params).detach()
        M = self.form.matrix
        U, V = (orthonormal(X.detach()) for X in self.form.load(self.params))
        U, V, self._radius, _ = brockett_trust_region_step(
            M, U, V, self._radius, self.max_radius, self.inner_iterations
        )
        sigma = (U * (M @ V)).sum(0)
        # a pair with uᵀMv < 0 is the same triple with v negated (never at the Brockett minimum)
        signs = torch.where(sigma < 0, -1.0, 1.0).to(V.dtype)
        self.form.store(self.params, U, sigma.abs(), V * signs)
        self._count += 1
        return loss

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lr": None, "inner_iterations": self.inner_iterations}


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(RiemannianSVD)
