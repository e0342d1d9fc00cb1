"""The ``sparse`` problem built from a sparse matrix (a coordinate .mtx file, CSR or COO): learned in sparse
storage, and its errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import gdla
from gdla.errors import InputError, ShapeError
from gdla_plugins.problems.sparse import SparseProblem


# -- a sparse matrix (a coordinate .mtx file) as the operator to learn ------------------------------
def random_sparse_operator(n: int, seed: int = 3) -> torch.Tensor:
    """A diagonally dominant sparse ``(n, n)`` operator with 1-5 entries per row (COO, float64)."""
    import scipy.sparse

    matrix = scipy.sparse.random(n, n, density=2 / n, random_state=seed, format="coo") + 2 * scipy.sparse.eye(n)
    matrix = matrix.tocoo()
    indices = torch.from_numpy(np.vstack([matrix.row, matrix.col]).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(matrix.data), (n, n), check_invariants=True).coalesce()


def test_sparse_matrix_is_learned_in_sparse_storage() -> None:
    matrix = random_sparse_operator(400)
    problem = SparseProblem.from_matrix(matrix, loss="mse")
    widest = int(torch.bincount(matrix.indices()[0]).max())
    assert problem.sparse_storage() == ((400, 400), matrix._nnz())
    assert problem.describe()["storage"] == "sparse" and problem.p == max(8, 2 * widest)
    assert torch.equal(problem.pattern.rows, matrix.indices()[0]) and not bool(problem.init_values.any())
    # the answer is the matrix itself: every row's least-squares problem is over-determined
    torch.testing.assert_close(problem.reference().values(), matrix.values(), rtol=1e-10, atol=1e-12)
    result = gdla.solve(problem, tol=1e-12)
    assert result.converged and result.settings["optimizer.method"] == "cg"
    assert result.solution.layout == torch.sparse_coo
    torch.testing.assert_close(result.solution.values(), matrix.values(), rtol=1e-9, atol=1e-10)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_csr_and_float32_sparse_matrices() -> None:
    matrix = random_sparse_operator(60)
    csr = SparseProblem.from_matrix(matrix.to_sparse_csr())
    torch.testing.assert_close(csr.Y, SparseProblem.from_matrix(matrix).Y, rtol=0, atol=0)
    single = SparseProblem.from_matrix(matrix.to(torch.float32), columns=5)
    assert single.dtype == torch.float32 and single.p == 5


def test_pattern_only_matrix_gets_the_examples_rule() -> None:
    matrix = random_sparse_operator(300)
    ones = torch.ones(matrix._nnz(), dtype=torch.bool)
    pattern = torch.sparse_coo_tensor(matrix.indices(), ones, matrix.shape, check_invariants=True)
    problem = SparseProblem.from_matrix(pattern.coalesce())
    again = SparseProblem.from_matrix(pattern.coalesce())
    assert problem.dtype == torch.float64 and problem.sparse_storage() == ((300, 300), matrix._nnz())
    torch.testing.assert_close(problem.Y, again.Y, rtol=0, atol=0)  # seeded: the same on every run
    # a small random Init on the pattern (as the example's), so more hops do not start at a saddle
    rms = float(problem.init_values.square().mean().sqrt())
    assert 0.02 < rms * (matrix._nnz() / 300) ** 0.5 < 0.2
    result = gdla.solve(problem, tol=1e-12)
    assert result.converged and result.metrics["error"] < 1e-9 and result.metrics["fit"] < 1e-9
    two = SparseProblem.from_matrix(pattern.coalesce(), hops=2, activation="tanh", loss="mse")
    assert two.hops == 2 and float(two.fit_residual(two.init_params(torch.Generator()))) > 0.1


def test_a_large_sparse_matrix_file_builds_in_sparse_storage(tmp_path: Path) -> None:
    import scipy.io
    import scipy.sparse

    from gdla.io import load_matrix

    n = 200_000
    ones = np.ones(n - 1)
    tridiagonal = scipy.sparse.diags([ones, 4 * np.ones(n), ones], [-1, 0, 1], format="coo")
    scipy.io.mmwrite(tmp_path / "tri.mtx", tridiagonal)
    problem = SparseProblem.from_matrix(load_matrix(tmp_path / "tri.mtx", keep_sparse=True), loss="mse")
    assert problem.sparse_storage() == ((n, n), 3 * n - 2)
    assert problem.X.shape == (n, 8) and problem.init_params(torch.Generator())["U"].shape == (3 * n - 2,)
    # nothing of size n² exists: the largest tensor the problem holds is its data (sparse ones: their entries)
    tensors = [value for value in vars(problem).values() if isinstance(value, torch.Tensor)]
    sizes = [value._nnz() if value.layout == torch.sparse_coo else value.numel() for value in tensors]
    assert any(value.layout == torch.sparse_coo for value in tensors) and max(sizes) == 8 * n


def test_sparse_matrix_errors() -> None:
    matrix = random_sparse_operator(20)
    with pytest.raises(InputError, match=r"^omega: a sparse matrix's stored positions are omega"):
        SparseProblem.from_matrix(matrix, omega=matrix)
    with pytest.raises(ShapeError, match=r"^matrix: expected a square sparse operator \(n, n\).*\(20, 21\)"):
        wide = torch.sparse_coo_tensor(matrix.indices(), matrix.values(), (20, 21), check_invariants=True)
        SparseProblem.from_matrix(wide)
    empty = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0), (4, 4), check_invariants=True)
    with pytest.raises(InputError, match=r"^matrix: expected at least one stored entry .* \(4, 4\)"):
        SparseProblem.from_matrix(empty)
    with pytest.raises(InputError, match=r"^matrix: expected real values"):
        SparseProblem.from_matrix(matrix.to(torch.complex128))
    nan = torch.sparse_coo_tensor(matrix.indices(), matrix.values() * math.nan, matrix.shape, check_invariants=True)
    with pytest.raises(InputError, match=r"^matrix"):
        SparseProblem.from_matrix(nan)
    with pytest.raises(InputError, match=r"^columns: only for a sparse matrix .* received columns=3"):
        SparseProblem.from_matrix(torch.eye(3, dtype=torch.float64), columns=3)
    with pytest.raises(InputError, match=r"^columns"):
        SparseProblem.from_matrix(matrix, columns=0)


def test_sparse_matrix_too_big_for_its_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    from gdla import memory
    from gdla.errors import ResourceError
    from gdla_plugins.problems import _sparse_data as module

    monkeypatch.setattr(module, "available_bytes", lambda: 100_000)
    expected = r"^columns: X and Y of shape \(n, columns\) = \(400, \d+\) with the default .*-p columns=K"
    with pytest.raises(ResourceError, match=expected):
        SparseProblem.from_matrix(random_sparse_operator(400))
    assert memory.HEADROOM == module.HEADROOM


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_storage_with_an_activation_solves_as_the_dense_form(layout: str) -> None:
    """The first-call checks read a sparse tensor's stored entries (``aten::max`` has no sparse kernel): the
    sparse storage with ``tanh`` runs, and reaches the dense form's answer."""
    example = SparseProblem.example(hops=2, dtype=torch.float64)
    to_layout = (lambda t: t.to_sparse()) if layout == "coo" else (lambda t: t.to_sparse_csr())
    dense = SparseProblem(example.X, example.Y, omega=example.omega, init=example.init, hops=2, activation="tanh")
    stored = SparseProblem(
        example.X, example.Y, omega=to_layout(example.omega), init=to_layout(example.init), hops=2, activation="tanh"
    )
    settings = {"optimizer": "lbfgs", "max_steps": 20, "tol": 0}
    want, got = gdla.solve(dense, **settings), gdla.solve(stored, **settings)
    assert got.stop_reason == want.stop_reason == "max_steps"
    torch.testing.assert_close(torch.tensor(got.losses), torch.tensor(want.losses), rtol=1e-10, atol=1e-12)
    assert got.metrics["residual"] == pytest.approx(want.metrics["residual"], rel=1e-8)
