r"""Linear least squares (optionally ridge-regularised) by gradient descent.

For ``A`` of shape ``(..., m, n)`` and ``B`` of shape ``(..., m, k)`` find ``X`` of shape
``(..., n, k)`` minimising, summed over the batch,

.. math::

    L(X) = \frac{1}{2m} \left( \|A X - B\|_F^2 + \lambda \|X\|_F^2 \right),

whose unique minimiser (for full column rank ``A`` or ``λ > 0``) solves the normal equations
``(AᵀA + λI) X = AᵀB``. The ``1/m`` keeps the Hessian ``(AᵀA + λI)/m`` near the identity for
``A`` with standard-normal entries, so the same learning rate suits every ``m``.
"""

from __future__ import annotations

from typing import Any

import torch

import gdla
from gdla.errors import ShapeError, SingularMatrixError
from gdla.validation import as_dtype, check_int, check_matrix, check_nonnegative

__all__ = ["LeastSquares"]


def _frobenius(tensor: torch.Tensor) -> torch.Tensor:  # shape: (..., m, n) -> (...)
    return torch.linalg.matrix_norm(tensor, ord="fro")


def _nonzero(values: torch.Tensor) -> torch.Tensor:
    """``values`` with zeros replaced by one: dividing by it is relative, or absolute at zero."""
    return torch.where(values > 0, values, torch.ones_like(values))


class LeastSquares(gdla.Problem):
    """Minimise ``(‖A X − B‖²_F + λ‖X‖²_F) / 2m``; the answer solves ``(AᵀA + λI) X = AᵀB``.

    Args:
        A: the design matrix, or a batch of them, shape ``(..., m, n)``.
        B: right-hand sides, shape ``(..., m, k)``, or one vector per matrix, shape ``(..., m)``
            (then :meth:`solution` is a vector too). Default: the vector of ones.
        ridge: ``λ >= 0``. With ``λ = 0``, ``A`` must have full column rank (else the minimiser is
            not unique and :class:`~gdla.errors.SingularMatrixError` says so).

    ``dtype``, ``device`` and ``to()`` come from :class:`gdla.Problem`: ``to()`` builds the problem
    again from the constructor's recorded arguments with ``A`` and ``B`` converted.
    """

    name = "least-squares"
    summary = "least squares min ||A X - B||^2 (+ ridge), reference torch.linalg.lstsq"

    def __init__(self, A: Any, B: Any = None, *, ridge: float = 0.0) -> None:
        A = check_matrix(A, "A")
        if A.dtype not in (torch.float32, torch.float64):
            A = A.to(torch.float32)
        m, n = A.shape[-2:]
        if B is None:
            B = torch.ones(*A.shape[:-1], dtype=A.dtype, device=A.device)
        B = torch.as_tensor(B)
        self.vector = B.dim() == A.dim() - 1
        if self.vector:
            B = B.unsqueeze(-1)
        B = check_matrix(B, "B", dtype=A.dtype)
        if B.shape[:-1] != A.shape[:-1]:
            want = f"(..., {m}, k)" if A.dim() == 2 else f"{tuple(A.shape[:-1])} + (k,)"
            raise ShapeError(
                f"B: expected shape {want} to match A of shape {tuple(A.shape)}, received shape "
                f"{tuple(B.shape[:-1] if self.vector else B.shape)}"
            )
        self.A, self.B = A, B.to(A.device)
        self.ridge = check_nonnegative(ridge, "ridge")
        self._n = n
        self._reference: torch.Tensor | None = None
        sigma = torch.linalg.svdvals(A)  # shape: (..., min(m, n))
        self._sigma_max = sigma[..., 0]
        smallest = sigma[..., -1] if m >= n else torch.zeros_like(sigma[..., 0])
        if self.ridge == 0:
            tolerance = sigma[..., 0] * max(m, n) * torch.finfo(A.dtype).eps
            if bool((smallest <= tolerance).any()):
                wide = f"; it has more columns ({n}) than rows ({m})" if m < n else ""
                raise SingularMatrixError(
                    f"A: expected full column rank (rank {n}) for a unique least-squares solution, received a "
                    f"rank-deficient matrix of shape {tuple(A.shape)} (smallest singular value "
                    f"{float(smallest.min()):.3g}){wide}; pass ridge > 0 to regularise"
                )
        self._cond = (self._sigma_max**2 + self.ridge) / (smallest**2 + self.ridge)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> LeastSquares:
        """A tall ``(4n, n)`` standard-normal ``A`` (``n = 5`` by default) and one random right-hand side."""
        n = 5 if size is None else check_int(size, "size", minimum=1)
        generator = torch.Generator().manual_seed(check_int(seed, "seed"))
        A = torch.randn(4 * n, n, generator=generator, dtype=torch.float64)
        b = torch.randn(4 * n, generator=generator, dtype=torch.float64)
        dtype = as_dtype(dtype) or torch.float64
        return cls(A.to(dtype), b.to(dtype))

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor, **options: Any) -> LeastSquares:
        """``A`` from the matrix; ``B`` defaults to the vector of ones (the command line's case)."""
        return cls(matrix, options.pop("B", None), **options)

    # -- optimisation -------------------------------------------------------------------------
    def init_params(self, generator: torch.Generator) -> gdla.Params:
        """Small normal draws (scale 0.1), made on the CPU so every device starts alike."""
        shape = (*self.A.shape[:-2], self._n, self.B.shape[-1])
        X = 0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)
        return {"X": X.to(dtype=self.dtype, device=self.device)}

    def loss(self, params: gdla.Params) -> torch.Tensor:
        X = params["X"]  # shape: (..., n, k)
        misfit = _frobenius(self.A @ X - self.B) ** 2
        if self.ridge:
            misfit = misfit + self.ridge * _frobenius(X) ** 2
        return misfit.sum() / (2 * self.A.shape[-2])

    # -- declared capability: the least-squares form (unlocks cg, line-search, heavy-ball, auto) --
    def least_squares(self) -> gdla.LinearLeastSquares:
        r"""``r = [A X − B; √λ X]``: the loss is ``‖r‖² / 2m``, linear in ``X``.

        ``J d = [A d; √λ d]``, ``Jᵀ r = Aᵀ r_top + √λ r_bottom``; every column of ``X`` is its own
        problem with Gram matrix ``AᵀA + λI``, the Gram of ``F = [A; √λ I]``.
        """
        A, m = self.A, self.A.shape[-2]
        root = self.ridge**0.5
        eye = torch.eye(self._n, dtype=self.dtype, device=self.device).expand(*A.shape[:-2], self._n, self._n)
        return gdla.LinearLeastSquares(
            key="X",
            apply=lambda d: torch.cat([A @ d, root * d], dim=-2),
            adjoint=lambda r: A.mT @ r[..., :m, :] + root * r[..., m:, :],
            rhs=torch.cat([self.B, torch.zeros_like(self.B[..., :1, :]).expand(*self.B.shape[:-2], self._n, -1)], -2),
            loss_of=lambda r: r.square().sum() / (2 * m),
            block_dims=(-2,),
            block_name="column",
            distinct_blocks=A[..., 0, 0].numel(),
            gram_factor=torch.cat([A, root * eye], dim=-2),
        )

    # -- answers ------------------------------------------------------------------------------
    def solution(self, params: gdla.Params) -> torch.Tensor:
        X = params["X"].detach()
        return X.squeeze(-1) if self.vector else X

    def _gradient_direction(self, X: torch.Tensor) -> torch.Tensor:
        """``Aᵀ(A X − B) + λX``, zero exactly at the answer."""
        return self.A.mT @ (self.A @ X - self.B) + self.ridge * X

    def residual(self, params: gdla.Params) -> torch.Tensor:
        r"""Relative residual of the normal equations, worst over the batch.

        :math:`\|A^T(AX - B) + λX\|_F / ((σ_{max}^2 + λ)\|X\|_F + \|A^T B\|_F)`: 1 at ``X = 0``,
        0 at the answer, and unchanged when ``A`` or ``B`` is rescaled.
        """
        X = params["X"]
        scale = (self._sigma_max**2 + self.ridge) * _frobenius(X) + _frobenius(self.A.mT @ self.B)
        return (_frobenius(self._gradient_direction(X)) / _nonzero(scale)).max()

    def reference(self) -> torch.Tensor:
        """``torch.linalg.lstsq(A, B)`` for ``λ = 0``, else ``torch.linalg.solve(AᵀA + λI, AᵀB)``."""
        if self._reference is None:
            if self.ridge == 0:
                X = torch.linalg.lstsq(self.A, self.B).solution
            else:
                eye = torch.eye(self._n, dtype=self.dtype, device=self.device)
                X = torch.linalg.solve(self.A.mT @ self.A + self.ridge * eye, self.A.mT @ self.B)
            self._reference = X.squeeze(-1) if self.vector else X
        return self._reference

    def reference_params(self) -> gdla.Params:
        reference = self.reference()
        return {"X": (reference.unsqueeze(-1) if self.vector else reference).clone()}

    def error(self, params: gdla.Params) -> torch.Tensor:
        """``‖X − X*‖_F / ‖X*‖_F`` in scaled arithmetic (:func:`gdla.relative_norm`: right at any units; NaN where
        ``X* = 0`` and ``X`` is not), worst over the batch."""
        reference = self.reference()
        if self.vector:
            reference = reference.unsqueeze(-1)
        return gdla.relative_norm(params["X"] - reference, reference, dim=(-2, -1)).max()

    def condition_estimate(self) -> float:
        """Condition number of the Hessian ``AᵀA + λI``: ``(σ_max² + λ) / (σ_min² + λ)``, worst over the batch."""
        return float(self._cond.max())

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "A_shape": list(self.A.shape),
            "B_shape": list(self.B.shape[:-1] if self.vector else self.B.shape),
            "ridge": self.ridge,
        }


@gdla.hookimpl
def register_problems(register: Any) -> None:
    register(LeastSquares)
