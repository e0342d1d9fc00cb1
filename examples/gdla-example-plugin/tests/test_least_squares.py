"""The ``least-squares`` problem: gdla's contract, plus its own values and errors.

Run with the plugin installed (``pip install -e .``), so gdla finds it through its entry point.
"""

from __future__ import annotations

import pytest
import torch
from gdla_example_plugin.least_squares import LeastSquares

import gdla
from gdla.errors import InputError, ShapeError, SingularMatrixError
from gdla.testing import ProblemContract, assert_close_relative


class TestLeastSquaresContract(ProblemContract):
    problem_name = "least-squares"
    solve_options = {"optimizer": "nadam"}


def normal_equations_solution(A: torch.Tensor, B: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    return torch.linalg.solve(A.mT @ A + ridge * eye, A.mT @ B)


def test_found_through_its_entry_point() -> None:
    entry = gdla.registry.entry("problem", "least-squares")
    assert entry.obj is LeastSquares
    assert entry.plugin == "gdla-example-plugin" and entry.version == "0.1.0"


def test_example_is_tall_and_well_conditioned() -> None:
    problem = LeastSquares.example()
    assert problem.A.shape == (20, 5) and problem.reference().shape == (5,)
    singular_values = torch.linalg.svdvals(problem.A)
    assert problem.condition_estimate() == pytest.approx(float(singular_values[0] / singular_values[-1]) ** 2)
    assert problem.condition_estimate() < 20


def test_reference_solves_the_normal_equations() -> None:
    generator = torch.Generator().manual_seed(3)
    A = torch.randn(2, 9, 4, generator=generator, dtype=torch.float64)  # shape: (batch, m, n)
    B = torch.randn(2, 9, 3, generator=generator, dtype=torch.float64)  # shape: (batch, m, k)
    assert_close_relative(LeastSquares(A, B).reference(), normal_equations_solution(A, B), 1e-12, "lstsq")
    assert_close_relative(
        LeastSquares(A, B, ridge=0.5).reference(), normal_equations_solution(A, B, 0.5), 1e-12, "ridge"
    )


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_gdla_gradient_descent_reaches_the_reference(ridge: float) -> None:
    # a third-party problem works with gdla's own optimizers too (here its plain gradient descent)
    generator = torch.Generator().manual_seed(5)
    A = torch.randn(3, 16, 4, generator=generator, dtype=torch.float64)
    B = torch.randn(3, 16, 2, generator=generator, dtype=torch.float64)
    problem = LeastSquares(A, B, ridge=ridge)
    result = gdla.solve(problem, optimizer="sgd", seed=1)
    assert result.converged, result.summary()
    assert_close_relative(result.solution, normal_equations_solution(A, B, ridge), 1e-8, "X")
    assert result.metrics["residual"] <= 1e-10


def test_vector_right_hand_side_gives_a_vector() -> None:
    problem = LeastSquares(torch.eye(3, dtype=torch.float64) * 2, torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64))
    torch.testing.assert_close(problem.reference(), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    result = gdla.solve(problem, optimizer="sgd")
    assert result.solution.shape == (3,)
    torch.testing.assert_close(result.solution, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), rtol=1e-8, atol=0)


def test_from_matrix_uses_ones() -> None:
    A = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    problem = LeastSquares.from_matrix(A)
    torch.testing.assert_close(problem.reference(), torch.tensor([1.0, 0.5], dtype=torch.float64))


def test_residual_is_one_at_zero_and_scale_free() -> None:
    problem = LeastSquares.example()
    zero = {"X": torch.zeros(5, 1, dtype=torch.float64)}
    assert float(problem.residual(zero)) == pytest.approx(1.0)
    scaled = LeastSquares(problem.A * 1e3, problem.B.squeeze(-1) * 1e-2)
    X = {"X": torch.rand(5, 1, dtype=torch.float64)}
    assert float(scaled.residual({"X": X["X"] * 1e-5})) == pytest.approx(float(problem.residual(X)), rel=1e-9)


def test_rank_deficient_needs_ridge() -> None:
    A = torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]], dtype=torch.float64)  # rank 1
    with pytest.raises(SingularMatrixError, match=r"expected full column rank \(rank 2\).*pass ridge > 0"):
        LeastSquares(A)
    with pytest.raises(SingularMatrixError, match=r"more columns \(3\) than rows \(2\)"):
        LeastSquares(torch.rand(2, 3, dtype=torch.float64))
    assert LeastSquares(A, ridge=0.1).reference().shape == (2,)


@pytest.mark.parametrize(
    ("A", "B", "error", "pattern"),
    [
        (
            torch.rand(4, 2),
            torch.rand(3),
            ShapeError,
            r"B: expected shape \(\.\.\., 4, k\) to match A of shape \(4, 2\), received shape \(3,\)",
        ),
        (torch.rand(4, 2), torch.rand(5, 2), ShapeError, r"received shape \(5, 2\)"),
        (torch.ones(3, 2, dtype=torch.int64), None, InputError, r"A: expected a floating-point matrix"),
        (
            torch.rand(4, 2),
            torch.tensor([1.0, float("nan"), 0.0, 0.0]),
            InputError,
            r"B: expected finite entries, received 1 NaN/Inf",
        ),
        (torch.rand(4), None, ShapeError, r"A: expected a matrix"),
    ],
)
def test_bad_input(A: torch.Tensor, B: torch.Tensor | None, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        LeastSquares(A, B)


def test_negative_ridge() -> None:
    with pytest.raises(InputError, match=r"ridge: expected a number >= 0, received -1"):
        LeastSquares(torch.eye(2), ridge=-1)


def test_to_keeps_the_options() -> None:
    problem = LeastSquares(torch.eye(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), ridge=0.25)
    single = problem.to(dtype=torch.float32)
    assert single.dtype == torch.float32 and single.ridge == 0.25 and single.vector
    assert problem.to(dtype=torch.float64) is problem


@pytest.mark.parametrize("method", ["cg", "heavy-ball", "line-search", "auto"])
@pytest.mark.parametrize("ridge", [0.0, 0.5])
def test_solvers_reach_it_through_the_declared_least_squares_form(method: str, ridge: float) -> None:
    """No solver knows this problem's name: cg, heavy-ball, line-search and auto find it by capability."""
    example = LeastSquares.example()
    problem = LeastSquares(example.A, example.B, ridge=ridge)
    result = gdla.solve(problem, optimizer=method, max_steps=2000)
    assert result.converged, result.summary()
    assert float(problem.error(result.params)) <= 1e-8
    if method == "auto":
        assert result.settings["optimizer.method"] == "cg"
