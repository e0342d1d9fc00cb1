"""The ``sparse`` problem's two storages of ``U`` behind one interface.

:class:`DenseStorage` holds ``U`` as an ``(n, n)`` tensor masked by a dense 0/1 ``Ω``;
:class:`~gdla_plugins.problems._sparse_pattern.PatternStorage` holds only its values on Ω's
pattern. :func:`storage_for` picks one from the constructor's ``omega`` and ``init``; the problem
(``plugins/problems/sparse.py``) asks the storage for every operation that depends on the form.
"""

from __future__ import annotations

from typing import Any

import torch

from gdla.capabilities import LinearLeastSquares, MaskedOperatorLoss
from gdla.errors import InputError, ShapeError
from gdla.validation import check_finite, check_matrix
from gdla_plugins.problems._common import as_working_float
from gdla_plugins.problems._sparse_pattern import PatternStorage, is_sparse

__all__ = ["DenseStorage", "PatternStorage", "storage_for"]


def storage_for(
    omega: Any, init: Any, n: int, dtype: torch.dtype, device: torch.device
) -> DenseStorage | PatternStorage:
    """The storage the arguments ask for: on Ω's pattern when ``omega`` or ``init`` is a torch sparse tensor."""
    if is_sparse(omega) or is_sparse(init):
        return PatternStorage(omega, init, n, dtype, device)
    return DenseStorage(omega, init, n, dtype, device)


class DenseStorage:
    """``U`` as an ``(n, n)`` tensor; ``S = Init + Ω ⊙ U``.

    Attributes:
        dtype: the problem's dtype (``X``'s and ``Y``'s, promoted with ``init``'s).
        omega: the mask, 0/1 in ``dtype``.  # shape: (n, n)
        init: ``Init``.  # shape: (n, n)
        init_values: ``Init`` as the values ``U`` adds to (here ``init`` itself).
    """

    kind = "dense"
    pattern = None
    #: the fused op computes ``Init + Ω ⊙ U`` (``gdla.ops.masked_hadamard``)
    fused_reason: str | None = None

    def __init__(self, omega: Any, init: Any, n: int, dtype: torch.dtype, device: torch.device) -> None:
        if init is None:
            init = torch.zeros(n, n, dtype=dtype, device=device)
        else:
            init = as_working_float(check_matrix(init, "init", batch=False))
            check_square_of(init, "init", n)
            dtype = torch.promote_types(dtype, init.dtype)
        self.n, self.dtype = n, dtype
        self.init = self.init_values = init.to(dtype=dtype, device=device)
        self.omega = check_mask(omega, n, dtype, device)
        self._normal: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, self.n)

    def stored(self) -> tuple[tuple[int, ...], int] | None:
        return None

    def free_entries(self) -> int:
        return int(self.omega.count_nonzero())

    def check_u(self, U: torch.Tensor) -> torch.Tensor:
        if tuple(U.shape) != self.shape:
            raise ShapeError(f"params['U']: expected shape (n, n) = ({self.n}, {self.n}), received {tuple(U.shape)}")
        return U

    def operator(self, U: torch.Tensor) -> torch.Tensor:
        return self.init + self.omega * U

    def matmul(self, S: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return S @ X

    def answer(self, S: torch.Tensor) -> torch.Tensor:
        """``S`` as :meth:`SparseProblem.solution` hands it out (here: as it is)."""
        return S

    def comparable(self, S: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """What an error compares of an answer, and over which dimensions."""
        return S, (-2, -1)

    def update_masks(self) -> dict[str, torch.Tensor]:
        return {"U": self.omega}

    def fused_loss(self, X: torch.Tensor, Y: torch.Tensor, *settings: Any) -> MaskedOperatorLoss | None:
        return MaskedOperatorLoss(self.init, self.omega, X, Y, *settings)

    def least_squares(self, X: torch.Tensor, Y: torch.Tensor, **common: Any) -> LinearLeastSquares:
        """Every row of ``U`` is its own block (dimension -1)."""
        omega = self.omega
        return LinearLeastSquares(
            key="U",
            apply=lambda d: (omega * d) @ X,
            adjoint=lambda r: omega * (r @ X.mT),
            rhs=Y - self.init @ X,
            block_dims=(-1,),
            **common,
        )

    def normal_terms(self, S: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Ω ⊙ (S X Xᵀ), Ω ⊙ (Y Xᵀ))``, with ``X Xᵀ`` and ``Y Xᵀ`` kept (fixed per problem)."""
        if self._normal is None:
            self._normal = (X @ X.T, Y @ X.T)
        gram, target_x = self._normal
        return self.omega * (S @ gram), self.omega * target_x

    def reference(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Row ``i``: ``pinv`` of ``Ω_i[:, None] ⊙ X`` (zero columns outside its free set), in float64 on the CPU."""
        X, Y = X.detach().cpu().double(), Y.detach().cpu().double()
        init, omega = self.init.detach().cpu().double(), self.omega.detach().cpu().double()
        rhs = Y - init @ X  # (n, p)
        pinvs = torch.linalg.pinv(omega[:, :, None] * X[None, :, :])  # (n, p, n)
        U = torch.einsum("ip,ipj->ij", rhs, pinvs) * omega
        return (init + U).to(dtype=self.dtype, device=self.init.device)

    def reference_params(self, S_ref: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"U": self.omega * (S_ref - self.init)}


def check_square_of(value: torch.Tensor, name: str, n: int) -> None:
    if tuple(value.shape) != (n, n):
        raise ShapeError(
            f"{name}: expected shape (n, n) = ({n}, {n}) where n = X.shape[0], received {tuple(value.shape)}"
        )


def check_mask(omega: Any, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``omega`` as a 0/1 ``(n, n)`` tensor of ``dtype`` (all ones when ``None``)."""
    if omega is None:
        return torch.ones(n, n, dtype=dtype, device=device)
    if not isinstance(omega, torch.Tensor):
        try:
            omega = torch.as_tensor(omega)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"omega: expected a 0/1 or boolean matrix, received {omega!r} ({exc})") from None
    if omega.dim() != 2:
        raise ShapeError(
            f"omega: expected a 2-D mask of shape (n, n) = ({n}, {n}), received shape {tuple(omega.shape)}"
        )
    check_square_of(omega, "omega", n)
    if omega.is_complex():
        raise InputError(f"omega: expected a real 0/1 or boolean mask, received {omega.dtype}")
    check_finite(omega, "omega")
    if omega.dtype != torch.bool:
        bad = (omega != 0) & (omega != 1)
        if bool(bad.any()):
            i, j = (int(v) for v in torch.nonzero(bad)[0])
            raise InputError(
                f"omega: expected only 0 and 1 (or booleans), received {omega[i, j].item()!r} at ({i}, {j})"
            )
    return omega.to(dtype=dtype, device=device)
