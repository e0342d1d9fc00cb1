"""The data of the ``sparse`` problem's examples and of a user's sparse matrix: ``X``, ``Y``, ``Ω`` and ``Init``.

``plugins/problems/sparse.py`` holds the problem (its loss, capabilities and answers); this module
makes the inputs it is built from: seed 002's random scenarios and, for ``gdla solve sparse
--matrix FILE.mtx``, the data that turn a sparse matrix into a problem whose answer it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from gdla.errors import InputError, ResourceError, ShapeError
from gdla.memory import HEADROOM, available_bytes, format_bytes
from gdla.validation import check_finite, check_int
from gdla_plugins.problems._common import as_working_float, cpu_generator
from gdla_plugins.problems._sparse_pattern import Pattern, random_operator_on

__all__ = [
    "ACTIVATIONS",
    "EXAMPLE_SEED",
    "INIT_NOISE",
    "check_data_fits",
    "identity",
    "random_dense_example",
    "sparse_matrix_data",
]

#: Elementwise activations applied after every hop; ``None`` (or ``"identity"``) is linear.
#: ``"cube"`` is the seed's commented-out ``x ** 3`` experiment.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "cube": lambda x: x * x * x,
}
#: Seed 002 seeded torch with 123 before drawing ``Init``; ``example(seed=s)`` uses ``123 + s``.
EXAMPLE_SEED = 123
#: Seed 002's scale of the random ``Init`` (a zero ``Init`` is a saddle for two or more hops).
INIT_NOISE = 0.1


def identity(x: torch.Tensor) -> torch.Tensor:
    """The linear "activation"."""
    return x


def random_dense_example(
    n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(omega, init, truth, X)`` of the random dense example of size ``n`` (float64; ``omega`` boolean).

    A mask with about half its entries 1 (at least one per row), ``Init = 0.1 · randn / √n``, a
    ground truth ``S* = Init + Ω ⊙ U*`` and ``X = randn(n, 2n)``.
    """
    omega = torch.rand(n, n, generator=generator, dtype=torch.float64) < 0.5
    pick = torch.randint(n, (n,), generator=generator)
    omega[torch.arange(n), pick] = True  # every row has at least one free entry
    init = INIT_NOISE * torch.randn(n, n, generator=generator, dtype=torch.float64) / math.sqrt(n)
    # Ω ⊙ U* has about n/2 entries of variance 1/n per row: spectral radius about 0.7,
    # so S*ᵏ X neither explodes nor vanishes for a few hops.
    truth = init + omega * torch.randn(n, n, generator=generator, dtype=torch.float64) / math.sqrt(n)
    X = torch.randn(n, 2 * n, generator=generator, dtype=torch.float64)
    return omega, init, truth, X


def sparse_matrix_data(
    matrix: torch.Tensor, columns: int | None, options: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(X, Y, omega, init)`` of ``SparseProblem.from_matrix`` for a torch sparse ``matrix`` (its pattern is Ω).

    Pops ``init`` from ``options`` (the rest go to the constructor). See ``from_matrix`` for the rules.
    """
    if "omega" in options:
        raise InputError(
            "omega: a sparse matrix's stored positions are omega; leave omega out, received one as well"
        )
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ShapeError(
            f"matrix: expected a square sparse operator (n, n) to learn, received shape {tuple(matrix.shape)}"
        )
    if matrix.is_complex():
        raise InputError(f"matrix: expected real values, received {matrix.dtype}")
    coo = (matrix if matrix.layout == torch.sparse_coo else matrix.to_sparse_coo()).coalesce()
    n, indices, values = int(matrix.shape[0]), coo.indices(), coo.values()
    nnz = int(values.numel())
    if nnz == 0:
        raise InputError(
            f"matrix: expected at least one stored entry (the positions U may use), received an empty "
            f"sparse ({n}, {n}) matrix"
        )
    positions_only = values.dtype == torch.bool
    dtype = as_working_float(values).dtype if values.is_floating_point() else torch.float64
    widest = int(torch.bincount(indices[0], minlength=n).max())
    p = max(8, 2 * widest) if columns is None else check_int(columns, "columns", minimum=1)
    check_data_fits(n, p, nnz, dtype, columns is None)
    hops = check_int(options.get("hops", 1), "hops", minimum=1)
    act = ACTIVATIONS.get(options.get("activation") or "", identity)
    generator = cpu_generator(EXAMPLE_SEED)

    def sparse(entries: torch.Tensor) -> torch.Tensor:
        return torch.sparse_coo_tensor(indices, entries, (n, n), is_coalesced=True, check_invariants=False)

    if positions_only:  # the example's rule on the given pattern
        init_values, step_values, X = random_operator_on(nnz, n, max(nnz / n, 1.0), p, generator)
        init = options.pop("init", None)
        if init is None:
            init = sparse(init_values)
        else:
            init_values = Pattern(sparse(torch.ones(nnz)), n, torch.device("cpu")).values_of(
                init, "init", torch.float64
            )
        truth_values = init_values + step_values
    else:
        truth_values = values.to(torch.float64)
        check_finite(truth_values, "matrix")
        X = torch.randn(n, p, generator=generator, dtype=torch.float64)
        init = options.pop("init", None)
    truth, Y = sparse(truth_values), X
    for _ in range(hops):
        Y = act(torch.sparse.mm(truth, Y))
    omega = sparse(torch.ones(nnz, dtype=dtype))
    return X.to(dtype), Y.to(dtype), omega, init


def check_data_fits(n: int, p: int, nnz: int, dtype: torch.dtype, default: bool) -> None:
    """Raise :class:`ResourceError` if a sparse matrix's problem (``X``, ``Y`` and their work copies,
    about 8 numbers per entry of ``(n, p)``, plus about 20 per stored entry) would not fit."""
    free = available_bytes()
    needed = (8 * n * p + 20 * nnz) * (torch.finfo(dtype).bits // 8)
    if free is None or needed <= HEADROOM * free:
        return
    chosen = f"the default max(8, 2 × the widest row) = {p}" if default else f"columns={p}"
    raise ResourceError(
        f"columns: X and Y of shape (n, columns) = ({n}, {p}) with {chosen}, and the {nnz} stored entries, need "
        f"about {format_bytes(needed)} ({format_bytes(free)} available); pass fewer columns (-p columns=K): rows "
        "with more than K entries then get the minimum-norm fit"
    )
