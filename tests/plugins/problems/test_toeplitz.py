"""The ``toeplitz`` problem: seed 004's row convention, the least-squares reference, errors."""

from __future__ import annotations

import pytest
import torch

import gdla
from gdla.errors import InputError, ShapeError
from gdla.testing import ProblemContract, assert_close_relative
from gdla_plugins.problems._toeplitz_common import band_to_matrix, row_to_matrix
from gdla_plugins.problems.toeplitz import ToeplitzProblem

DTYPES = [torch.float32, torch.float64]


class TestToeplitzContract(ProblemContract):
    problem_name = "toeplitz"
    solve_options = {"optimizer": "lbfgs", "max_steps": 300}


def seed_slices(row: torch.Tensor) -> torch.Tensor:
    """Seed 004's slice-by-slice construction (odd n): row i takes a window of the row."""
    n = row.numel()
    k = n // 2
    out = torch.zeros(n, n, dtype=row.dtype)
    for i in range(n):
        first, last = max(0, i - k), min(n, i + k + 1)
        start = max(0, k - i)
        out[i, first:last] = row[start : start + last - first]
    return out


def shift_basis(n: int, b: int, dtype: torch.dtype) -> torch.Tensor:
    """The 0/1 matrices E_m of offset m − b, built with torch.diag: shape (2b+1, n, n)."""
    return torch.stack([torch.diag(torch.ones(n - abs(o), dtype=dtype), o) for o in range(-b, b + 1)])


def brute_force_bands(target: torch.Tensor, b: int, probes: torch.Tensor | None) -> torch.Tensor:
    """Least squares over the explicit residual (T − Σ c_m E_m) y_k / ‖y_k‖, or (T − B) for Frobenius."""
    n = target.shape[-1]
    basis = shift_basis(n, b, torch.float64)
    target = target.double()
    if probes is None:
        columns = basis.reshape(2 * b + 1, -1).T
        rhs = target.reshape(-1)
    else:
        unit = (probes.double() / torch.linalg.vector_norm(probes.double(), dim=-1, keepdim=True)).T
        columns = (basis @ unit).reshape(2 * b + 1, -1).T
        rhs = (target @ unit).reshape(-1)
    return torch.linalg.lstsq(columns, rhs[:, None], driver="gelsd").solution[:, 0]


def test_seed_row_convention_on_the_seed_example() -> None:
    row = torch.arange(11, dtype=torch.float64)
    matrix = row_to_matrix(row)
    # the matrix seed 004 printed for [0, 1, ..., 10]: first row 5..10, middle row 0..10
    assert matrix[0].tolist() == [5, 6, 7, 8, 9, 10, 0, 0, 0, 0, 0]
    assert matrix[5].tolist() == list(range(11))
    assert matrix[10].tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
    torch.testing.assert_close(matrix, seed_slices(row))
    for n in (1, 3, 5, 9):
        random_row = torch.rand(n, dtype=torch.float64)
        torch.testing.assert_close(row_to_matrix(random_row), seed_slices(random_row))


def test_even_length_rows_give_toeplitz_matrices() -> None:
    row = torch.rand(6, dtype=torch.float64)
    matrix = row_to_matrix(row)
    for i in range(6):
        for j in range(6):
            index = 3 + j - i
            expected = float(row[index]) if 0 <= index < 6 else 0.0
            assert float(matrix[i, j]) == expected


def test_seed_test_row_is_fitted_exactly() -> None:
    row = torch.tensor([0, 0, 0, 1, 2, 4, 2, 1, 0, 0, 0], dtype=torch.float64)
    problem = ToeplitzProblem.from_row(row)
    assert problem.bandwidth == 3
    # the seed's printed matrix: 4 on the diagonal, then 2 and 1, zero beyond
    expected = 4 * torch.eye(11, dtype=torch.float64)
    for offset, value in ((1, 2.0), (2, 1.0)):
        expected += (
            value
            * (torch.diag(torch.ones(11 - offset), offset) + torch.diag(torch.ones(11 - offset), -offset)).double()
        )
    torch.testing.assert_close(problem.target, expected)
    torch.testing.assert_close(
        problem.reference(), torch.tensor([0, 1, 2, 4, 2, 1, 0], dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert float(problem.loss({"band": problem.reference()})) < 1e-20


def test_band_matrix_index_arithmetic() -> None:
    band = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)  # offsets -2..2
    diagonals = [
        value * torch.diag(torch.ones(6 - abs(o), dtype=torch.float64), o)
        for o, value in zip(range(-2, 3), band, strict=True)
    ]
    expected = torch.stack(diagonals).sum(0)
    torch.testing.assert_close(band_to_matrix(band, 6), expected)
    problem = ToeplitzProblem(torch.rand(6, 6, dtype=torch.float64), bandwidth=2)
    torch.testing.assert_close(problem.matrix(band), expected)
    batch = torch.stack([band, 2 * band])
    torch.testing.assert_close(band_to_matrix(batch, 6), torch.stack([expected, 2 * expected]))


@pytest.mark.parametrize("loss", ["spectral", "frobenius"])
@pytest.mark.parametrize("n,b", [(5, 1), (11, 3), (12, 5)])
def test_reference_matches_brute_force_least_squares(loss: str, n: int, b: int) -> None:
    target = torch.randn(n, n, dtype=torch.float64)
    problem = ToeplitzProblem(target, bandwidth=b, loss=loss, num_probes=40)
    expected = brute_force_bands(target, b, problem.probes)
    assert_close_relative(problem.reference(), expected, 1e-10, "reference bands")
    assert float(problem.residual({"band": problem.reference()})) < 1e-12
    if loss == "frobenius":  # the closed form: the mean of each diagonal
        means = torch.stack([torch.diagonal(target, o).mean() for o in range(-b, b + 1)])
        torch.testing.assert_close(problem.reference(), means)


@pytest.mark.parametrize("loss", ["spectral", "frobenius"])
def test_loss_and_design_agree_with_the_definition(loss: str) -> None:
    problem = ToeplitzProblem.example(9, loss=loss, num_probes=7)
    band = torch.randn(7, dtype=torch.float64)
    residual = problem.target - problem.matrix(band)
    if loss == "spectral":
        expected = sum(
            torch.linalg.vector_norm(residual @ y) ** 2 / torch.linalg.vector_norm(y) ** 2 for y in problem.probes
        ) / len(problem.probes)
    else:
        expected = torch.linalg.matrix_norm(residual) ** 2 / 9
    torch.testing.assert_close(problem.loss({"band": band}), expected)
    D, t = problem.design()
    assert D.shape == (9 * (7 if loss == "spectral" else 9), 7)
    torch.testing.assert_close((D @ band - t).square().sum(), expected)


def test_residual_is_relative_and_scale_invariant() -> None:
    problem = ToeplitzProblem.example()
    zero = problem.init_params(torch.Generator().manual_seed(0))
    assert torch.equal(zero["band"], torch.zeros(7, dtype=torch.float64))
    assert float(problem.residual(zero)) == pytest.approx(1.0)
    band = problem.reference() + 1e-3 * torch.randn(7, dtype=torch.float64)
    scaled = ToeplitzProblem(7.0 * problem.target, probes=problem.probes)
    assert float(scaled.residual({"band": 7.0 * band})) == pytest.approx(
        float(problem.residual({"band": band})), rel=1e-10
    )
    torch.testing.assert_close(scaled.reference(), 7.0 * problem.reference())
    assert float(problem.error({"band": band})) == pytest.approx(
        float(torch.linalg.vector_norm(band - problem.reference()) / torch.linalg.vector_norm(problem.reference()))
    )


def test_default_probes_follow_the_seed_recipe() -> None:
    problem = ToeplitzProblem.example()
    again = ToeplitzProblem.example()
    assert problem.probes is not None and problem.probes.shape == (100, 11)
    assert torch.equal(problem.probes, again.probes)
    assert bool((problem.probes >= 0).all()) and float(problem.probes.max()) < 11
    other = ToeplitzProblem.example(probe_seed=1)
    assert not torch.equal(problem.probes, other.probes)
    assert ToeplitzProblem.example(loss="frobenius").probes is None


def test_batch_targets_are_independent_problems() -> None:
    targets = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    problem = ToeplitzProblem(targets, bandwidth=2, loss="frobenius")
    reference = problem.reference()
    assert reference.shape == (2, 3, 5)
    single = ToeplitzProblem(targets[1, 2], bandwidth=2, loss="frobenius")
    torch.testing.assert_close(reference[1, 2], single.reference())
    result = gdla.solve(problem, optimizer="lbfgs", max_steps=200)
    assert result.converged, result.summary()
    assert result.metrics["error"] < 1e-8
    rows = torch.rand(4, 9, dtype=torch.float64)
    from_rows = ToeplitzProblem.from_row(rows)
    torch.testing.assert_close(from_rows.target[3], row_to_matrix(rows[3]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [4, 11, 40])
def test_solve_reaches_the_reference_at_several_sizes(dtype: torch.dtype, size: int) -> None:
    problem = ToeplitzProblem.example(size, dtype=dtype)
    assert problem.bandwidth == min(3, size - 1)
    result = gdla.solve(problem, optimizer="lbfgs", max_steps=300)
    assert result.converged, result.summary()
    assert result.solution.dtype == dtype
    assert result.metrics["error"] < (1e-7 if dtype == torch.float64 else 2e-3)


def test_from_matrix_accepts_rows_and_matrices() -> None:
    row = torch.rand(7, dtype=torch.float64)
    torch.testing.assert_close(ToeplitzProblem.from_matrix(row).target, row_to_matrix(row))
    torch.testing.assert_close(
        ToeplitzProblem(row.tolist()).target, row_to_matrix(row.float())
    )  # lists: torch default dtype
    matrix = torch.rand(7, 7, dtype=torch.float64)
    assert torch.equal(ToeplitzProblem.from_matrix(matrix).target, matrix)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"target": torch.rand(3, 4, dtype=torch.float64)}, ShapeError, ["target", "square", "(3, 4)"]),
        ({"target": torch.ones(4, 4, dtype=torch.int64)}, InputError, ["target", "int64"]),
        ({"target": torch.full((3, 3), float("nan"))}, InputError, ["target", "NaN"]),
        ({"target": torch.zeros(0, dtype=torch.float64)}, ShapeError, ["target", "non-empty"]),
        ({"target": torch.rand(5, 5), "bandwidth": 5}, InputError, ["bandwidth", "<= n - 1 = 4", "5"]),
        ({"target": torch.rand(5, 5), "bandwidth": -1}, InputError, ["bandwidth", ">= 0"]),
        ({"target": torch.rand(5, 5), "loss": "l1"}, InputError, ["loss", "'spectral'", "'l1'"]),
        ({"target": torch.rand(5, 5), "probes": torch.rand(3, 4)}, ShapeError, ["probes", "(K, 5)", "(3, 4)"]),
        ({"target": torch.rand(3, 3), "probes": torch.zeros(2, 3)}, InputError, ["probes", "row 0"]),
        (
            {"target": torch.rand(3, 3), "loss": "frobenius", "probes": torch.rand(2, 3)},
            InputError,
            ["probes", "spectral"],
        ),
        ({"target": torch.rand(3, 3), "num_probes": 0}, InputError, ["num_probes", ">= 1"]),
    ],
)
def test_bad_input_is_named(kwargs: dict, error: type, words: list[str]) -> None:
    target = kwargs.pop("target")
    with pytest.raises(error) as info:
        ToeplitzProblem(target, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_wrong_parameter_shape_is_named() -> None:
    problem = ToeplitzProblem.example()
    with pytest.raises(ShapeError, match=r"params\['band'\].*\(7,\).*\(5,\)"):
        problem.loss({"band": torch.zeros(5, dtype=torch.float64)})


@pytest.mark.parametrize("loss", ["spectral", "frobenius"])
def test_conjugate_gradients_solve_the_design_form(loss: str) -> None:
    problem = ToeplitzProblem.example(20, loss=loss)
    assert problem.quadratic
    result = gdla.solve(problem, optimizer="cg", max_steps=50)
    assert result.converged, result.summary()
    assert result.metrics["error"] < 1e-10


def test_from_matrix_reads_a_one_row_matrix_as_the_seed_row() -> None:
    row = torch.tensor([[0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 2.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    problem = ToeplitzProblem.from_matrix(row)
    torch.testing.assert_close(problem.target, ToeplitzProblem.from_row(row[0]).target)
    assert problem.target[5, 5] == 4.0 and problem.target[5, 6] == 2.0 and problem.target[5, 7] == 1.0
