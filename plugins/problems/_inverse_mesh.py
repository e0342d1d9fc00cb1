"""The ``inverse`` problem for a DTensor ``A`` (rows split over a 1-D DeviceMesh), as its own class.

:class:`MeshInverseMethods` holds everything that differs from the plain problem: the checks of a
mesh matrix, how the iterate is placed, how products communicate (:class:`RowShardedInverse`), and
that losses, residuals and answers become the same plain values on every rank. ``inverse.py`` mixes
it into ``MeshInverse``, the class ``InverseProblem(A)`` builds when ``A`` is a DTensor, so the plain
problem has no DTensor branches and this module does not import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gdla.capabilities import InverseMSE, MatrixInverse, by_side
from gdla.errors import InputError
from gdla.mesh import (
    check_mesh_matrix,
    distribute_like,
    full_tensor,
    identity_like,
    is_dtensor,
    mesh_summary,
    placed_like,
    replicated,
)
from gdla.problem import Params
from gdla.scaling import Normalization
from gdla.validation import check_matrix
from gdla_plugins.problems._common import as_working_float, batched_mse, declared

__all__ = ["MeshInverseMethods", "RowShardedInverse", "full_mse"]


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
        return by_side(self.side, lambda: A @ replicated(X), lambda: X @ replicated(A))

    def safe_start(self) -> torch.Tensor:
        """:meth:`~gdla.MatrixInverse.safe_start` from the gathered ``A``, handed out in rows like ``A``.

        (``Aᵀ`` of a row-sharded ``A`` is column-sharded; turning it into rows would be an all-to-all,
        which gloo lacks.)
        """
        whole = MatrixInverse(replicated(self.A), side=self.side, pseudo=self.pseudo, key=self.key)
        return placed_like(whole.safe_start(), self.A)

    def adjoint(self, R: torch.Tensor) -> torch.Tensor:
        A = self.A
        return by_side(self.side, lambda: placed_like(A.mT @ R, R), lambda: R @ replicated(A).mT)


def full_mse(difference: torch.Tensor) -> torch.Tensor:
    """:func:`batched_mse` of a DTensor as a plain tensor, the same on every rank."""
    return full_tensor(batched_mse(difference))


class MeshInverseMethods:
    """The methods in which the inverse of a DTensor ``A`` differs from the plain problem's.

    Every product runs as a DTensor op on the mesh; losses and residuals are all-reduced (the same
    number on every rank). The singular-value analysis and the reference inverse run on the gathered
    matrix, on every rank; the fused kernels take plain tensors, so a DTensor problem runs ``autograd``.
    """

    A: Any
    side: str
    pseudo: bool
    _k: int

    _full = staticmethod(full_tensor)
    _mse = staticmethod(full_mse)

    @staticmethod
    def _matrix(A: Any) -> tuple[Any, torch.Tensor]:
        """``(A, the gathered A)``, checked before any collective: a bad placement or shape raises on every rank."""
        A = as_working_float(check_mesh_matrix(A, "A")).detach()
        return A, as_working_float(check_matrix(full_tensor(A), "A"))  # the same on every rank

    def _check_side(self, side: str, m: int, n: int, pseudo: bool) -> None:
        super()._check_side(side, m, n, pseudo)  # type: ignore[misc]
        if side == "both":  # its step estimates probe the loss with plain random tensors
            raise InputError(
                "side: expected 'right' or 'left' for A given as a DTensor, received 'both'; for a square "
                "invertible A both sides have the same answer: use side='right'"
            )

    def _placed(self, M: torch.Tensor) -> torch.Tensor:
        """``M`` as the iterate is held: a DTensor placed like ``A`` (rows split alike)."""
        return placed_like(M, self.A) if is_dtensor(M) else distribute_like(M, self.A)

    def _eye(self) -> torch.Tensor:
        """``I_k`` placed like ``A``, kept while ``A`` is (placing it costs a full eye)."""
        return declared(self, self.A, "eye", lambda: identity_like(self.A, self._k))

    def matrix_inverse(self) -> MatrixInverse:
        """The answer is ``A⁻¹`` (``A⁺`` with ``pseudo``); the products communicate row-wise."""
        return RowShardedInverse(self.A, side=self.side, pseudo=self.pseudo, key="M")

    def fused_loss(self) -> InverseMSE | None:
        """``None``: the fused ops take plain tensors."""
        return None

    def fused_reason(self) -> str | None:
        return (
            f"problem 'inverse' holds A as a DTensor ({mesh_summary(self.A)}): its products run as DTensor ops "
            "on the mesh, and the fused kernels take plain tensors"
        )

    def loss_and_grad(self, params: Params, backend: str = "autograd") -> tuple[torch.Tensor, Params]:
        loss, grads = super().loss_and_grad(params, backend)  # type: ignore[misc]
        grads["M"] = placed_like(grads["M"], params["M"])  # a DTensor gradient: placed like M
        return loss, grads

    def normalized(self) -> Normalization | None:
        """Computed on every call: the scale of a DTensor ``A`` is a collective, not kept."""
        return self._normalize()  # type: ignore[attr-defined,no-any-return]

    def _fused_residuals(self, M: torch.Tensor) -> torch.Tensor | None:
        return None

    def metrics(self, params: Params) -> dict[str, float]:
        """Computed at once: each figure is a collective (products on the mesh, the gathered reference), so
        every rank computes them now, together; a figure left for later would hang a rank that reads it
        while the others do not."""
        return dict(super().metrics(params).items())  # type: ignore[misc]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mesh": mesh_summary(self.A)}  # type: ignore[misc]
