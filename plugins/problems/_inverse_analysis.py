"""The ``inverse`` problem's set-up analysis: which side is attainable, singularity, the least-norm projector.

:class:`InverseFacts` holds it for one problem. A large square matrix (or a large batch) without ``pseudo`` is
screened at construction by a pivoted LU factorisation and 1-norm estimates of ``A⁻¹`` (:func:`screen`: about
one matrix product); only where the screen cannot vouch for the matrix, and otherwise when a figure that needs
them is asked for (the exact condition number, the largest singular value), are the singular values computed
(:func:`analyse`, once, cached). :func:`check_side` refuses a side whose equation no matrix of the given shape can
satisfy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from gdla.errors import ShapeError, SingularMatrixError
from gdla.scaling import scale_by_power_of_two
from gdla_plugins.problems._common import batch_index, condition_numbers, numerically_singular_threshold

__all__ = ["InverseAnalysis", "InverseFacts", "analyse", "check_side", "inverse_norm_estimate", "screen"]

#: Matrices of at least this many entries in all (a large matrix, or a large batch of small ones) are screened
#: (:func:`screen`); below it the exact analysis costs microseconds and runs at once.
SCREEN_MIN_ENTRIES = 4096
#: Hager's iterations in one norm estimate (each a pair of triangular solves with the LU factors).
ESTIMATE_STEPS = 2
#: How far the screen lets a norm estimate fall short of the true norm: a matrix passes only if its condition
#: number would stay clear of the limits even were ``‖A⁻¹‖`` this many times its estimate.
ESTIMATE_SLACK = 10.0


@dataclass(frozen=True)
class InverseAnalysis:
    """What the singular values of ``A`` say about its inverse problem.

    Attributes:
        sigma_max: the largest singular value of each matrix.  # shape: batch
        cond: ``σ_max / σ_min`` of each matrix (``inf`` if singular).  # shape: batch
        attainable: where ``P = I_k`` can hold exactly (``rank(A) == k``).  # shape: batch
        projector: onto the subspace holding the pseudo-inverse, where ``M`` is not unique; else ``None``.
    """

    sigma_max: torch.Tensor
    cond: torch.Tensor
    attainable: torch.Tensor
    projector: torch.Tensor | None


@dataclass(frozen=True)
class Bounds:
    """What :func:`screen` learnt of an invertible ``A``, per matrix (shape: batch).

    ``σ_max`` lies in ``[sigma_low, sigma_high]`` (from ``‖A‖₁`` and ``‖A‖_∞``: exact bounds) and the
    2-norm condition number in ``[cond_low, cond_high]`` (from the estimates of ``‖A⁻¹‖₁`` and
    ``‖A⁻¹‖_∞``, which never exceed the true norms; ``cond_high`` allows them :data:`ESTIMATE_SLACK`).
    """

    sigma_low: torch.Tensor
    sigma_high: torch.Tensor
    cond_low: torch.Tensor
    cond_high: torch.Tensor


def analyse(A: torch.Tensor, side: str, pseudo: bool, k: int) -> InverseAnalysis:
    """Singular values, the singularity check, and the projector onto the least-norm subspace.

    Args:
        A: the matrix or batch as a plain tensor (gathered on every rank for a DTensor problem).
        side: ``"right"``, ``"left"`` or ``"both"``.
        pseudo: whether a rank-deficient ``A`` is allowed (its pseudo-inverse is the answer).
        k: size of the identity the product is compared with.

    Raises:
        SingularMatrixError: a numerically singular member without ``pseudo`` (or with ``side="both"``).
    """
    m, n = A.shape[-2], A.shape[-1]
    batch_shape = A.shape[:-2]
    sigma = torch.linalg.svdvals(A)  # shape: (..., min(m, n)), descending
    cond = condition_numbers(sigma)
    # the rank as torch.linalg.pinv decides it, so the reference and the projector agree
    cutoff = sigma[..., :1] * max(m, n) * torch.finfo(A.dtype).eps
    rank = (sigma > cutoff).sum(dim=-1)
    limit = numerically_singular_threshold(A.dtype)
    bad = ~(cond <= limit)  # also catches inf and NaN
    if bool(bad.any()) and (not pseudo or side == "both"):
        flat = int(bad.flatten().nonzero()[0])
        where = f" at batch index {batch_index(flat, batch_shape)}" if batch_shape else ""
        expected, what = (
            ("an invertible matrix", "singular") if m == n else (f"a matrix of full rank {min(m, n)}", "rank-deficient")
        )
        detail = f"condition number {float(cond.flatten()[flat]):.3g} > {limit:.3g}, the limit for {A.dtype}"
        if side == "both":
            raise SingularMatrixError(
                f"A: side='both' expected an invertible matrix, received a numerically singular one{where} "
                f"({detail}); for a singular A the minimiser of the averaged product is not the "
                "pseudo-inverse: use side='right' or side='left' with pseudo=True"
            )
        raise SingularMatrixError(
            f"A: expected {expected}, received a {what} or numerically {what} one{where} ({detail}); "
            "it has no inverse: pass pseudo=True (on the command line: -p pseudo=true) "
            "for the Moore-Penrose pseudo-inverse"
        )
    # M's solution set is an affine space when A has a null space on the optimised side;
    # the pseudo-inverse is its least-norm point, in the row space of A (right) or column space (left)
    null_space = rank < (n if side == "right" else m)
    projector = None
    if side != "both" and bool(null_space.any()):
        u, s, vh = torch.linalg.svd(A, full_matrices=False)
        keep = (s > cutoff).to(A.dtype)
        if side == "right":
            projector = (vh.mT * keep.unsqueeze(-2)) @ vh  # shape: (..., n, n)
        else:
            projector = (u * keep.unsqueeze(-2)) @ u.mT  # shape: (..., m, m)
    # the exact equation P = I_k is attainable only where rank(A) == k
    return InverseAnalysis(sigma_max=sigma[..., 0], cond=cond, attainable=rank == k, projector=projector)


def inverse_norm_estimate(LU: torch.Tensor, pivots: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """A lower estimate of ``‖A⁻¹‖₁`` (``‖A⁻¹‖_∞ = ‖A⁻ᵀ‖₁`` with ``transposed``) from ``A``'s LU factors, per matrix.

    Hager's method (Higham's form, as LAPACK's ``xLACON``, :data:`ESTIMATE_STEPS` iterations) with Higham's extra
    alternating vector, each estimate ``‖A⁻¹x‖₁`` with ``‖x‖₁ = 1``: it never exceeds the true norm and is
    usually within a factor 3 of it. A few pairs of triangular solves, O(n²) each.
    """
    n = LU.shape[-1]

    def solve(x: torch.Tensor, adjoint: bool) -> torch.Tensor:
        return torch.linalg.lu_solve(LU, pivots, x, adjoint=adjoint)

    x = torch.full((*LU.shape[:-1], 1), 1.0 / n, dtype=LU.dtype, device=LU.device)
    estimate = torch.zeros(LU.shape[:-2], dtype=LU.dtype, device=LU.device)
    for step in range(ESTIMATE_STEPS):
        y = solve(x, transposed)
        estimate = torch.maximum(estimate, y.abs().sum(dim=(-2, -1)))
        if step == ESTIMATE_STEPS - 1:
            break
        z = solve(torch.where(y >= 0, 1.0, -1.0).to(LU.dtype), not transposed)
        x = torch.zeros_like(x).scatter_(-2, z.abs().argmax(dim=-2, keepdim=True), 1.0)  # the steepest column
    signs = torch.where(torch.arange(n, device=LU.device) % 2 == 0, 1.0, -1.0)
    alternating = (signs * (1 + torch.arange(n, device=LU.device) / max(n - 1, 1))).to(LU.dtype)
    y = solve(alternating.expand(*LU.shape[:-1]).unsqueeze(-1), transposed)
    return torch.maximum(estimate, 2 * y.abs().sum(dim=(-2, -1)) / (3 * n))


def screen(A: torch.Tensor, pseudo: bool) -> Bounds | None:
    """Vouch for a large square ``A`` without its singular values: :class:`Bounds`, or ``None`` where it cannot.

    A pivoted LU factorisation (``info``: an exact zero pivot) and the 1-norm estimates of ``A⁻¹`` and ``A⁻ᵀ``
    bound the 2-norm condition number from above (``κ₂ ≤ √(‖A‖₁‖A‖_∞ ‖A⁻¹‖₁‖A⁻¹‖_∞)``, the inverse's norms
    taken at :data:`ESTIMATE_SLACK` times their estimates). The matrix passes when that bound lies below both
    limits the exact analysis applies: the singularity limit of the dtype
    (:func:`~gdla_plugins.problems._common.numerically_singular_threshold`) and ``1 / (n ε)``, above which
    ``torch.linalg.pinv`` would call it rank-deficient. Everything else (a singular matrix, an ill-conditioned
    one, ``pseudo``, a rectangular or small ``A``) is ``None``: the exact analysis decides, with its message.
    """
    n = A.shape[-1]
    if (
        pseudo
        or A.shape[-2] != n
        or A.numel() < SCREEN_MIN_ENTRIES
        or A.dtype not in (torch.float32, torch.float64)
        or A.device.type not in ("cpu", "cuda")
    ):
        return None
    LU, pivots, info = torch.linalg.lu_factor_ex(A)
    if bool((info != 0).any()):
        return None
    column, row = A.abs().sum(dim=-2).amax(dim=-1), A.abs().sum(dim=-1).amax(dim=-1)  # ‖A‖₁, ‖A‖_∞
    inverse_column, inverse_row = inverse_norm_estimate(LU, pivots), inverse_norm_estimate(LU, pivots, True)
    root_n = math.sqrt(n)
    sigma_low, sigma_high = torch.maximum(column, row) / root_n, (column * row).sqrt()
    cond_low = torch.clamp(sigma_low * torch.maximum(inverse_column, inverse_row) / root_n, min=1.0)
    cond_high = sigma_high * (inverse_column * inverse_row).sqrt() * ESTIMATE_SLACK
    limit = min(numerically_singular_threshold(A.dtype), 1.0 / (n * torch.finfo(A.dtype).eps))
    if not bool((cond_high < limit).all()):  # also NaN and inf
        return None
    return Bounds(sigma_low=sigma_low, sigma_high=sigma_high, cond_low=cond_low, cond_high=cond_high)


class InverseFacts:
    """What an ``inverse`` problem knows of ``A``: the screen's verdict at construction, the exact analysis on demand.

    :attr:`attainable` and :attr:`projector` are known at construction (the screen passes only matrices whose
    exact analysis would give ``attainable`` everywhere and no projector); :attr:`sigma_max` and :attr:`cond`
    are exact, computed by :func:`analyse` when first read and kept. :meth:`scaled` gives the facts of
    ``2^e · A``, sharing that cache (singular values scale exactly).

    Args:
        A: the plain matrix or batch (gathered for a DTensor problem).
        side, pseudo, k: as for :func:`analyse`.
        lazy: whether the exact analysis may wait (``False``: now, and ``A`` is not kept).

    Raises:
        SingularMatrixError: as :func:`analyse`, at construction.
    """

    def __init__(self, A: torch.Tensor, side: str, pseudo: bool, k: int, *, lazy: bool = True) -> None:
        self._arguments = (A, side, pseudo, k)
        self._exponent = 0
        #: ``{"exact": InverseAnalysis, "bounds": Bounds}`` as known, for ``A`` unscaled (shared by scaled facts).
        self._known: dict[str, Any] = {}
        bounds = screen(A, pseudo) if lazy else None
        if bounds is None:
            exact = self._exact()
            self.attainable, self.projector = exact.attainable, exact.projector
            if not lazy:
                self._arguments = (None, side, pseudo, k)
        else:
            self._known["bounds"] = bounds
            self.attainable = torch.ones(A.shape[:-2], dtype=torch.bool, device=A.device)
            self.projector: torch.Tensor | None = None

    def _exact(self) -> InverseAnalysis:
        """:func:`analyse` of the unscaled ``A``, computed once."""
        exact = self._known.get("exact")
        if exact is None:
            exact = self._known["exact"] = analyse(*self._arguments)
        return exact

    @property
    def exact(self) -> bool:
        """Whether the singular values are known (computed at construction or since)."""
        return "exact" in self._known

    @property
    def sigma_max(self) -> torch.Tensor:
        """The largest singular value of each matrix (exact; computed when first read).  # shape: batch"""
        return scale_by_power_of_two(self._exact().sigma_max, self._exponent)

    @property
    def cond(self) -> torch.Tensor:
        """``σ_max / σ_min`` of each matrix (exact, ``inf`` if singular; computed when first read).  # shape: batch"""
        return self._exact().cond

    def scaled(self, exponent: int) -> InverseFacts:
        """The facts of ``2^exponent · A`` (the same cache: nothing computed again)."""
        work = object.__new__(InverseFacts)
        work.__dict__.update(self.__dict__)
        work._exponent = self._exponent + exponent
        return work

    def answer_exponents(self, k: int) -> tuple[int, int, int, int] | None:
        """Binary exponents bounding the entries of ``A⁻¹`` (``A⁺``): ``(high_low, high_high, low_low, low_high)``.

        The largest entry's exponent lies in ``[high_low, high_high]`` (``log₂`` of ``cond / σ_max``, the worst
        over the batch) and the smallest's in ``[low_low, low_high]`` (``−log₂(σ_max √k)``), up to ``√k``
        factors; exact (each pair equal) once the singular values are known, else from the screen's bounds.
        ``None`` where every matrix is zero (its pseudo-inverse is zero: it bounds nothing).
        """
        bounds = self._known.get("bounds")
        if self.exact or bounds is None:
            sigma, cond = self.sigma_max, self.cond
            bounds = Bounds(sigma_low=sigma, sigma_high=sigma, cond_low=cond, cond_high=cond)
        else:
            bounds = replace(
                bounds,
                sigma_low=scale_by_power_of_two(bounds.sigma_low, self._exponent),
                sigma_high=scale_by_power_of_two(bounds.sigma_high, self._exponent),
            )
        positive = bounds.sigma_high > 0
        if not bool(positive.any()):
            return None
        finite = torch.isfinite(bounds.cond_high)
        top_low = float(bounds.cond_low[finite].max()) if bool(finite.any()) else 1.0
        top_high = float(bounds.cond_high[finite].max()) if bool(finite.any()) else 1.0
        sigma_low, sigma_high = bounds.sigma_low[positive], bounds.sigma_high[positive]
        root_k = math.sqrt(k)
        return (
            math.ceil(math.log2(top_low / float(sigma_high.min()))),
            math.ceil(math.log2(top_high / float(sigma_low.min()))),
            -math.ceil(math.log2(float(sigma_high.max()) * root_k)),
            -math.ceil(math.log2(float(sigma_low.max()) * root_k)),
        )

    def settle(self) -> None:
        """Compute the exact analysis now (where the screen's bounds leave a verdict open)."""
        self._exact()


def check_side(side: str, m: int, n: int, pseudo: bool) -> None:
    """Refuse a side whose equation no ``A`` of shape ``(m, n)`` can satisfy (unless ``pseudo``)."""
    if side == "both" and m != n:
        raise ShapeError(
            f"side: 'both' expected a square A, received shape (..., {m}, {n}); "
            "use side='right' or side='left' for a rectangular matrix"
        )
    if pseudo:
        return
    if side == "right" and m > n:
        raise ShapeError(
            f"side: 'right' (A M = I_{m}) expected A with m <= n, received shape (..., {m}, {n}), whose rank "
            f"is at most {n} < {m}; use side='left' (M A = I_{n}) or pseudo=True for the least-squares answer"
        )
    if side == "left" and m < n:
        raise ShapeError(
            f"side: 'left' (M A = I_{n}) expected A with m >= n, received shape (..., {m}, {n}), whose rank "
            f"is at most {m} < {n}; use side='right' (A M = I_{m}) or pseudo=True for the least-squares answer"
        )
