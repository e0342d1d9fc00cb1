"""The orthonormal (polar) factor of a matrix by a Newton-Schulz iteration: :func:`polar_newton_schulz`.

The same idea as :mod:`gdla_plugins.optimizers.newton_schulz`'s inverse iteration, ``U ← U (3I − UᵀU) / 2``, usable
as a retraction that keeps SVD factors orthonormal without an SVD.
"""

from __future__ import annotations

import math

import torch

from gdla.errors import InputError
from gdla.validation import check_int, check_matrix, check_nonnegative

__all__ = ["polar_newton_schulz"]


def polar_newton_schulz(U: torch.Tensor, *, max_steps: int = 50, tol: float | None = None) -> torch.Tensor:
    r"""The orthonormal polar factor ``W Zᵀ`` of ``U = W Σ Zᵀ`` without an SVD.

    Iterates :math:`U \leftarrow U (3I - U^T U)/2`, which drives every singular value in
    ``(0, √3)`` to 1 (quadratically near 1) and leaves the singular vectors alone. ``U`` is first
    scaled into that interval when a cheap bound (``‖UᵀU‖_∞ ≥ ‖U‖₂²``) says it might not be; a
    scale does not change the polar factor. Near-orthonormal input (a retraction after a small
    step) needs two or three iterations.

    Args:
        U: shape ``(..., m, k)`` with ``m >= k`` and full column rank (a zero singular value stays 0).
        max_steps: iteration cap.
        tol: stop once ``‖UᵀU − I‖_F / √k <= tol`` for every matrix (default: 10 ulps of the dtype).

    Returns:
        A new tensor of the same shape with orthonormal columns.
    """
    U = check_matrix(U, "U")
    m, k = U.shape[-2], U.shape[-1]
    if m < k:
        raise InputError(f"U: expected a tall matrix (m >= k) for orthonormal columns, received shape {tuple(U.shape)}")
    max_steps = check_int(max_steps, "max_steps", minimum=1)
    tol = 10 * torch.finfo(U.dtype).eps if tol is None else check_nonnegative(tol, "tol")
    eye = torch.eye(k, dtype=U.dtype, device=U.device)
    gram = U.mT @ U
    bound = torch.linalg.matrix_norm(gram, ord=math.inf)  # >= ‖U‖₂², as gram is symmetric
    needs_scaling = bound >= 2.5  # σ² must stay below 3; 2.5 leaves room for rounding
    if bool(needs_scaling.any()):
        factor = torch.where(needs_scaling, bound.rsqrt(), torch.ones_like(bound))
        U = U * factor[..., None, None]
        gram = U.mT @ U
    for _ in range(max_steps):
        defect = gram - eye
        if float(torch.linalg.matrix_norm(defect).max()) <= tol * math.sqrt(k):
            break
        U = U - U @ defect / 2  # = U (3I − UᵀU) / 2
        gram = U.mT @ U
    return U
