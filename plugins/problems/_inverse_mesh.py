"""The ``inverse`` problem's pieces for a DTensor ``A`` (rows split over a 1-D DeviceMesh).

:class:`RowShardedInverse` states how each product communicates; :func:`norms` and
:func:`full_mse` turn sharded values into the same plain scalars on every rank. The problem
(``plugins/problems/inverse.py``) picks them when ``A`` is a DTensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdla.capabilities import MatrixInverse
from gdla.mesh import full_tensor, placed_like, replicated
from gdla_plugins.problems._common import batched_mse, frobenius

__all__ = ["RowShardedInverse", "full_mse", "norms"]


@dataclass(frozen=True)
class RowShardedInverse(MatrixInverse):
    """:class:`~gdla.MatrixInverse` of a DTensor ``A`` whose products say how they communicate.

    ``A`` and the iterate ``X`` are row-sharded alike (or both replicated). A product takes the
    rows of its left factor times the whole right factor (:func:`~gdla.mesh.replicated`: one
    all-gather), so each result is row-sharded too; ``Aᵀ R`` sums every rank's ``A_rᵀ R_r`` and
    reduce-scatters it back into rows. The values are :class:`~gdla.MatrixInverse`'s.
    """

    def product(self, X: torch.Tensor) -> torch.Tensor:
        A = self.A
        if self.side == "right":
            return A @ replicated(X)
        if self.side == "left":
            return X @ replicated(A)
        return (A @ replicated(X) + X @ replicated(A)) / 2

    def safe_start(self) -> torch.Tensor:
        """:meth:`~gdla.MatrixInverse.safe_start` from the gathered ``A``, handed out in rows like ``A``.

        (``Aᵀ`` of a row-sharded ``A`` is column-sharded; turning it into rows would be an all-to-all,
        which gloo lacks.)
        """
        whole = MatrixInverse(replicated(self.A), side=self.side, pseudo=self.pseudo, key=self.key)
        return placed_like(whole.safe_start(), self.A)

    def adjoint(self, R: torch.Tensor) -> torch.Tensor:
        A = self.A
        if self.side == "right":
            return placed_like(A.mT @ R, R)
        if self.side == "left":
            return R @ replicated(A).mT
        return (placed_like(A.mT @ R, R) + R @ replicated(A).mT) / 2


def norms(tensor: torch.Tensor) -> torch.Tensor:
    """:func:`frobenius` of each matrix, all-reduced to a plain tensor for a DTensor (the same on every rank)."""
    return full_tensor(frobenius(tensor))


def full_mse(difference: torch.Tensor) -> torch.Tensor:
    """:func:`batched_mse` of a DTensor as a plain tensor, the same on every rank."""
    return full_tensor(batched_mse(difference))
