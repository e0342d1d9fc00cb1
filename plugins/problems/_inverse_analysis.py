"""The ``inverse`` problem's set-up analysis: which side is attainable, singularity, the least-norm projector.

Computed once per problem from the plain (gathered) matrix by :func:`analyse`; :func:`check_side`
refuses a side whose equation no matrix of the given shape can satisfy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdla.errors import ShapeError, SingularMatrixError
from gdla_plugins.problems._common import batch_index, condition_numbers, numerically_singular_threshold

__all__ = ["InverseAnalysis", "analyse", "check_side"]


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
