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
from gdla.errors import InputError, ResourceError, ShapeError
from gdla.memory import available_bytes, format_bytes
from gdla.options import Option
from gdla.problem import Params, Problem
from gdla.scaling import Normalization, check_representable, power_of_two_scale, scale_by_power_of_two
from gdla.validation import check_choice, check_finite, check_int, check_matrix
from gdla_plugins.problems._common import (
    as_working_float,
    cpu_generator,
    joint_power_of_two_scaled,
    relative_norm,
    safe_scale,
)
from gdla_plugins.problems._sparse_data import (
    ACTIVATIONS,
    EXAMPLE_SEED,
    INIT_NOISE,
    identity,
    random_dense_example,
    sparse_matrix_data,
)
from gdla_plugins.problems._sparse_pattern import Pattern, is_sparse, random_pattern_example

__all__ = ["ACTIVATIONS", "LOSSES", "SparseProblem"]

LOSSES = ("frobenius", "mse")


class SparseProblem(Problem):
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
        dtype = torch.promote_types(X.dtype, Y.dtype)
        #: Ω's pattern when Ω is a torch sparse tensor: U and Init are then values on it, shape (nnz,)
        self.pattern: Pattern | None = None
        if is_sparse(omega) or is_sparse(init):
            self._init_sparse(X, Y, omega, init, dtype, hops, activation, loss)
            return
        if init is None:
            init = torch.zeros(n, n, dtype=dtype, device=X.device)
        else:
            init = as_working_float(check_matrix(init, "init", batch=False))
            _check_square_of(init, "init", n)
            dtype = torch.promote_types(dtype, init.dtype)
        self.X = X.to(dtype)
        self.Y = Y.to(dtype=dtype)
        self.init = init.to(dtype=dtype, device=X.device)
        self.omega = _check_mask(omega, n, dtype, X.device)
        self.hops = check_int(hops, "hops", minimum=1)
        if activation == "identity":
            activation = None
        if activation is not None:
            check_choice(activation, "activation", ["identity", *ACTIVATIONS])
        self.activation: str | None = activation
        self.loss_kind = check_choice(loss, "loss", LOSSES)
        self.n, self.p = n, X.shape[1]
        # For the linear one-hop case the gradient is Ω ⊙ ((S X − Y) Xᵀ): keep X Xᵀ and Y Xᵀ.
        self._gram = self.X @ self.X.T
        self._target_x = self.Y @ self.X.T

    def _init_sparse(
        self, X: torch.Tensor, Y: torch.Tensor, omega: Any, init: Any, dtype: torch.dtype, *settings: Any
    ) -> None:
        """The values-only form: ``U`` and ``Init`` stored on Ω's pattern, products with CSR ``S``."""
        n = X.shape[0]
        if not is_sparse(omega):
            raise InputError(
                "omega: a sparse init needs a sparse omega (torch sparse tensor) with init's pattern, received "
                + ("None" if omega is None else f"a dense {type(omega).__name__}")
            )
        self.pattern = Pattern(omega, n, X.device)
        self.X, self.Y = X.to(dtype), Y.to(dtype)
        self.init_values = (
            torch.zeros(self.pattern.nnz, dtype=dtype, device=X.device)
            if init is None
            else self.pattern.values_of(init, "init", dtype)
        )
        check_finite(self.init_values, "init")
        self.omega = self.pattern.to_sparse(torch.ones(self.pattern.nnz, dtype=dtype, device=X.device))
        self.init = self.pattern.to_sparse(self.init_values)
        hops, activation, loss = settings
        self.hops = check_int(hops, "hops", minimum=1)
        activation = None if activation == "identity" else activation
        if activation is not None:
            check_choice(activation, "activation", ["identity", *ACTIVATIONS])
        self.activation = activation
        self.loss_kind = check_choice(loss, "loss", LOSSES)
        self.n, self.p = n, X.shape[1]

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
        omega, X = self.omega, self.X
        loss_of = (lambda r: r.square().mean()) if self.loss_kind == "mse" else (lambda r: torch.linalg.matrix_norm(r))
        curvature = 2.0 / self.Y.numel() if self.loss_kind == "mse" else None  # the Frobenius norm is not quadratic
        pattern = self.pattern
        if pattern is not None:  # x = U's values: the rows stay independent but share one vector (one block)
            return LinearLeastSquares(
                key="U",
                apply=lambda d: pattern.matmul(d, X),  # also under torch.func transforms
                adjoint=lambda r: pattern.masked_outer(r, X),
                rhs=self.Y - pattern.csr(self.init_values) @ X,
                loss_of=loss_of,
                block_name="row",
                gram_factor=X.mT,  # every row's Gram is a principal submatrix of X Xᵀ
                block_index=pattern.rows,  # the stored values of one row are one problem
                loss_curvature=curvature,
            )
        return LinearLeastSquares(
            key="U",
            apply=lambda d: (omega * d) @ X,
            adjoint=lambda r: omega * (r @ X.mT),
            rhs=self.Y - self.init @ X,
            loss_of=loss_of,
            block_dims=(-1,),
            block_name="row",
            gram_factor=X.mT,
            loss_curvature=curvature,
        )

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_matrix(cls, matrix: Any, *, columns: int | None = None, **options: Any) -> SparseProblem:
        """The problem of learning ``matrix`` (``gdla solve sparse --matrix FILE``).

        A dense ``matrix``: learn the operator that maps ``X = I`` to it, ``S ≈ matrix`` where
        ``omega`` (default: everywhere) allows.

        A torch sparse ``matrix`` (COO or CSR; what the command line makes of a coordinate-format
        ``.mtx``) stays sparse end to end, in memory ``O(nnz + n · columns)``, never ``n²``:

        * its stored positions are ``Ω`` (an explicitly stored zero is a free position too);
        * with values, the operator to learn is the matrix itself: ``Init = 0`` (or ``init``, on
          the pattern), ``X = randn(n, columns)`` from a generator seeded with 123 and
          ``Y = σ(M ⋯ σ(M X))`` (``hops`` times, with the ``activation``);
        * a ``pattern`` file (``bool`` values: positions only) has no operator to learn, so the
          pattern gets the example's rule (``example(n, storage="sparse")``): a random ground
          truth ``S* = Init + U*`` on the pattern, ``Init`` of variance ``0.01/r`` and ``U*`` of
          ``1/r`` per entry (``r`` the mean entries per row), ``X = randn(n, columns)``,
          ``Y = σ(S* ⋯ σ(S* X))``; the seeded generator makes it the same on every run.

        ``columns`` defaults to ``max(8, 2 · w)`` with ``w`` the most entries in one row: every
        row's least-squares problem is then over-determined and well conditioned, so for one
        linear hop the answer (:meth:`reference`) *is* the matrix (the ground truth). Fewer
        columns than a row's entries give that row the minimum-norm fit instead.

        Args:
            matrix: the operator, dense ``(n, n)`` or torch sparse ``(n, n)``.
            columns: sparse ``matrix`` only: columns of the random ``X``.
            **options: the constructor's (``hops``, ``activation``, ``loss``, ``init``; ``omega``
                only with a dense ``matrix``).

        Returns:
            The problem; in sparse storage for a sparse ``matrix``.

        Raises:
            ShapeError: a matrix that is not square.
            InputError: complex or non-finite values, an empty sparse matrix, ``omega`` given
                with a sparse matrix (its pattern is Ω), ``columns`` with a dense one.
            ResourceError: ``X`` and ``Y`` (``n × columns`` each) would not fit in memory.
        """
        if is_sparse(matrix):
            X, Y, omega, init = sparse_matrix_data(matrix, columns, options)
            return cls(X, Y, omega=omega, init=init, **options)
        if columns is not None:
            raise InputError(
                "columns: only for a sparse matrix (a coordinate .mtx file or a torch sparse tensor), whose X has "
                f"that many random columns; a dense matrix is learned from X = I, received columns={columns!r}"
            )
        target = check_matrix(matrix, "matrix", batch=False)
        if target.shape[0] != target.shape[1]:
            raise ShapeError(
                f"matrix: expected a square operator (n, n) to learn, received shape {tuple(target.shape)}"
            )
        return cls(torch.eye(target.shape[0], dtype=target.dtype, device=target.device), target, **options)

    @classmethod
    def estimated_bytes(cls, size: int, dtype: torch.dtype = torch.float64, **options: Any) -> int:
        """Dense ``Init``, ``Ω``, ``U``, ``S``, gradients and the row-wise reference: about 12 n² numbers.

        With ``storage="sparse"``: about 20 numbers per stored entry (indices, values, CG vectors,
        gathered rows) and 12 per entry of the ``(n, p)`` data.
        """
        if options.get("storage") == "sparse":
            nnz = size * int(options.get("per_row", 6))
            return (20 * nnz + 12 * size * int(options.get("columns", 8))) * 8
        return 12 * size * size * (torch.finfo(dtype).bits // 8)

    @classmethod
    def example(
        cls,
        size: int | None = None,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        hops: int = 1,
        storage: str = "dense",
        per_row: int = 6,
        columns: int = 8,
        **options: Any,
    ) -> SparseProblem:
        """Seed 002's scenario, or a random consistent one of size ``n``.

        With ``storage="sparse"`` (and ``size``): a sparse ``Ω`` with about ``per_row`` free
        entries per row, ``X = randn(n, columns)``, ``U`` and ``Init`` stored on the pattern
        (memory ``O(n · (per_row + columns))``, so ``n`` in the millions fits).

        Without ``size``: ``n = 3``, ``X = e₁``, ``Y = 2 e₃``, ``Ω`` all ones and
        ``Init = 0.1 · rand(3, 3)`` from a generator seeded with ``123 + seed``.

        With ``size = n``: a random mask with about half its entries 1 (at least one per row),
        ``Init = 0.1 · randn(n, n) / √n``, ``X = randn(n, 2n)`` and ``Y`` produced by a random
        ground-truth operator ``S* = Init + Ω ⊙ U*`` (``hops`` times, with ``options``'
        activation), so an exact fit exists; for one linear hop ``S*`` is the unique answer.
        """
        seed = check_int(seed, "seed")
        hops = check_int(hops, "hops", minimum=1)
        generator = cpu_generator(EXAMPLE_SEED + seed)
        if size is None:
            X = torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
            Y = torch.tensor([[0.0], [0.0], [2.0]], dtype=torch.float64)
            init = INIT_NOISE * torch.rand(3, 3, generator=generator, dtype=torch.float64)
            return cls(X.to(dtype), Y.to(dtype), init=init.to(dtype), hops=hops, **options)
        n = check_int(size, "size", minimum=1)
        act = ACTIVATIONS.get(options.get("activation") or "", identity)
        if check_choice(storage, "storage", ("dense", "sparse")) == "sparse":
            per_row = check_int(per_row, "per_row", minimum=1)
            omega, init, truth, X = random_pattern_example(
                n, per_row, check_int(columns, "columns", minimum=1), generator
            )
            Y = X
            for _ in range(hops):
                Y = act(truth @ Y)
            return cls(X.to(dtype), Y.to(dtype), omega=omega, init=init.to(dtype), hops=hops, **options)
        needed = cls.estimated_bytes(n, dtype)
        if available_bytes() is not None and needed > available_bytes():
            raise ResourceError(
                f"size: the dense sparse-problem example of size {n} needs about {format_bytes(needed)} "
                f"({format_bytes(available_bytes() or 0)} available): pass storage='sparse' "
                "(-p storage=sparse) to store U only on a sparse mask, and solve it with cg (what auto picks)"
            )
        omega, init, truth, X = random_dense_example(n, generator)
        Y = X
        for _ in range(hops):
            Y = act(truth @ Y)
        return cls(X.to(dtype), Y.to(dtype), omega=omega, init=init.to(dtype), hops=hops, **options)

    def sparse_storage(self) -> tuple[tuple[int, ...], int] | None:
        """``((n, n), nnz)`` in sparse storage (``U`` and ``Init`` on Ω's pattern), ``None`` in the dense form."""
        return None if self.pattern is None else ((self.n, self.n), self.pattern.nnz)

    def fused_reason(self) -> str | None:
        """The dense form fuses ``Init + Ω ⊙ U`` (``gdla.ops.masked_hadamard``); the values form has no mask to fuse."""
        if self.pattern is not None:
            return "problem 'sparse' stores U only on omega's pattern: there is no mask product to fuse"
        return None

    def fused_loss(self) -> MaskedOperatorLoss | None:
        """In dense storage: the masked operator fit as it stands (data, hops, activation and loss)."""
        if self.pattern is not None:
            return None
        activation = None if self.activation in (None, "identity") else self.activation
        return MaskedOperatorLoss(self.init, self.omega, self.X, self.Y, self.hops, activation, self.loss_kind)

    def update_masks(self) -> Params:
        """``U`` moves only where ``Ω`` is 1: the fused momentum step uses the mask directly
        (none for the values-only form, where every stored value is free)."""
        return {} if self.pattern is not None else {"U": self.omega}

    # -- data ---------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.X.dtype

    @property
    def device(self) -> torch.device:
        return self.X.device

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> SparseProblem:
        target = self.conversion(dtype, device)
        if target is None:
            return self
        dtype, device = target
        omega, init = self.omega, self.init
        if self.pattern is not None:
            omega, init = self.pattern.to_sparse(torch.ones_like(self.init_values)), self.init
        return type(self)(
            self.X.to(dtype=dtype, device=device),
            self.Y.to(dtype=dtype, device=device),
            omega=omega.to(dtype=dtype, device=device),
            init=init.to(dtype=dtype, device=device),
            hops=self.hops,
            activation=self.activation,
            loss=self.loss_kind,
        )

    # -- optimisation -------------------------------------------------------------------------
    def init_params(self, generator: torch.Generator) -> Params:
        """``U = 0``, like the seed: gradient descent from there ends at the minimum-norm answer."""
        shape = (self.pattern.nnz,) if self.pattern is not None else (self.n, self.n)
        return {"U": torch.zeros(shape, dtype=self.dtype, device=self.device)}

    def operator(self, U: torch.Tensor) -> torch.Tensor:
        """``S = Init + Ω ⊙ U``, differentiable in ``U``.  # U: (n, n) -> (n, n); values form: (nnz,) -> (nnz,)"""
        if self.pattern is not None:
            return self.init_values + U
        return self.init + self.omega * U

    def forward(self, S: torch.Tensor) -> torch.Tensor:
        """``Ŷ``: apply ``S`` (then the activation) ``hops`` times to ``X``.  # -> (n, p)"""
        act = ACTIVATIONS.get(self.activation or "", identity)
        out = self.X
        for _ in range(self.hops):  # a handful of hops: the loop is over layers, not data
            out = act(self.pattern.matmul(S, out) if self.pattern is not None else S @ out)
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
        if backend != "fused" or self.pattern is not None:  # values only: no mask to fuse
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
        init_values = self.init_values if self.pattern is not None else self.init
        if bool((self.Y != 0).any()):
            b = (power_of_two_scale(self.Y) - a) // self.hops
        else:
            b = power_of_two_scale(init_values)
        check_representable("Y", b, self.dtype, "the operator S")
        if a == 0 and b == 0:
            return None
        work = type(self)(
            scale_by_power_of_two(self.X, -a),
            scale_by_power_of_two(self.Y, -a - self.hops * b),
            omega=self.omega,
            init=scale_by_power_of_two(self.init, -b),
            hops=self.hops,
            activation=self.activation,
            loss=self.loss_kind,
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
        S = self.operator(self._u(params).detach())
        return self.pattern.to_sparse(S) if self.pattern is not None else S

    def residual(self, params: Params) -> torch.Tensor:
        r"""The stop test.

        One linear hop: the relative residual of the masked normal equations
        ``Ω ⊙ (S X Xᵀ) = Ω ⊙ (Y Xᵀ)``,

        .. math:: \frac{\|\Omega \odot ((S X - Y) X^T)\|_F}{\|\Omega \odot (S X X^T)\|_F + \|\Omega \odot (Y X^T)\|_F},

        which is 0 exactly at a least-squares answer (even when no exact fit exists), at most 1,
        unchanged when ``Y`` and ``Init`` are scaled together, and 0 when both terms vanish. It
        does not need the gradient at the start to be large, so an ``Init`` that is already
        nearly optimal is no problem.

        Otherwise: the relative fit residual ``‖Ŷ − Y‖_F / ‖Y‖_F`` (absolute if ``Y = 0``).
        """
        with torch.no_grad():
            if not self.linear:
                return self.fit_residual(params)
            if self.pattern is not None:  # Ω ⊙ (R Xᵀ) on the pattern, never n × n
                S, X = self.operator(self._u(params)), self.X
                fitted = self.pattern.masked_outer(self.pattern.matmul(S, X), X)
                if not hasattr(self, "_target_values"):  # Ω ⊙ (Y Xᵀ) is fixed: once per problem
                    self._target_values = self.pattern.masked_outer(self.Y, X)
                fitted, target = joint_power_of_two_scaled([fitted, self._target_values], (-1,))
                num, den = torch.linalg.vector_norm(fitted - target), torch.linalg.vector_norm(fitted)
                den = den + torch.linalg.vector_norm(target)
                return torch.where(den > 0, num / safe_scale(den), torch.zeros_like(den))
            S = self.solution(params)
            fitted = self.omega * (S @ self._gram)
            # one exact power of two first: norms of 1e-200 data must not underflow into 0 / 0
            fitted, target = joint_power_of_two_scaled([fitted, self.omega * self._target_x], (-2, -1))
            num = torch.linalg.matrix_norm(fitted - target)
            den = torch.linalg.matrix_norm(fitted) + torch.linalg.matrix_norm(target)
            return torch.where(den > 0, num / safe_scale(den), torch.zeros_like(den))

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
        if not hasattr(self, "_reference") and self.pattern is not None:
            rhs = self.Y - self.pattern.matmul(self.init_values, self.X)
            values = self.init_values + self.pattern.reference(rhs, self.X).to(self.dtype)
            self._reference = self.pattern.to_sparse(values)
        if not hasattr(self, "_reference"):
            X, Y = self.X.detach().cpu().double(), self.Y.detach().cpu().double()
            init, omega = self.init.detach().cpu().double(), self.omega.detach().cpu().double()
            rhs = Y - init @ X  # (n, p)
            pinvs = torch.linalg.pinv(omega[:, :, None] * X[None, :, :])  # (n, p, n)
            U = torch.einsum("ip,ipj->ij", rhs, pinvs) * omega
            self._reference = (init + U).to(dtype=self.dtype, device=self.device)
        return self._reference

    def reference_params(self) -> Params | None:
        """``U = Ω ⊙ (S* − Init)`` for one linear hop (no closed form otherwise)."""
        if not self.linear:
            return None
        if self.pattern is not None:
            return {"U": self.reference().values() - self.init_values}
        return {"U": self.omega * (self.reference() - self.init)}

    def error(self, params: Params) -> torch.Tensor:
        """``‖S − S_ref‖_F / ‖S_ref‖_F``; NaN when there is no reference (``hops > 1`` or an activation)."""
        if not self.linear:
            return torch.full((), math.nan, dtype=self.dtype, device=self.device)
        S_ref, S = self.reference(), self.solution(params)
        if self.pattern is not None:  # the same pattern: compare the values
            S_ref, S = S_ref.values(), S.values()
            return relative_norm(S - S_ref, S_ref, dim=(-1,))
        return relative_norm(S - S_ref, S_ref, dim=(-2, -1))

    def metrics(self, params: Params) -> dict[str, float]:
        """``residual``, ``error`` (NaN without a closed form: null in ``Result.to_dict``) and ``fit``
        (``‖Ŷ − Y‖_F / ‖Y‖_F``, which is not 0 when no exact fit exists)."""
        return super().metrics(params) | {"fit": lambda: self.fit_residual(params)}

    def _u(self, params: Params) -> torch.Tensor:
        """``params["U"]`` checked: ``(n, n)``, or ``(nnz,)`` in the values form."""
        return _u_of(self, params)

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
            "free_entries": self.pattern.nnz if self.pattern is not None else int(self.omega.count_nonzero()),
            "storage": "sparse" if self.pattern is not None else "dense",
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def _u_of(problem: SparseProblem, params: Params) -> torch.Tensor:
    if problem.pattern is None:
        return _u(params, problem.n)
    U, nnz = params["U"], problem.pattern.nnz
    if tuple(U.shape) != (nnz,):
        raise ShapeError(
            f"params['U']: expected the values on omega's pattern, shape (nnz,) = ({nnz},), received {tuple(U.shape)}"
        )
    return U


def _u(params: Params, n: int) -> torch.Tensor:
    U = params["U"]
    if tuple(U.shape) != (n, n):
        raise ShapeError(f"params['U']: expected shape (n, n) = ({n}, {n}), received {tuple(U.shape)}")
    return U


def _check_square_of(value: torch.Tensor, name: str, n: int) -> None:
    if tuple(value.shape) != (n, n):
        raise ShapeError(
            f"{name}: expected shape (n, n) = ({n}, {n}) where n = X.shape[0], received {tuple(value.shape)}"
        )


def _check_mask(omega: Any, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
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
    _check_square_of(omega, "omega", n)
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


@gdla.hookimpl
def register_problems(register: Any) -> None:
    register(SparseProblem)
