"""The ``sparse`` problem's factories, apart from its math: seed 002's scenarios and a user's matrix.

:class:`SparseExamples` is mixed into :class:`~gdla_plugins.problems.sparse.SparseProblem`; the
data they are built from come from :mod:`gdla_plugins.problems._sparse_data`.
"""

from __future__ import annotations

from typing import Any

import torch

from gdla.errors import InputError, ResourceError, ShapeError
from gdla.memory import available_bytes, format_bytes
from gdla.validation import check_choice, check_int, check_matrix
from gdla_plugins.problems._common import cpu_generator
from gdla_plugins.problems._sparse_data import (
    ACTIVATIONS,
    EXAMPLE_SEED,
    INIT_NOISE,
    identity,
    random_dense_example,
    sparse_matrix_data,
)
from gdla_plugins.problems._sparse_pattern import is_sparse, random_pattern_example

__all__ = ["SparseExamples"]


class SparseExamples:
    """The classmethods that build ``sparse`` problems (``cls`` is the problem class)."""

    @classmethod
    def from_matrix(cls, matrix: Any, *, columns: int | None = None, **options: Any) -> Any:
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
    ) -> Any:
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
