r"""What a problem can declare about its structure, so that optimizers choose by capability, not by name.

A problem offers a capability by overriding the matching :class:`~gdla.Problem` method to return
one of the descriptions below (the default returns ``None``: "not offered"). Optimizers ask for
the capability they need and never read a problem's private attributes or its name.

===========================  ==============================  =============================================
``Problem`` method           returns                         unlocks
===========================  ==============================  =============================================
``least_squares()``          :class:`LinearLeastSquares`     ``cg`` (CGLS), ``line-search``, ``heavy-ball``
``sum_of_squares()``         :class:`SumOfSquares`           Gauss-Newton / Levenberg-Marquardt methods
``matrix_inverse()``         :class:`MatrixInverse`          ``newton-schulz``
``fused_reason()``           ``None`` or why not             ``backend="fused"`` for gradient methods
``fused_loss()``             :class:`InverseMSE`,            whole-run kernels (``momentum``, ``adam``,
                             :class:`SvdPenaltyLoss`,        ``sgd``: many steps a call)
                             :class:`MaskedOperatorLoss`
``update_masks()``           0/1 masks                       the fused masked momentum step
``quadratic``                ``True``/``False``/``None``     Hessian-based step estimates
                                                             (and ``cg`` for ``auto``, the loss in one tensor)
===========================  ==============================  =============================================

``singular_value_decomposition()`` returns a :class:`SingularValueDecomposition` and unlocks
``riemannian-svd``.

Every description states its math in terms of tensors shaped like the parameters, so the same
optimizer serves a built-in and a third-party problem. :class:`gdla.testing.ProblemContract`
checks that a declared description reproduces the problem's own loss and gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gdla.errors import InputError

__all__ = [
    "InverseMSE",
    "LinearLeastSquares",
    "MaskedOperatorLoss",
    "MatrixInverse",
    "SingularValueDecomposition",
    "SumOfSquares",
    "SvdPenaltyLoss",
    "by_side",
    "squared_norm",
]

TensorMap = Callable[[torch.Tensor], torch.Tensor]


def squared_norm(r: torch.Tensor) -> torch.Tensor:
    """``‖r‖²`` summed over every entry: the default loss of a residual."""
    return r.square().sum()


@dataclass(frozen=True)
class LinearLeastSquares:
    r"""The problem's loss is a function of ``r(x) = J x − b`` that is minimal where ``JᵀJ x = Jᵀ b``.

    ``x`` is the parameter tensor ``params[key]`` (the problem's only unknown); ``J`` is linear
    and applied, never formed, to tensors shaped like ``x``. Shapes: ``apply`` maps ``x``-shaped
    tensors to ``rhs``-shaped ones, ``adjoint`` back.

    Attributes:
        key: name of the parameter tensor ``x``.
        apply: ``d ↦ J d``.
        adjoint: ``r ↦ Jᵀ r`` (exactly the adjoint of ``apply``: ``⟨J d, r⟩ = ⟨d, Jᵀ r⟩``).
        rhs: ``b``.
        loss_of: the problem's loss as a function of ``r`` (default :func:`squared_norm`); it
            must be an increasing function of ``‖r‖²`` per independent block, so the minimiser
            is the least-squares one.
        block_dims: dimensions of ``x`` that make up one independent least-squares problem
            (a column of ``M`` is ``(-2,)``); ``None``: ``x`` is one problem.
        block_name: what a block is, for reports ("column", "row", "matrix").
        distinct_blocks: how many different block operators there are (``None``: one per block);
            a global CG terminates within this many times the block size.
        gram_factor: a (batched) matrix ``F`` such that each block's ``JᵀJ`` spectrum lies inside
            that of ``FᵀF`` (for step estimates); ``None``: estimated by Lanczos on ``JᵀJ``.
        block_index: for a 1-D ``x`` whose blocks are not a tensor dimension (values stored on a
            sparse pattern): the block of every entry, integers ``0..B−1``; overrides ``block_dims``.
        gram_exact: every block's ``JᵀJ`` *is* ``FᵀF`` (``F`` = ``gram_factor``), not only inside
            its spectrum; then the loss's largest curvature follows from ``F`` alone.
        loss_curvature: ``c`` where ``loss_of(r) = c/2 · ‖r‖²`` (a scaled sum of squares: the mean
            of ``N`` squares has ``c = 2/N``), so the loss's Hessian is ``c JᵀJ`` and its largest
            eigenvalue follows from ``gram_factor`` without touching ``x``; ``None``: ``loss_of``
            is not of that form (unless it is the default :func:`squared_norm`, ``c = 2``).
    """

    key: str
    apply: TensorMap
    adjoint: TensorMap
    rhs: torch.Tensor
    loss_of: TensorMap = squared_norm
    block_dims: tuple[int, ...] | None = None
    block_name: str = "global"
    distinct_blocks: int | None = None
    gram_factor: torch.Tensor | None = field(default=None, repr=False)
    block_index: torch.Tensor | None = field(default=None, repr=False)
    gram_exact: bool = False
    loss_curvature: float | None = None

    def hessian_scale(self) -> float | None:
        """``c`` of :attr:`loss_curvature` (2 for the default :func:`squared_norm`), or ``None`` if not declared."""
        if self.loss_curvature is not None:
            return self.loss_curvature
        return 2.0 if self.loss_of is squared_norm else None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``J x − b``."""
        return self.apply(x) - self.rhs

    def gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, Jᵀ(J x − b))``: the loss and the normal-equations residual (unscaled gradient)."""
        r = self.residual(x)
        return self.loss_of(r), self.adjoint(r)

    def gram(self, d: torch.Tensor) -> torch.Tensor:
        """``JᵀJ d``, so that ``gradient(x + d)[1] = gradient(x)[1] + gram(d)``."""
        return self.adjoint(self.apply(d))

    def block_size(self, x: torch.Tensor) -> int:
        """Unknowns in one independent block of ``x`` (the largest block's, for ``block_index``)."""
        if self.block_index is not None:
            return int(torch.bincount(self.block_index).max()) if self.block_index.numel() else 0
        if self.block_dims is None:
            return x.numel()
        return math.prod(x.shape[dim] for dim in self.block_dims)


@dataclass(frozen=True)
class SumOfSquares:
    r"""The loss is ``loss_of(r(params))`` with ``r`` a differentiable residual and ``loss_of`` increasing in ``‖r‖²``.

    Gauss-Newton methods linearise ``r`` (Jacobian-vector products through ``torch.func``) and
    minimise ``‖r‖²``; with the default ``loss_of`` the problem's loss *is* ``‖r‖²``.

    Attributes:
        residuals: ``params ↦ r``, any shape, differentiable in every parameter that matters.
        loss_of: the problem's loss from ``r`` (default :func:`squared_norm`).
        gram: ``params ↦ J Jᵀ``, the residuals' Gram matrix, shape ``(m, m)`` for ``m = r.numel()``
            (``r`` flattened in row-major order, ``J = ∂r/∂θ`` over every floating parameter flattened in
            the dict's order), computed without forming ``J``; ``None``: not offered. With fewer residuals
            than unknowns it lets a Gauss-Newton method solve its damped system in residual space
            (``levenberg-marquardt``'s ``gram`` path) for the cost of an ``m × m`` Cholesky factor per solve.
    """

    residuals: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    loss_of: TensorMap = squared_norm
    gram: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None


def by_side(side: str, right: Callable[[], torch.Tensor], left: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The side switch of an inverse problem, written once: ``right()`` for ``side="right"``, ``left()`` for
    ``"left"``, their average for ``"both"`` (a product ``P = AM``, ``MA``, ``(AM + MA)/2`` or its adjoint)."""
    if side == "right":
        return right()
    if side == "left":
        return left()
    return (right() + left()) / 2


@dataclass(frozen=True)
class MatrixInverse:
    r"""The answer is the inverse (or Moore-Penrose pseudo-inverse) of ``A``, held in ``params[key]``.

    ``A`` has shape ``(..., m, n)`` (leading dimensions: independent problems) and the unknown
    ``(..., n, m)``. ``side`` names the equation the problem's residual measures: ``"right"``
    (``A X = I``), ``"left"`` (``X A = I``) or ``"both"``.

    ``measured = True`` declares more: the problem's loss is ``Σ_b mean((P_b − I)²)`` and its
    :meth:`~gdla.Problem.residual` the largest ``‖P_b − I‖_F / √k`` over the batch (up to rounding), so a method
    may evaluate both itself, inside a whole-run kernel (Newton-Schulz's), instead of asking the problem each step.
    """

    A: torch.Tensor
    side: str = "right"
    pseudo: bool = False
    key: str = "M"
    measured: bool = False

    def product(self, X: torch.Tensor) -> torch.Tensor:
        """``P(X)``: ``A X``, ``X A`` or their average, the product compared with the identity."""
        return by_side(self.side, lambda: self.A @ X, lambda: X @ self.A)

    def adjoint(self, R: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`product`'s linear map applied to ``R``."""
        return by_side(self.side, lambda: self.A.mT @ R, lambda: R @ self.A.mT)

    @property
    def identity_size(self) -> int:
        """Size ``k`` of the identity ``P(X)`` is compared with."""
        return self.A.shape[-1] if self.side == "left" else self.A.shape[-2]

    def safe_start(self) -> torch.Tensor:
        r"""``Aᵀ / (‖A‖₁ ‖A‖_∞)``: a start from which the Newton-Schulz iteration converges.

        ``‖A‖₂² ≤ ‖A‖₁‖A‖_∞`` puts every eigenvalue of ``A X₀`` in ``(0, 1]``. The two norms are
        divided one at a time so their product, never formed, cannot overflow or underflow (float32
        matrices of size 1e19 or 1e-19 start as well as any). A zero matrix, which has no inverse,
        gets a zero start; the iteration stays there and reports it not converged. The one Python
        home of the rule (every Python caller uses it); its C++ twin is ``csrc/small_safe_start.h``.
        """
        A = self.A
        magnitude = A.abs()
        norm_1 = magnitude.sum(-2).amax(-1)  # largest column sum (matrix_norm(ord=1) is slower on batches)
        norm_inf = magnitude.sum(-1).amax(-1)  # largest row sum
        one = torch.ones_like(norm_1)
        norm_1 = torch.where(norm_1 > 0, norm_1, one)[..., None, None]
        norm_inf = torch.where(norm_inf > 0, norm_inf, one)[..., None, None]
        return (A.mT / norm_1) / norm_inf


@dataclass(frozen=True)
class InverseMSE:
    r"""The loss is exactly ``gdla.ops.inverse_mse(A, params[key], side)``: ``Σ_b mean((P_b − I)²)``.

    Declaring it lets an optimizer with a whole-run kernel for this loss (``momentum``: the
    extension's ``inverse_momentum_run``) run many steps in one call under ``backend="fused"``.

    ``residual_factor`` ``c``, where given, declares more: the problem's
    :meth:`~gdla.Problem.residual` is ``√(c · loss)`` at any parameters (one matrix with ``P = I``
    attainable: ``‖P − I‖_F / √k = √(k · mean((P − I)²))``, so ``c = k``). The residual after a
    step is then the next step's loss, which a whole-run kernel computes anyway, and a run with a
    tolerance goes in bulk, testing it after every step as the loop would.
    """

    A: torch.Tensor
    side: str = "right"
    key: str = "M"
    residual_factor: float | None = None

    def residuals(self, losses: torch.Tensor) -> torch.Tensor:
        """The residual at each iterate whose loss is given: ``√(c · loss)``, float64 on the CPU."""
        if self.residual_factor is None:
            raise InputError("residual_factor: InverseMSE.residuals needs a declared factor, received None")
        return torch.from_numpy(_residual_of(self.residual_factor, losses.detach().cpu().double().numpy()))

    def loss_tolerance(self, tol: float) -> float:
        """The largest loss whose residual (:meth:`residuals`) is ``<= tol``: the same test made on the loss.

        The residual is monotone in the loss, so ``loss <= loss_tolerance(tol)`` holds exactly when
        ``√(c · loss) <= tol`` does, bit for bit (found by stepping one float at a time from ``tol² / c``).
        """
        c = self.residual_factor
        if c is None:
            raise InputError("residual_factor: InverseMSE.loss_tolerance needs a declared factor, received None")
        if not tol > 0:
            return 0.0 if tol == 0 else -1.0
        loss = tol * tol / c
        while loss > 0 and _residual_of(c, loss) > tol:
            loss = math.nextafter(loss, 0.0)
        while _residual_of(c, math.nextafter(loss, math.inf)) <= tol:
            loss = math.nextafter(loss, math.inf)
        return loss


def _residual_of(factor: float, losses: Any) -> Any:
    """``√(factor · loss)`` in float64, one evaluation shared by the stop test and the tolerance it is turned into."""
    return np.sqrt(np.float64(factor) * np.asarray(losses, dtype=np.float64))


@dataclass(frozen=True)
class SvdPenaltyLoss:
    r"""The loss is exactly ``gdla.ops.svd_loss(M, U, s, V, weight_u, weight_v)`` and the projection is the sign fix.

    That is ``mean((U diag(s²) Vᵀ − M)²) + weight_u mean((UᵀU − I)²) + weight_v mean((VᵀV − I)²)``
    over ``params[keys[0]]``, ``params[keys[1]]``, ``params[keys[2]]`` (``U``, ``s``, ``V``), and
    :meth:`~gdla.Problem.project` flips ``V[:, i]`` where ``u_iᵀ(M − Σ_{j≠i} s_j² u_j v_jᵀ) v_i < 0``
    and does nothing else. Declaring it lets ``sgd`` run many steps, projection included, in one
    call of ``gdla.ops.svd_sgd_run`` under ``backend="fused"``.
    """

    M: torch.Tensor
    weight_u: float
    weight_v: float
    keys: tuple[str, str, str] = ("U", "s", "V")


@dataclass(frozen=True)
class MaskedOperatorLoss:
    r"""The loss is the seed notebook's masked operator fit, over ``params[key]`` = ``U`` (``n × n``).

    ``S = init + omega ⊙ U``; ``Ŷ`` applies ``S`` then ``activation`` (``None``: linear) ``hops``
    times to ``X``; the loss is ``‖Y − Ŷ‖_F`` (``loss="frobenius"``) or ``mean((Y − Ŷ)²)``
    (``"mse"``). Declaring it lets ``sgd`` run many steps in one call of
    ``gdla.ops.masked_sgd_run`` under ``backend="fused"``.
    """

    init: torch.Tensor
    omega: torch.Tensor
    X: torch.Tensor
    Y: torch.Tensor
    hops: int = 1
    activation: str | None = None
    loss: str = "frobenius"
    key: str = "U"


@dataclass(frozen=True)
class SingularValueDecomposition:
    r"""The answer is the top-``rank`` singular triples of ``matrix``: ``M V = U Σ``, ``Mᵀ U = V Σ``.

    Declaring it lets a method that works on the orthonormal factors themselves (``riemannian-svd``:
    a trust region on the Stiefel manifolds) solve the problem; the problem keeps its own
    parameterisation, read and written through ``load`` and ``store``.

    Attributes:
        matrix: ``M``, shape ``(m, n)``.
        rank: ``k``, the number of leading triples sought (``1 <= k <= min(m, n)``).
        load: ``params ↦ (U, V)``, the current factors, shapes ``(m, k)`` and ``(n, k)`` (a method
            orthonormalises them before use).
        store: ``(params, U, sigma, V) ↦ None``: write orthonormal ``U``, ``V`` and the singular
            values ``sigma >= 0`` (shape ``(k,)``, in the columns' order) into ``params`` in place.
        params_of: ``(U, sigma, V) ↦ params`` out of place, differentiable (what ``store`` writes), or
            ``None``; declared, an implicit backward (``gdla.solve(..., backward=...)``) uses the SVD's
            known adjoint (:func:`gdla.adjoints.svd_adjoint`) instead of CG on the loss's Hessian.
    """

    matrix: torch.Tensor
    rank: int
    load: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
    store: Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor], None]
    params_of: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]] | None = None
