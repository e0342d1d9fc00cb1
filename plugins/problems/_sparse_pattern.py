r"""A sparsity pattern Ω stored as indices, and the masked operator ``S`` held as its values on it.

When the ``sparse`` problem's mask is a torch sparse tensor, ``U`` (and ``Init``) live only on
Ω's pattern: a vector of ``nnz`` values, entry ``k`` at ``(rows[k], cols[k])`` (row-major, the
order of a coalesced COO tensor). Products with ``S`` run as CSR sparse-dense products, so memory
and work are ``O(nnz · p + n · p)``, never ``n²``.

For ``Y = S X`` with ``S`` given by its values ``v``:

.. math::

    \frac{\partial L}{\partial v_k} = \sum_q G_{r_k q} X_{c_k q} \quad (= (\Omega \odot G X^T)_{r_k c_k}),
    \qquad \frac{\partial L}{\partial X} = S^T G,

with ``G = ∂L/∂Y``; :class:`Pattern` supplies both as an autograd function, so k hops and an
activation differentiate as in the dense form.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from gdla.capabilities import LinearLeastSquares
from gdla.errors import InputError, ShapeError
from gdla.validation import check_finite

__all__ = ["Pattern", "PatternStorage", "is_sparse", "random_operator_on", "random_pattern_example"]

_SPARSE_LAYOUTS = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


def is_sparse(value: Any) -> bool:
    """Whether ``value`` is a torch sparse tensor (COO, CSR, CSC or blocked)."""
    return isinstance(value, torch.Tensor) and value.layout in _SPARSE_LAYOUTS


def _coalesced(value: torch.Tensor, name: str, n: int) -> torch.Tensor:
    """``value`` as a coalesced 2-D COO tensor of shape ``(n, n)``."""
    if value.dim() != 2 or tuple(value.shape) != (n, n):
        raise ShapeError(
            f"{name}: expected a sparse matrix of shape (n, n) = ({n}, {n}) where n = X.shape[0], "
            f"received shape {tuple(value.shape)}"
        )
    if value.is_complex():
        raise InputError(f"{name}: expected real values, received {value.dtype}")
    coo = value if value.layout == torch.sparse_coo else value.to_sparse_coo()
    return coo.coalesce()


class Pattern:
    """Ω's pattern: ``nnz`` positions ``(rows[k], cols[k])`` in row-major order, with the CSR index
    arrays of ``S`` and of ``Sᵀ`` (a permutation of the values) for fast products.

    Args:
        omega: a sparse 0/1 (or bool) tensor of shape ``(n, n)``; its entries equal to 1 (or True)
            are the free positions (stored zeros are not).
        n: the size.
        device: where the indices live.
    """

    def __init__(self, omega: torch.Tensor, n: int, device: torch.device) -> None:
        coo = _coalesced(omega, "omega", n)
        values = coo.values()
        if not values.dtype == torch.bool:
            if not bool(torch.isfinite(values).all()):
                raise InputError("omega: expected finite 0/1 values, received a non-finite one")
            bad = (values != 0) & (values != 1)
            if bool(bad.any()):
                k = int(bad.nonzero()[0])
                i, j = (int(v) for v in coo.indices()[:, k])
                raise InputError(
                    f"omega: expected only 0 and 1 (or booleans), received {values[k].item()!r} at ({i}, {j})"
                )
        keep = values != 0
        indices = coo.indices()[:, keep].to(device)
        self.n = n
        self.rows, self.cols = indices[0].contiguous(), indices[1].contiguous()
        self.nnz = int(self.rows.numel())
        self.crow = _compressed(self.rows, n)
        # Sᵀ in CSR: the entries sorted by (column, row); stable sort keeps rows increasing in each column
        self.perm_t = torch.sort(self.cols, stable=True).indices
        self.crow_t = _compressed(self.cols[self.perm_t], n)
        self.cols_t = self.rows[self.perm_t].contiguous()

    # -- values on the pattern -----------------------------------------------------------------
    def values_of(self, value: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The values of sparse ``value`` on this pattern (``value`` must have exactly this pattern)."""
        if not is_sparse(value):
            got = "dense tensor" if isinstance(value, torch.Tensor) else type(value).__name__
            raise InputError(
                f"{name}: with a sparse omega, expected a torch sparse tensor on omega's pattern "
                f"(or None for zeros), received a {got}"
            )
        coo = _coalesced(value, name, self.n)
        indices = coo.indices().to(self.rows.device)
        if indices.shape[1] != self.nnz or not (
            torch.equal(indices[0], self.rows) and torch.equal(indices[1], self.cols)
        ):
            where = self._first_difference(indices)
            raise InputError(
                f"{name}: expected a sparse tensor with omega's pattern ({self.nnz} entries), received one with "
                f"{indices.shape[1]} entries{where}; store {name} on exactly omega's free positions"
            )
        return coo.values().to(dtype=dtype, device=self.rows.device)

    def _first_difference(self, indices: torch.Tensor) -> str:
        ours = set(zip(self.rows.tolist(), self.cols.tolist(), strict=True)) if self.nnz <= 10**6 else None
        if ours is None:
            return ""
        for i, j in zip(indices[0].tolist(), indices[1].tolist(), strict=True):
            if (i, j) not in ours:
                return f", e.g. ({i}, {j}) which omega does not free"
        theirs = set(zip(indices[0].tolist(), indices[1].tolist(), strict=True))
        missing = next(((i, j) for i, j in sorted(ours) if (i, j) not in theirs), None)
        return "" if missing is None else f", missing ({missing[0]}, {missing[1]}) which omega frees"

    def to_sparse(self, values: torch.Tensor) -> torch.Tensor:
        """The ``(n, n)`` sparse COO tensor with ``values`` on the pattern (coalesced)."""
        indices = torch.stack([self.rows, self.cols])
        return torch.sparse_coo_tensor(indices, values, (self.n, self.n), is_coalesced=True, check_invariants=False)

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        """``S`` as a CSR tensor (shares ``values``)."""
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are not
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.cols, values, (self.n, self.n), check_invariants=False)

    def csr_t(self, values: torch.Tensor) -> torch.Tensor:
        """``Sᵀ`` as a CSR tensor."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                self.crow_t, self.cols_t, values[self.perm_t], (self.n, self.n), check_invariants=False
            )

    # -- products --------------------------------------------------------------------------------
    def matmul(self, values: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """``S X``, differentiable in ``values`` and ``X``.  # values: (nnz,), X: (n, p) -> (n, p)"""
        return _SparseMatmul.apply(values, X, self)

    def masked_outer(self, R: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """``Ω ⊙ (R Xᵀ)`` on the pattern: ``Σ_q R[rows, q] X[cols, q]``.  # R, X: (n, p) -> (nnz,)

        A sampled dense-dense product (SDDMM) on the CSR pattern: about 2.5× faster than gathering
        both rows (which it equals, the values in the pattern's row-major order).
        """
        if R.dtype != X.dtype or R.dtype not in (torch.float32, torch.float64):
            return (R[self.rows] * X[self.cols]).sum(-1)
        pattern = self.csr(torch.zeros(self.nnz, dtype=R.dtype, device=R.device))
        return torch.sparse.sampled_addmm(pattern, R.contiguous(), X.mT, beta=0.0).values()

    def reference(self, rhs: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Per row ``i`` with free columns ``J``: the minimum-norm ``u`` with ``u X[J] ≈ rhs_i`` (its values).

        Rows are padded to the largest free count with zero rows of ``X`` (which give zero
        columns of the pseudo-inverse); float64, memory ``n · max|J| · p``.
        """
        counts = self.crow.diff()
        width = int(counts.max()) if self.nnz else 0
        slot = torch.arange(self.nnz, device=self.rows.device) - self.crow[self.rows]  # place within its row
        blocks = torch.zeros(self.n, width, X.shape[1], dtype=torch.float64, device=X.device)
        blocks[self.rows, slot] = X[self.cols].double()
        pinvs = torch.linalg.pinv(blocks)  # (n, p, width)
        U = torch.einsum("ip,ipw->iw", rhs.double(), pinvs)
        return U[self.rows, slot]


class PatternStorage:
    """``U`` and ``Init`` as values on Ω's pattern (``(nnz,)``); products with ``S`` in CSR form.

    The interface of :class:`~gdla_plugins.problems._sparse_storage.DenseStorage`; ``omega`` and
    ``init`` are sparse COO tensors on the pattern, ``init_values`` the values ``U`` adds to.
    """

    kind = "sparse"
    fused_reason: str | None = "problem 'sparse' stores U only on omega's pattern: there is no mask product to fuse"

    def __init__(self, omega: Any, init: Any, n: int, dtype: torch.dtype, device: torch.device) -> None:
        if not is_sparse(omega):
            raise InputError(
                "omega: a sparse init needs a sparse omega (torch sparse tensor) with init's pattern, received "
                + ("None" if omega is None else f"a dense {type(omega).__name__}")
            )
        self.pattern = Pattern(omega, n, device)
        self.n, self.dtype = n, dtype
        self.init_values = (
            torch.zeros(self.pattern.nnz, dtype=dtype, device=device)
            if init is None
            else self.pattern.values_of(init, "init", dtype)
        )
        check_finite(self.init_values, "init")
        self.omega = self.pattern.to_sparse(torch.ones(self.pattern.nnz, dtype=dtype, device=device))
        self.init = self.pattern.to_sparse(self.init_values)
        self._target: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.pattern.nnz,)

    def stored(self) -> tuple[tuple[int, ...], int] | None:
        return (self.n, self.n), self.pattern.nnz

    def free_entries(self) -> int:
        return self.pattern.nnz

    def check_u(self, U: torch.Tensor) -> torch.Tensor:
        if tuple(U.shape) != self.shape:
            raise ShapeError(
                f"params['U']: expected the values on omega's pattern, shape (nnz,) = ({self.pattern.nnz},), "
                f"received {tuple(U.shape)}"
            )
        return U

    def operator(self, U: torch.Tensor) -> torch.Tensor:
        return self.init_values + U

    def matmul(self, S: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return self.pattern.matmul(S, X)

    def answer(self, S: torch.Tensor) -> torch.Tensor:
        """``S`` as a sparse COO tensor on the pattern."""
        return self.pattern.to_sparse(S)

    def comparable(self, S: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The values: two answers on the same pattern compare value by value."""
        return S.values(), (-1,)

    def update_masks(self) -> dict[str, torch.Tensor]:
        return {}  # every stored value is free

    def fused_loss(self, *_: Any) -> None:
        return None

    def least_squares(self, X: torch.Tensor, Y: torch.Tensor, **common: Any) -> LinearLeastSquares:
        """``x`` = U's values: the rows stay independent but share one vector (one block per row by index)."""
        pattern = self.pattern
        return LinearLeastSquares(
            key="U",
            apply=lambda d: pattern.matmul(d, X),  # also under torch.func transforms
            adjoint=lambda r: pattern.masked_outer(r, X),
            rhs=Y - pattern.csr(self.init_values) @ X,
            block_index=pattern.rows,  # the stored values of one row are one problem
            **common,
        )

    def normal_terms(self, S: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``Ω ⊙ (S X Xᵀ)`` and ``Ω ⊙ (Y Xᵀ)`` on the pattern, never ``n × n`` (the second kept)."""
        if self._target is None:
            self._target = self.pattern.masked_outer(Y, X)
        return self.pattern.masked_outer(self.pattern.matmul(S, X), X), self._target

    def reference(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Row by row on the pattern (:meth:`Pattern.reference`), as a sparse COO tensor."""
        rhs = Y - self.pattern.matmul(self.init_values, X)
        return self.pattern.to_sparse(self.init_values + self.pattern.reference(rhs, X).to(self.dtype))

    def reference_params(self, S_ref: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"U": S_ref.values() - self.init_values}


def _compressed(sorted_rows: torch.Tensor, n: int) -> torch.Tensor:
    """CSR row pointers of row-sorted indices: ``crow[i]`` = entries before row ``i``."""
    counts = torch.bincount(sorted_rows, minlength=n)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=sorted_rows.device)
    crow[1:] = torch.cumsum(counts, 0)
    return crow


class _SparseMatmul(torch.autograd.Function):
    """``S X`` for ``S`` given by its values on a pattern; backward ``Ω ⊙ (G Xᵀ)`` and ``Sᵀ G``,
    forward-mode ``S(v̇) X + S Ẋ``. In the ``setup_context`` form, so ``torch.func`` transforms
    (``vjp``, ``jvp``: Levenberg-Marquardt's matrix-free path) run it as one operation."""

    @staticmethod
    def forward(values: torch.Tensor, X: torch.Tensor, pattern: Pattern) -> torch.Tensor:
        return pattern.csr(values) @ X

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        values, X, pattern = inputs
        ctx.save_for_backward(values, X)
        ctx.save_for_forward(values, X)
        ctx.pattern = pattern

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        values, X = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        G = G.contiguous()
        grad_values = pattern.masked_outer(G, X) if ctx.needs_input_grad[0] else None
        grad_X = pattern.csr_t(values) @ G if ctx.needs_input_grad[1] else None
        return grad_values, grad_X, None

    @staticmethod
    def jvp(ctx: Any, values_dot: torch.Tensor | None, X_dot: torch.Tensor | None, _: None) -> torch.Tensor:
        values, X = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        # gathered rows, not CSR: the tangents arrive wrapped by the transform, which CSR products refuse
        terms = torch.zeros(pattern.nnz, X.shape[1], dtype=X.dtype, device=X.device)
        if values_dot is not None:
            terms = terms + values_dot[:, None] * X[pattern.cols]
        if X_dot is not None:
            terms = terms + values[:, None] * X_dot[pattern.cols]
        out = torch.zeros(pattern.n, X.shape[1], dtype=terms.dtype, device=X.device)
        return out.index_add(0, pattern.rows, terms)


def random_pattern_example(
    n: int, per_row: int, p: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random sparse scenario: ``(omega, init, truth, X)`` with about ``per_row`` free entries per row.

    Column positions are uniform (repeats merge); ``Init``, ``U*`` and ``X`` as in
    :func:`random_operator_on`. ``omega``, ``init`` and ``truth`` are coalesced sparse COO tensors
    with the same pattern.
    """
    rows = torch.arange(n).repeat_interleave(per_row)
    cols = torch.randint(n, (n * per_row,), generator=generator)
    pattern = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), torch.ones(n * per_row), (n, n), check_invariants=False
    ).coalesce()
    indices, nnz = pattern.indices(), pattern.indices().shape[1]
    init_values, step_values, X = random_operator_on(nnz, n, per_row, p, generator)
    truth_values = init_values + step_values

    def sparse(values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_coo_tensor(indices, values, (n, n), is_coalesced=True, check_invariants=False)

    return sparse(torch.ones(nnz, dtype=torch.float64)), sparse(init_values), sparse(truth_values), X


def random_operator_on(
    nnz: int, n: int, per_row: float, p: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random values on a given pattern of ``nnz`` entries: ``(init_values, step_values, X)``, float64.

    ``Init`` and ``U*`` (``step_values``, the ground truth is ``Init + U*``) have variance
    ``0.01/per_row`` and ``1/per_row`` per entry, so with about ``per_row`` entries a row the
    ground truth has spectral radius about 1; ``X`` is ``randn(n, p)``. Drawn in that order.
    """
    scale = per_row**-0.5
    init_values = 0.1 * scale * torch.randn(nnz, generator=generator, dtype=torch.float64)
    step_values = scale * torch.randn(nnz, generator=generator, dtype=torch.float64)
    X = torch.randn(n, p, generator=generator, dtype=torch.float64)
    return init_values, step_values, X
