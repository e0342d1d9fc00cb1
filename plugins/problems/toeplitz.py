"""The ``toeplitz`` problem: the best banded Toeplitz approximation of a matrix (seed 004).

Given a target ``T`` (``n × n``, or a batch) find ``2b + 1`` diagonal values ``c`` minimising

    spectral:   L(c) = mean_k ‖(T − B(c)) y_k‖² / ‖y_k‖²      (probe vectors y_k, the seed's loss)
    frobenius:  L(c) = ‖T − B(c)‖_F² / n

with ``B(c)[i, j] = c[j − i + b]`` for ``|j − i| <= b``. Both are ``‖(T − B(c)) W‖_F²`` for a
fixed ``W`` (see :mod:`gdla_plugins.problems._toeplitz_common`), a linear least-squares problem
in ``c`` whose exact answer ``torch.linalg.lstsq`` gives.
"""

from __future__ import annotations

from typing import Any

import numpy
import torch

import gdla
from gdla.capabilities import LinearLeastSquares
from gdla.errors import ShapeError
from gdla.options import Option
from gdla.problem import Params, Problem
from gdla.scaling import Normalization, check_representable, power_of_two_scale, scale_by_power_of_two
from gdla.validation import check_choice, check_int, check_matrix
from gdla_plugins.problems._toeplitz_common import (
    LOSSES,
    band_adjoint,
    band_to_matrix,
    check_bandwidth,
    check_rows,
    default_bandwidth,
    design,
    lstsq_bands,
    normal_equations_gap,
    probe_weights,
    relative_error,
    resolve_probes,
    row_to_matrix,
    weigh,
)

__all__ = ["ToeplitzProblem"]

#: Seed 004's test row (n = 11): a symmetric 7-banded Toeplitz matrix.
SEED_ROW = (0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 2.0, 1.0, 0.0, 0.0, 0.0)
#: Noise added to the seed row in :meth:`ToeplitzProblem.example` so the band fit is not exact.
EXAMPLE_NOISE = 0.05


class ToeplitzProblem(Problem):
    """Best banded Toeplitz approximation ``B(c)`` of a target matrix ``T``.

    Args:
        target: the matrix ``T`` (``(..., n, n)``, a batch of independent problems) or a row
            vector (``(n,)``) read with the seed's convention ``T[i, j] = row[n // 2 + j − i]``.
        bandwidth: half-bandwidth ``b`` (``2b + 1`` parameters); default ``min(3, n − 1)``, the
            seed's 7 parameters for ``n = 11``.
        loss: ``"spectral"`` (the seed's probe loss) or ``"frobenius"`` (``‖T − B‖_F² / n``).
        probes: the spectral loss's probe vectors ``(K, n)``; default: seed 004's recipe
            ``rand(n) · rand(1) · n``, ``num_probes`` of them, drawn from a generator seeded
            with ``probe_seed``. Only for ``loss="spectral"``.
        num_probes, probe_seed: size and seed of the default probes.

    Attributes:
        target: ``T``.  # shape: (..., n, n)
        bandwidth: ``b``.
        loss_kind: ``"spectral"`` or ``"frobenius"``.
        probes: the probes (``None`` for ``"frobenius"``).  # shape: (K, n)

    For a batch the loss is the sum over the batch, and ``residual``/``error`` are the worst
    over it. The parameters start at ``c = 0``.
    """

    name = "toeplitz"
    summary = "best banded Toeplitz approximation of a matrix (spectral or Frobenius loss)"
    options = {
        "bandwidth": Option(default=None, doc="half-bandwidth b (2b + 1 parameters); default min(3, n − 1)"),
        "loss": Option(default="spectral", doc="'spectral' (the seed's probe loss) or 'frobenius'"),
        "num_probes": Option(default=100, doc="probe vectors of the spectral loss"),
        "probe_seed": Option(default=0, doc="seed of the default probes"),
        "probes": Option(default=None, doc="Python API: the probe vectors (K, n)"),
    }
    fused = False
    #: The loss is quadratic in ``band`` (read by solvers such as ``cg``).
    quadratic = True

    def __init__(
        self,
        target: Any,  # shape: (..., n, n) or (n,)
        *,
        bandwidth: int | None = None,
        loss: str = "spectral",
        probes: Any = None,  # shape: (K, n)
        num_probes: int = 100,
        probe_seed: int = 0,
    ) -> None:
        if _ndim(target) == 1:
            target = row_to_matrix(check_rows(target, "target", batch=False))
        self.target = check_matrix(target, "target")
        if self.target.shape[-1] != self.target.shape[-2]:
            raise ShapeError(
                f"target: expected a square matrix (..., n, n) or a row vector (n,), received shape "
                f"{tuple(self.target.shape)}; for rows use ToeplitzProblem.from_row"
            )
        if self.target.dtype not in (torch.float32, torch.float64):
            self.target = self.target.float()
        n = self.target.shape[-1]
        self.n = n
        self.bandwidth = default_bandwidth(n) if bandwidth is None else check_bandwidth(bandwidth, n)
        self.loss_kind = check_choice(loss, "loss", LOSSES)
        self.num_probes = check_int(num_probes, "num_probes", minimum=1)
        self.probe_seed = check_int(probe_seed, "probe_seed")
        dtype, device = self.target.dtype, self.target.device
        self.probes = resolve_probes(self.loss_kind, probes, n, self.num_probes, self.probe_seed, dtype, device)
        if self.probes is not None:
            self.num_probes = self.probes.shape[0]
        self._weights = probe_weights(self.probes, n, dtype, device)  # (n, K)
        self._target_w = weigh(self.target, self._weights, self.probes)  # (..., n, K), fixed: computed once
        # Normal equations G c = h of the loss (L = c'Gc − 2h'c + const); G is tiny, (2b+1)².
        if self.loss_kind == "frobenius":
            offsets = torch.arange(-self.bandwidth, self.bandwidth + 1, device=device)
            self._gram = torch.diag((n - offsets.abs()).to(dtype) / n)
            self._rhs = band_adjoint(self.target, self.bandwidth) / n
        else:
            d = design(self._weights, self.bandwidth)
            self._gram = d.T @ d
            self._rhs = self._target_w.flatten(-2) @ d

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_row(cls, row: Any, **options: Any) -> ToeplitzProblem:
        """Build from rows ``(..., n)`` with the seed's convention ``T[i, j] = row[n // 2 + j − i]``."""
        return cls(row_to_matrix(check_rows(row, "row")), **options)

    @classmethod
    def from_matrix(cls, matrix: Any, **options: Any) -> ToeplitzProblem:
        """Build from a square matrix ``(..., n, n)``, or from a row given as ``(n,)`` or ``(1, n)``.

        A one-row matrix (what a row saved to a file looks like) is read as the seed's row
        convention, ``T[i, j] = row[n // 2 + j − i]``.
        """
        shape = tuple(getattr(matrix, "shape", ()))
        if len(shape) == 2 and shape[0] == 1 and shape[1] > 1:
            return cls.from_row(matrix[0], **options)
        return cls(matrix, **options)

    @classmethod
    def estimated_bytes(cls, size: int, dtype: torch.dtype = torch.float64, **options: Any) -> int:
        """The target matrix, its probes and the band design: about 6 n² numbers."""
        return 6 * size * size * (torch.finfo(dtype).bits // 8)

    @classmethod
    def example(
        cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64, **options: Any
    ) -> ToeplitzProblem:
        """Seed 004's test row ``[0, 0, 0, 1, 2, 4, 2, 1, 0, 0, 0]`` (n = 11, b = 3) plus noise.

        Noise ``0.05 · randn`` (generator seeded with ``seed``) makes the band fit inexact. With
        ``size`` the row is seed 004's training recipe ``rand(n) · n`` instead.
        """
        generator = torch.Generator().manual_seed(check_int(seed, "seed"))
        if size is None:
            base = torch.tensor(SEED_ROW, dtype=torch.float64)
            row = base + EXAMPLE_NOISE * torch.randn(base.shape, generator=generator, dtype=torch.float64)
        else:
            n = check_int(size, "size", minimum=1)
            row = torch.rand(n, generator=generator, dtype=torch.float64) * n
        return cls.from_row(row.to(dtype), **options)

    def matrix(self, band: torch.Tensor) -> torch.Tensor:
        """The banded Toeplitz matrix ``B(band)``.  # band: (..., 2b+1) -> (..., n, n)"""
        return band_to_matrix(band, self.n)

    def design(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss as a linear least-squares problem: ``(D, t)`` with ``loss(c) = Σ_batch ‖D c − t‖²``.

        Returns:
            ``D`` of shape ``(n · K, 2b + 1)`` and ``t`` of shape ``(..., n · K)``, where
            ``D c = vec(B(c) W)`` and ``t = vec(T W)`` (row-major ``vec``) with ``W`` as in the
            module docstring: ``K`` probes for ``"spectral"``, ``K = n`` and ``W = I / √n`` for
            ``"frobenius"``. The constant is 1: the loss equals the squared residual exactly.
        """
        return design(self._weights, self.bandwidth), self._target_w.flatten(-2)

    def least_squares(self) -> LinearLeastSquares:
        """``r = D c − t`` from :meth:`design`; the loss is ``‖r‖²`` and every batch member is its own problem."""
        D, t = self.design()
        return LinearLeastSquares(
            key="band",
            apply=lambda c: c @ D.mT,
            adjoint=lambda r: r @ D,
            rhs=t,
            block_dims=(-1,),
            block_name="matrix",
            distinct_blocks=1,  # one design matrix for the whole batch
            gram_factor=D,
            gram_exact=True,
        )

    # -- optimisation -------------------------------------------------------------------------
    def init_params(self, generator: torch.Generator) -> Params:
        """``band = 0`` (the normal-equations residual is 1 there); ``generator`` is not needed."""
        shape = (*self.target.shape[:-2], 2 * self.bandwidth + 1)
        return {"band": torch.zeros(shape, dtype=self.dtype, device=self.device)}

    def loss(self, params: Params) -> torch.Tensor:
        band = _band(params, self)
        approx = self.matrix(band)
        if self.loss_kind == "frobenius":
            return (self.target - approx).square().sum() / self.n
        return (self._target_w - approx @ self._weights).square().sum()

    def normalized(self) -> Normalization | None:
        r"""The problem of the target :math:`2^{-e} T` (largest entry in ``[0.5, 1)``); restores :math:`c = 2^{e} c'`.

        The best band is linear in the target, :math:`c(2^{-e} T) = 2^{-e} c(T)`; the probes stay.
        """
        exponent = power_of_two_scale(self.target)
        check_representable("target", exponent, self.dtype, "the best band")
        if exponent == 0:
            return None
        work = self.rebuild(target=scale_by_power_of_two(self.target, -exponent), probes=self.probes)

        def restore(params: Params) -> Params:
            return {"band": scale_by_power_of_two(params["band"], exponent)}

        # band' = 2^-e band and every residual scales by 2^-e: the (squared) loss by 2^-2e
        return Normalization(
            problem=work, restore=restore, exponent=exponent, param_exponent=-exponent, loss_exponent=-2 * exponent
        )

    # -- answers ------------------------------------------------------------------------------
    def solution(self, params: Params) -> torch.Tensor:
        """The band parameters ``c`` (offsets ``−b..b``).  # shape: (..., 2b+1)"""
        return params["band"].detach()

    def residual(self, params: Params) -> torch.Tensor:
        """Relative residual of the normal equations ``‖G c − h‖ / (‖G c‖ + ‖h‖)`` (worst over a batch).

        ``G c − h`` is half the gradient; the ratio is 1 at ``c = 0``, 0 at the least-squares
        answer even when ``T`` is not banded Toeplitz, and unchanged when ``T`` is scaled.
        """
        return normal_equations_gap(self._gram, self._rhs, _band(params, self).detach(), dim=(-1,))

    def reference(self) -> torch.Tensor:
        """The least-squares bands from ``torch.linalg.lstsq`` on :meth:`design`.  # shape: (..., 2b+1)"""
        if not hasattr(self, "_reference"):
            self._reference = lstsq_bands(*self.design())
        return self._reference

    def reference_params(self) -> Params:
        return {"band": self.reference().clone()}

    def error(self, params: Params) -> torch.Tensor:
        """``‖c − c_ref‖ / ‖c_ref‖`` (absolute where ``c_ref = 0``; worst over a batch)."""
        return relative_error(_band(params, self).detach(), self.reference(), dim=(-1,))

    def metrics(self, params: Params) -> dict[str, float]:
        """``residual``, ``error`` and ``loss`` (the objective's value)."""
        return super().metrics(params) | {"loss": lambda: self.loss(params)}

    def condition_estimate(self) -> float | None:
        """Condition number of the loss's Hessian ``2G`` (what governs gradient descent here)."""
        return float(torch.linalg.cond(self._gram.double()))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": self.n,
            "batch": list(self.target.shape[:-2]),
            "bandwidth": self.bandwidth,
            "parameters": 2 * self.bandwidth + 1,
            "loss": self.loss_kind,
            "num_probes": None if self.probes is None else int(self.probes.shape[0]),
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def _band(params: Params, problem: ToeplitzProblem) -> torch.Tensor:
    band = params["band"]
    expected = (*problem.target.shape[:-2], 2 * problem.bandwidth + 1)
    if tuple(band.shape) != expected:
        raise ShapeError(
            f"params['band']: expected shape {expected} (2b+1 = {expected[-1]}), received {tuple(band.shape)}"
        )
    return band


def _ndim(value: Any) -> int | None:
    """Number of dimensions of array-like input, ``None`` when it is not array-like (check_matrix says why)."""
    if isinstance(value, torch.Tensor):
        return value.dim()
    try:
        return int(numpy.ndim(value))
    except Exception:  # ragged lists and the like: leave the message to the validators
        return None


@gdla.hookimpl
def register_problems(register: Any) -> None:
    register(ToeplitzProblem)
