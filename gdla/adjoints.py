r"""The formulas of the implicit backward (:mod:`gdla.differentiation`): adjoint solves and known adjoints.

* :func:`conjugate_gradients`: ``x`` with ``apply(x) = rhs`` for a symmetric positive (semi-)definite
  ``apply``, per independent block, from zero (on a singular system whose right-hand side lies in its
  range: the minimum-norm solution).
* :func:`gauss_newton`: the product with :math:`J^T \nabla^2\ell(r) J` of a declared sum of squares
  :math:`\ell(r(p))`, the Hessian itself where the residual is zero.
* :func:`pinv_adjoint`, :func:`svd_adjoint`: the backward formulas of ``torch.linalg.pinv`` and
  ``torch.linalg.svd``, applied at the answer gdla returned.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["block_dot", "conjugate_gradients", "gauss_newton", "pinv_adjoint", "svd_adjoint", "weighted"]

Tensors = list[torch.Tensor]


def weighted(outputs: Tensors | tuple[torch.Tensor, ...], weights: Tensors) -> torch.Tensor:
    """``Σ ⟨output, weight⟩``: its gradient is the vector-Jacobian product (a scalar: ``autograd.grad`` with
    ``grad_outputs`` imports torch's symbolic-shape machinery, seconds on a first call)."""
    return sum((out * weight.detach()).sum() for out, weight in zip(outputs, weights, strict=True))  # type: ignore[return-value]


def block_dot(dims: tuple[int, ...] | None) -> Callable[[Tensors, Tensors], torch.Tensor]:
    """Inner products per block of ``dims`` of one tensor (``None``: one product over everything)."""

    def dot(a: Tensors, b: Tensors) -> torch.Tensor:
        if dims is None:
            return sum((ai * bi).sum() for ai, bi in zip(a, b, strict=True))  # type: ignore[return-value]
        return (a[0] * b[0]).sum(dim=dims, keepdim=True)

    return dot


def conjugate_gradients(
    apply: Callable[[Tensors], Tensors],
    rhs: Tensors,
    dot: Callable[[Tensors, Tensors], torch.Tensor],
    *,
    rtol: float,
    max_steps: int,
) -> tuple[Tensors, bool]:
    """``x`` with ``apply(x) ≈ rhs`` for a symmetric positive (semi-)definite ``apply``, from ``x = 0``.

    ``dot`` returns one inner product per independent block, shaped to broadcast against the tensors
    (a scalar for one system), so every block runs its own CG. Stops when each block's residual is
    ``<= rtol`` times its right-hand side's norm. Returns ``(x, converged)``.
    """
    x = [torch.zeros_like(b) for b in rhs]
    r = [b.clone() for b in rhs]
    p = [b.clone() for b in rhs]
    rr = dot(r, r)
    goal = (rtol * rtol) * rr
    tiny = torch.finfo(rr.dtype).tiny
    for _ in range(max_steps):
        if bool((rr <= goal).all()):
            return x, True
        q = apply(p)
        curvature = dot(p, q)
        usable = curvature > tiny  # a finished block (or no curvature along p) takes no step
        alpha = torch.where(usable, rr / torch.where(usable, curvature, torch.ones_like(curvature)), 0.0)
        x = [xi + alpha * pi for xi, pi in zip(x, p, strict=True)]
        r = [ri - alpha * qi for ri, qi in zip(r, q, strict=True)]
        new = dot(r, r)
        beta = torch.where(rr > tiny, new / torch.where(rr > tiny, rr, torch.ones_like(rr)), 0.0)
        p = [ri + beta * pi for ri, pi in zip(r, p, strict=True)]
        rr = new
    return x, bool((rr <= goal).all())


def gauss_newton(
    residuals: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor], inputs: Tensors
) -> Callable[[Tensors], Tensors]:
    r"""``u ↦ Jᵀ ∇²ℓ(r) J u`` for the residual ``r`` (computed from ``inputs`` with a graph) and the loss ``ℓ``.

    The Hessian of :math:`\ell(r(p))` less :math:`\sum_i \partial_i\ell(r)\,\nabla^2 r_i`, which vanishes where
    :math:`\nabla\ell(r) = 0` (a zero residual of :math:`\ell = c\|r\|^2 + \text{const}`): there it is the
    Hessian, positive semi-definite even where the parameters are not unique. ``J u`` by the double
    vector-Jacobian product (``Jᵀ w`` differentiated in ``w``), ``∇²ℓ(r)`` by autograd on ``loss_of``.
    """
    probe = torch.zeros_like(residuals, requires_grad=True)
    transposed = torch.autograd.grad((residuals * probe).sum(), inputs, create_graph=True, allow_unused=True)
    point = residuals.detach().requires_grad_(True)
    slope = torch.autograd.grad(loss_of(point), point, create_graph=True)[0]

    def apply(u: Tensors) -> Tensors:
        pairs = [(t, ui) for t, ui in zip(transposed, u, strict=True) if t is not None]
        if not pairs:
            return [torch.zeros_like(ui) for ui in u]
        (ju,) = torch.autograd.grad(weighted([t for t, _ in pairs], [ui for _, ui in pairs]), probe, retain_graph=True)
        if slope.grad_fn is None:  # ℓ linear in r: no curvature
            return [torch.zeros_like(ui) for ui in u]
        (curved,) = torch.autograd.grad(weighted([slope], [ju]), point, retain_graph=True)
        out = torch.autograd.grad(weighted([residuals], [curved]), inputs, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(ui) if o is None else o for o, ui in zip(out, u, strict=True)]

    return apply


def pinv_adjoint(grad: torch.Tensor, X: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """The gradient with respect to ``A`` of ``X = A⁺`` (``A⁻¹`` when invertible), at the returned ``X``.

    ``torch.linalg.pinv``'s backward formula (constant rank); for an invertible ``A`` it is ``−Xᵀ Ḡ Xᵀ``.
    Shapes: ``grad`` and ``X`` ``(..., n, m)``, ``A`` ``(..., m, n)``.
    """
    m, n = A.shape[-2], A.shape[-1]
    Xh, Gh = X.mT, grad.mT
    if m <= n:
        K = Gh @ X
        KXh = K @ Xh
        return -(X @ K).mT + KXh - (A @ X) @ KXh + (Xh @ X) @ (Gh - K @ A)
    K = X @ Gh
    XhK = Xh @ K
    return -(K @ X).mT + XhK - XhK @ X @ A + (Gh - A @ K) @ X @ Xh


def svd_adjoint(
    grad_u: torch.Tensor | None,
    grad_s: torch.Tensor | None,
    grad_v: torch.Tensor | None,
    U: torch.Tensor,
    S: torch.Tensor,
    V: torch.Tensor,
) -> torch.Tensor:
    r"""The gradient with respect to ``M`` of its thin SVD ``M = U diag(S) Vᵀ``, at the given factors.

    ``torch.linalg.svd``'s backward formula (``svd_backward``, with ``V`` for ``Vᴴ``), for real
    factors with ``k = min(m, n)`` columns; ``None`` where no gradient reaches a factor. As torch
    documents: the gradient is defined when the loss does not depend on the columns' signs (for a real
    SVD the only gauge); the terms of ``grad_u`` and ``grad_v`` divide by :math:`\sigma_j^2 - \sigma_i^2`,
    so repeated singular values give ``inf``/``NaN`` and near-equal ones an ill-conditioned gradient,
    while ``grad_s`` alone (``U diag(grad_s) Vᵀ``) is always finite. Shapes: ``U`` ``(..., m, k)``,
    ``S`` ``(..., k)``, ``V`` ``(..., n, k)``.
    """
    if grad_u is None and grad_v is None:
        return (U * (torch.zeros_like(S) if grad_s is None else grad_s).unsqueeze(-2)) @ V.mT
    m, n = U.shape[-2], V.shape[-2]
    squares = S * S
    gaps = squares.unsqueeze(-2) - squares.unsqueeze(-1)
    gaps.diagonal(dim1=-2, dim2=-1).fill_(1)  # any non-zero: the diagonal of the numerators is zero

    def skew(X: torch.Tensor) -> torch.Tensor:
        return X - X.mT

    if grad_u is not None and grad_v is not None:
        inner = (skew(U.mT @ grad_u) * S.unsqueeze(-2) + S.unsqueeze(-1) * skew(V.mT @ grad_v)) / gaps
    elif grad_u is not None:
        inner = skew(U.mT @ grad_u) * (S.unsqueeze(-2) / gaps)
    else:
        inner = S.unsqueeze(-1) * (skew(V.mT @ grad_v) / gaps)  # type: ignore[union-attr]
    if grad_s is not None:
        inner = inner + torch.diag_embed(grad_s)
    if m > n and grad_u is not None:  # U's orthogonal complement: (I − U Uᵀ) grad_u S⁻¹
        scaled = grad_u / S.unsqueeze(-2)
        return (U @ inner + scaled - U @ (U.mT @ scaled)) @ V.mT
    if m < n and grad_v is not None:  # V's: S⁻¹ grad_vᵀ (I − V Vᵀ)
        scaled = grad_v.mT / S.unsqueeze(-1)
        return U @ (inner @ V.mT + scaled - (scaled @ V) @ V.mT)
    return U @ inner @ V.mT
