r"""The ``sparse`` problem: learn a masked operator from data (seed 002).

The operator is :math:`S = \mathrm{Init} + \Omega \odot U`; only ``U`` learns, and only where the
0/1 mask :math:`\Omega` is 1. Given data ``X`` and ``Y`` (both ``(n, p)``) it is fitted so that
``k = hops`` applications, each followed by the elementwise activation :math:`\sigma`, map ``X``
to ``Y``:

.. math::

    \hat Y = \sigma(S\,\sigma(S \cdots \sigma(S X))), \qquad
    L(U) = \|Y - \hat Y\|_F \ (\text{"frobenius", the seed's}) \quad\text{or}\quad
    \tfrac{1}{np}\|Y - \hat Y\|_F^2 \ (\text{"mse"}).

For one hop without activation this is a masked least-squares problem that splits into one
small least-squares problem per row; its minimum-norm answer (where gradient descent from
``U = 0`` converges) is :meth:`SparseProblem.reference`. Otherwise there is no closed form.
"""

from __future__ import annotations

import math
from typing import Any

import torch

import gdla
from gdla.capabilities import LinearLeastSquares, MaskedOperatorLoss
from gdla.errors import InputError, ShapeError
from gdla.norms import relative_gap, relative_norm
from gdla.options import Option
from gdla.problem import Params, Problem
from gdla.scaling import Normalization, check_representable, power_of_two_scale, scale_by_power_of_two
from gdla.validation import check_choice, check_int, check_matrix
from gdla_plugins.problems._common import as_working_float
from gdla_plugins.problems._sparse_data import ACTIVATIONS, identity
from gdla_plugins.problems._sparse_examples import SparseExamples
from gdla_plugins.problems._sparse_pattern import Pattern
from gdla_plugins.problems._sparse_storage import DenseStorage, PatternStorage, storage_for

__all__ = ["ACTIVATIONS", "LOSSES", "SparseProblem"]

LOSSES = ("frobenius", "mse")


class SparseProblem(SparseExamples, Problem):
    """Fit the masked operator ``S = Init + Ω ⊙ U`` so that ``hops`` applications map ``X`` to ``Y``.

    Args:
        X: inputs, one example per column.  # shape: (n, p)
        Y: targets.  # shape: (n, p)
        omega: the mask, 0/1 (or bool); default all ones (``U`` is dense).  # shape: (n, n)
        init: the fixed part ``Init``; default zeros. With ``hops >= 2`` pass a small random
            ``Init`` (as the seed does): at ``S = 0`` the gradient vanishes.  # shape: (n, n)
        hops: ``k``, how many times ``S`` is applied (>= 1).
        activation: ``None``/``"identity"``, ``"relu"``, ``"tanh"``, ``"sigmoid"`` or
            ``"cube"``, applied after every hop.
        loss: ``"frobenius"`` (``‖Y − Ŷ‖_F``, the seed's) or ``"mse"`` (``‖Y − Ŷ‖_F² / (n p)``).

    Attributes ``X``, ``Y``, ``omega`` (0/1 in the problem's dtype), ``init``, ``hops``,
    ``activation`` (``None`` when linear) and ``loss_kind`` hold the data. ``U`` starts at 0.
    """

    name = "sparse"
    summary = "masked sparse operator S = Init + Omega*U fitted so that S^k X = Y (optionally nonlinear)"
    options = {
        "hops": Option(default=1, doc="apply S this many times: fit S^k X ≈ Y"),
        "activation": Option(default=None, doc="after every hop: 'relu', 'tanh', 'sigmoid', 'cube' or none"),
        "loss": Option(default="frobenius", doc="'frobenius' (‖Y − Ŷ‖_F, the seed's) or 'mse'"),
        "storage": Option(default="dense", doc="example only: 'dense' or 'sparse' (U stored on Ω's pattern)"),
        "per_row": Option(default=6, doc="example only, sparse storage: free entries per row"),
        "columns": Option(
            default=8,
            doc="columns of X: the example's (default 8), or a sparse --matrix's (default max(8, 2 × widest row))",
        ),
        "omega": Option(default=None, doc="Python API: the 0/1 mask Ω (dense, or a torch sparse tensor)"),
        "init": Option(default=None, doc="Python API: Init, on Ω's pattern for sparse storage"),
    }
    fused = True
    #: ``gdla solve sparse --matrix FILE.mtx``: a coordinate file stays sparse (see :meth:`from_matrix`).
    accepts_sparse_matrix = True

    def __init__(
        self,
        X: Any,  # shape: (n, p)
        Y: Any,  # shape: (n, p)
        *,
        omega: Any = None,  # shape: (n, n)
        init: Any = None,  # shape: (n, n)
        hops: int = 1,
        activation: str | None = None,
        loss: str = "frobenius",
    ) -> None:
        X = as_working_float(check_matrix(X, "X", batch=False))
        Y = as_working_float(check_matrix(Y, "Y", batch=False))
        if Y.shape != X.shape:
            raise ShapeError(
                f"Y: expected the shape of X, {tuple(X.shape)} (n rows, one column per example), "
                f"received {tuple(Y.shape)}"
            )
        if Y.device != X.device:
            raise InputError(f"Y: expected a tensor on X's device {X.device}, received one on {Y.device}")
        n = X.shape[0]
        #: where ``U`` lives: an ``(n, n)`` tensor, or its values on Ω's pattern (a torch sparse ``omega``)
        self.storage: DenseStorage | PatternStorage = storage_for(
            omega, init, n, torch.promote_types(X.dtype, Y.dtype), X.device
        )
        dtype = self.storage.dtype
        self.X, self.Y = X.to(dtype), Y.to(dtype)
        self.omega, self.init = self.storage.omega, self.storage.init
        self.hops = check_int(hops, "hops", minimum=1)
        activation = None if activation == "identity" else activation
        if activation is not None:
            check_choice(activation, "activation", ["identity", *ACTIVATIONS])
        self.activation: str | None = activation
        self.loss_kind = check_choice(loss, "loss", LOSSES)
        self.n, self.p = n, X.shape[1]

    @property
    def pattern(self) -> Pattern | None:
        """Ω's pattern when ``U`` is stored on it (a torch sparse ``omega``), else ``None``."""
        return self.storage.pattern

    @property
    def init_values(self) -> torch.Tensor:
        """The values of ``Init`` that ``U`` adds to: ``(nnz,)`` on the pattern, the ``(n, n)`` ``Init`` otherwise."""
        return self.storage.init_values

    @property
    def linear(self) -> bool:
        """One hop, no activation: the case with a closed-form (least-squares) answer."""
        return self.hops == 1 and self.activation is None

    @property
    def quadratic(self) -> bool:
        """Whether the loss is quadratic in ``U`` (read by solvers such as ``cg``): one linear hop
        with ``loss="mse"``; the seed's ``‖Y − Ŷ‖_F`` is the square root of a quadratic."""
        return self.linear and self.loss_kind == "mse"

    def least_squares(self) -> LinearLeastSquares | None:
        r"""One linear hop: ``r = (Init + Ω ⊙ U) X − Y``, linear in ``U``; ``None`` otherwise.

        ``J d = (Ω ⊙ d) X`` and ``Jᵀ r = Ω ⊙ (r Xᵀ)``: row ``i`` of ``U`` only meets row ``i`` of
        ``S X``, so every row is its own problem, whose Gram matrix is a principal submatrix of
        ``X Xᵀ`` (its spectrum lies inside ``X Xᵀ``'s). The loss is ``‖r‖_F`` or ``mean(r²)``, both
        increasing in ``‖r‖²``, so the minimiser is the least-squares one.
        """
        if not self.linear:
            return None
        loss_of = (lambda r: r.square().mean()) if self.loss_kind == "mse" else (lambda r: torch.linalg.matrix_norm(r))
        curvature = 2.0 / self.Y.numel() if self.loss_kind == "mse" else None  # the Frobenius norm is not quadratic
        return self.storage.least_squares(
            self.X,
            self.Y,
            loss_of=loss_of,
            block_name="row",
            gram_factor=self.X.mT,  # every row's Gram is a principal submatrix of X Xᵀ
            loss_curvature=curvature,
        )

    def sparse_storage(self) -> tuple[tuple[int, ...], int] | None:
        """``((n, n), nnz)`` in sparse storage (``U`` and ``Init`` on Ω's pattern), ``None`` in the dense form."""
        return self.storage.stored()

    def fused_reason(self) -> str | None:
        """The dense form fuses ``Init + Ω ⊙ U`` (``gdla.ops.masked_hadamard``); the values form has no mask to fuse
        (the storage says which)."""
        return self.storage.fused_reason

    def fused_loss(self) -> MaskedOperatorLoss | None:
        """In dense storage: the masked operator fit as it stands (data, hops, activation and loss)."""
        activation = None if self.activation in (None, "identity") else self.activation
        return self.storage.fused_loss(self.X, self.Y, self.hops, activation, self.loss_kind)

    def update_masks(self) -> Params:
        """``U`` moves only where ``Ω`` is 1: the fused momentum step uses the mask directly
        (none for the values-only form, where every stored value is free)."""
        return self.storage.update_masks()

    # -- optimisation -------------------------------------------------------------------------
    def init_params(self, generator: torch.Generator) -> Params:
        """``U = 0``, like the seed: gradient descent from there ends at the minimum-norm answer."""
        return {"U": torch.zeros(self.storage.shape, dtype=self.dtype, device=self.device)}

    def operator(self, U: torch.Tensor) -> torch.Tensor:
        """``S = Init + Ω ⊙ U``, differentiable in ``U``.  # U: (n, n) -> (n, n); values form: (nnz,) -> (nnz,)"""
        return self.storage.operator(U)

    def forward(self, S: torch.Tensor) -> torch.Tensor:
        """``Ŷ``: apply ``S`` (then the activation) ``hops`` times to ``X``.  # -> (n, p)"""
        act = ACTIVATIONS.get(self.activation or "", identity)
        out = self.X
        for _ in range(self.hops):  # a handful of hops: the loop is over layers, not data
            out = act(self.storage.matmul(S, out))
        return out

    def _loss_of(self, S: torch.Tensor) -> torch.Tensor:
        diff = self.Y - self.forward(S)
        if self.loss_kind == "mse":
            return diff.square().mean()
        return torch.linalg.matrix_norm(diff, ord="fro")

    def loss(self, params: Params) -> torch.Tensor:
        return self._loss_of(self.operator(self._u(params)))

    def loss_and_grad(self, params: Params, backend: str = "autograd") -> tuple[torch.Tensor, Params]:
        """With ``backend="fused"`` ``S`` comes from the custom op ``gdla.ops.masked_hadamard``
        (forward ``Init + Ω ⊙ U``, backward ``Ω ⊙ ∂S``); autograd differentiates the rest."""
        check_choice(backend, "backend", ("autograd", "fused"))
        if backend != "fused" or self.fused_reason() is not None:  # values only: no mask to fuse
            return super().loss_and_grad(params, backend)
        from gdla import ops  # the compiled extension loads only when asked for

        with torch.enable_grad():
            U = self._u(params).detach().requires_grad_(True)
            loss = self._loss_of(ops.masked_hadamard(self.init, self.omega, U))
            (grad,) = torch.autograd.grad(loss, [U])
        return loss.detach(), {"U": grad}

    def normalized(self) -> Normalization | None:
        r"""The problem in normalised units: :math:`X' = 2^{-a} X`, :math:`S' = 2^{-b} S`, :math:`Y' = 2^{-a-kb} Y`.

        With ``k = hops`` and a positively homogeneous activation (none or ``relu``),
        :math:`\hat Y(S', X') = 2^{-a-kb}\,\hat Y(S, X)`, so ``U`` restores as :math:`2^{b} U'`.
        ``a`` puts ``X``'s largest entry in ``[0.5, 1)``, ``b = ⌊(e_Y − a) / k⌋`` brings ``Y`` near 1
        (from ``Init`` when ``Y = 0``). Other activations are not homogeneous: ``None`` (solved as given).
        """
        if self.activation not in (None, "relu"):
            return None
        a = power_of_two_scale(self.X)
        if bool((self.Y != 0).any()):
            b = (power_of_two_scale(self.Y) - a) // self.hops
        else:
            b = power_of_two_scale(self.init_values)
        check_representable("Y", b, self.dtype, "the operator S")
        if a == 0 and b == 0:
            return None
        work = self.rebuild(
            X=scale_by_power_of_two(self.X, -a),
            Y=scale_by_power_of_two(self.Y, -a - self.hops * b),
            omega=self.omega,
            init=scale_by_power_of_two(self.init, -b),
        )

        def restore(params: Params) -> Params:
            return {"U": scale_by_power_of_two(params["U"], b)}

        # U' = 2^-b U; the residual Y − Ŷ scales by 2^(-a - hops b): the loss once (frobenius) or twice (mse)
        residual = -a - self.hops * b
        loss = residual if self.loss_kind == "frobenius" else 2 * residual
        return Normalization(problem=work, restore=restore, exponent=b, param_exponent=-b, loss_exponent=loss)

    # -- answers ------------------------------------------------------------------------------
    def solution(self, params: Params) -> torch.Tensor:
        """The learned operator ``S = Init + Ω ⊙ U``.  # shape: (n, n), a sparse COO tensor in the values form"""
        return self.storage.answer(self.operator(self._u(params).detach()))

    def residual(self, params: Params) -> torch.Tensor:
        r"""The stop test.

        One linear hop: the relative residual of the masked normal equations
        ``Ω ⊙ (S X Xᵀ) = Ω ⊙ (Y Xᵀ)``,

        .. math:: \frac{\|\Omega \odot ((S X - Y) X^T)\|_F}{\|\Omega \odot (S X X^T)\|_F + \|\Omega \odot (Y X^T)\|_F},

        which is 0 exactly at a least-squares answer (even when no exact fit exists), at most 1,
        unchanged when ``Y`` and ``Init`` are scaled together, and 0 when both terms vanish. It
        does not need the gradient at the start to be large, so an ``Init`` that is already
        nearly optimal is no problem. (On the pattern both terms are values there, never ``n × n``.)

        Otherwise: the relative fit residual ``‖Ŷ − Y‖_F / ‖Y‖_F`` (absolute if ``Y = 0``).
        """
        with torch.no_grad():
            if not self.linear:
                return self.fit_residual(params)
            S = self.operator(self._u(params).detach())
            fitted, target = self.storage.normal_terms(S, self.X, self.Y)
            dims = tuple(range(-fitted.dim(), 0))  # (n, n) dense, (nnz,) on the pattern
            return relative_gap(fitted, target, dims)  # scaled: norms of 1e-200 data must not underflow

    def fit_residual(self, params: Params) -> torch.Tensor:
        """``‖Ŷ − Y‖_F / ‖Y‖_F`` in scaled arithmetic (NaN if ``Y = 0`` and ``Ŷ ≠ 0``: undefined)."""
        with torch.no_grad():
            diff = self.forward(self.operator(self._u(params).detach())) - self.Y
            return relative_norm(diff, self.Y, dim=(-2, -1))

    def reference(self) -> torch.Tensor:
        """The minimum-norm masked least-squares operator (one linear hop only).

        Row ``i`` with free set ``J = {j : Ω_ij = 1}`` solves ``U_i[J] X[J, :] ≈ Y_i − Init_i X``:
        ``U_i[J] = (Y_i − Init_i X) · pinv(X[J, :])``. All rows at once: ``pinv`` of the batch
        ``Ω_i[:, None] ⊙ X`` (rows outside ``J`` zeroed, which gives zero columns in the pinv).
        Computed in float64 on the CPU; memory ``n² p``.

        Raises:
            InputError: for ``hops > 1`` or an activation, where no closed form exists.
        """
        if not self.linear:
            raise InputError(
                f"reference: no closed form for hops={self.hops}, activation={self.activation!r}; "
                "only one hop without activation is a (masked) linear least-squares problem"
            )
        if not hasattr(self, "_reference"):
            self._reference = self.storage.reference(self.X, self.Y)
        return self._reference

    def reference_params(self) -> Params | None:
        """``U = Ω ⊙ (S* − Init)`` for one linear hop (no closed form otherwise)."""
        return self.storage.reference_params(self.reference()) if self.linear else None

    def error(self, params: Params) -> torch.Tensor:
        """``‖S − S_ref‖_F / ‖S_ref‖_F``; NaN when there is no reference (``hops > 1`` or an activation)."""
        if not self.linear:
            return torch.full((), math.nan, dtype=self.dtype, device=self.device)
        S_ref, dims = self.storage.comparable(self.reference())  # on the pattern: the values
        S = self.storage.comparable(self.solution(params))[0]
        return relative_norm(S - S_ref, S_ref, dim=dims)

    def metrics(self, params: Params) -> dict[str, float]:
        """``residual``, ``error`` (NaN without a closed form: null in ``Result.to_dict``) and ``fit``
        (``‖Ŷ − Y‖_F / ‖Y‖_F``, which is not 0 when no exact fit exists)."""
        return super().metrics(params) | {"fit": lambda: self.fit_residual(params)}

    def _u(self, params: Params) -> torch.Tensor:
        """``params["U"]`` checked: ``(n, n)``, or ``(nnz,)`` in the values form."""
        return self.storage.check_u(params["U"])

    def condition_estimate(self) -> float | None:
        """For one linear hop: ``σ_max(X)² / σ_min(X)²`` over the non-zero singular values, the
        condition of the unmasked Hessian ``X Xᵀ``; ``None`` otherwise."""
        if not self.linear:
            return None
        sv = torch.linalg.svdvals(self.X.detach().double())
        keep = sv[sv > sv[0] * max(self.X.shape) * torch.finfo(self.dtype).eps]
        return float((keep[0] / keep[-1]) ** 2) if keep.numel() else None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": self.n,
            "p": self.p,
            "hops": self.hops,
            "activation": self.activation,
            "loss": self.loss_kind,
            "free_entries": self.storage.free_entries(),
            "storage": self.storage.kind,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


@gdla.hookimpl
def register_problems(register: Any) -> None:
    register(SparseProblem)
