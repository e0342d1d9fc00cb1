"""The ``toeplitz-net`` problem: an MLP trained to output each row's best band parameters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gdla
from gdla.errors import InputError, ShapeError
from gdla.testing import ProblemContract
from gdla_plugins.problems._toeplitz_common import row_to_matrix
from gdla_plugins.problems.toeplitz import ToeplitzProblem
from gdla_plugins.problems.toeplitz_net import ToeplitzNetProblem

ADAM = {"optimizer": "adam", "lr": 1e-2, "max_steps": 300}


class TestToeplitzNetContract(ProblemContract):
    problem_name = "toeplitz-net"
    solve_options = ADAM
    # an amortised fit: 300 Adam steps take the relative error from 1 to about 0.06
    error_tol = {torch.float64: 0.15, torch.float32: 0.15}


def small_problem(**options) -> ToeplitzNetProblem:
    return ToeplitzNetProblem.example(train=32, test=8, **{"hidden": 16, **options})


def test_training_lowers_the_error_well_below_its_start() -> None:
    problem = ToeplitzNetProblem.example(train=64, test=32)
    start = problem.metrics(problem.init_params(torch.Generator().manual_seed(0)))
    assert start["error"] > 0.9 and start["test_error"] > 0.9
    result = gdla.solve(problem, seed=0, **ADAM)
    assert result.stop_reason in ("stalled", "max_steps", "converged"), result.summary()
    assert result.metrics["error"] < 0.15 * start["error"]
    assert result.metrics["test_error"] < 0.15 * start["test_error"]
    assert result.metrics["residual"] < 0.1 * start["residual"]
    assert result.solution.shape == (64, 7)


def test_reference_bands_are_each_rows_least_squares_answer() -> None:
    problem = small_problem()
    single = ToeplitzProblem.from_row(problem.rows, probes=problem.probes)
    torch.testing.assert_close(problem.reference(), single.reference())
    row = ToeplitzProblem.from_row(problem.rows[5], probes=problem.probes)
    torch.testing.assert_close(problem.reference()[5], row.reference())


@pytest.mark.parametrize("loss", ["spectral", "frobenius"])
def test_loss_is_the_mean_of_the_rows_toeplitz_losses(loss: str) -> None:
    problem = small_problem(loss=loss)
    params = problem.init_params(torch.Generator().manual_seed(3))
    bands = problem.solution(params)
    per_row = ToeplitzProblem.from_row(problem.rows, loss=loss, probes=problem.probes)
    torch.testing.assert_close(problem.loss(params), per_row.loss({"band": bands}) / problem.rows.shape[0])
    error = torch.linalg.matrix_norm(bands - problem.reference()) / torch.linalg.matrix_norm(problem.reference())
    assert float(problem.error(params)) == pytest.approx(float(error))


@pytest.mark.parametrize("normalize", [True, False])
def test_parameters_are_the_seed_network(normalize: bool) -> None:
    problem = ToeplitzNetProblem.example(train=16, test=4, normalize=normalize)
    params = problem.init_params(torch.Generator().manual_seed(0))
    shapes = {key: tuple(value.shape) for key, value in params.items()}
    assert shapes == {
        "0.weight": (100, 11),
        "0.bias": (100,),
        "2.weight": (100, 100),
        "2.bias": (100,),
        "4.weight": (7, 100),
        "4.bias": (7,),
    }
    for key, value in params.items():
        fan_in = 11 if key.startswith("0.") else 100
        assert float(value.abs().max()) <= 1 / math.sqrt(fan_in)
    network = nn.Sequential(nn.Linear(11, 100), nn.Tanh(), nn.Linear(100, 100), nn.Tanh(), nn.Linear(100, 7)).double()
    network.load_state_dict(params)
    scale = float(problem.rows.square().mean().sqrt()) if normalize else 1.0
    with torch.no_grad():
        expected = scale * network(problem.rows / scale)
    torch.testing.assert_close(problem.solution(params), expected)
    assert problem.describe()["parameters"] == sum(v.numel() for v in params.values())


def test_test_error_uses_the_held_out_rows() -> None:
    problem = small_problem()
    params = problem.init_params(torch.Generator().manual_seed(1))
    held_out = ToeplitzNetProblem(problem.test_rows, hidden=16, probes=problem.probes)
    # the scale c comes from the training rows; give both problems the same one
    held_out.scale = problem.scale
    assert problem.metrics(params)["test_error"] == pytest.approx(float(held_out.error(params)))
    without = ToeplitzNetProblem(problem.rows, hidden=16)
    assert "test_error" not in without.metrics(params)


def test_frobenius_loss_trains_too() -> None:
    problem = small_problem(loss="frobenius")
    assert problem.probes is None
    start = float(problem.error(problem.init_params(torch.Generator().manual_seed(0))))
    result = gdla.solve(problem, optimizer="adam", lr=1e-2, max_steps=150, tol=0)
    assert result.metrics["error"] < 0.3 * start


def test_rows_use_the_seed_convention() -> None:
    problem = small_problem()
    params = problem.init_params(torch.Generator().manual_seed(0))
    bands = problem.solution(params)
    expected = (row_to_matrix(problem.rows[0]) - ToeplitzProblem(torch.eye(11)).matrix(bands[0].float()).double()) @ (
        problem.probes / torch.linalg.vector_norm(problem.probes, dim=-1, keepdim=True)
    ).T
    per_row = expected.square().sum() / problem.probes.shape[0]
    single = ToeplitzProblem.from_row(problem.rows[0], probes=problem.probes)
    torch.testing.assert_close(single.loss({"band": bands[0]}), per_row, rtol=1e-5, atol=1e-5)


def test_conversion_keeps_every_setting() -> None:
    problem = small_problem(loss="frobenius", normalize=False)
    converted = problem.to(dtype=torch.float32)
    assert converted.dtype == torch.float32 and converted.test_rows.dtype == torch.float32
    assert (converted.hidden, converted.loss_kind, converted.normalize) == (16, "frobenius", False)
    params = converted.init_params(torch.Generator().manual_seed(0))
    assert all(value.dtype == torch.float32 for value in params.values())


@pytest.mark.parametrize(
    "args, kwargs, error, words",
    [
        ((torch.rand(11, dtype=torch.float64),), {}, ShapeError, ["rows", "(N, n)", "(11,)"]),
        ((torch.rand(4, 5),), {"test_rows": torch.rand(2, 6)}, ShapeError, ["test_rows", "(M, 5)", "(2, 6)"]),
        ((torch.ones(4, 5, dtype=torch.int64),), {}, InputError, ["rows", "int64"]),
        ((torch.full((4, 5), math.nan),), {}, InputError, ["rows", "NaN"]),
        ((torch.rand(4, 5),), {"hidden": 0}, InputError, ["hidden", ">= 1"]),
        ((torch.rand(4, 5),), {"bandwidth": 5}, InputError, ["bandwidth", "<= n - 1 = 4"]),
        ((torch.rand(4, 5),), {"loss": "l2"}, InputError, ["loss", "'l2'"]),
        ((torch.rand(4, 5),), {"normalize": 1}, InputError, ["normalize", "True or False"]),
        ((torch.rand(4, 5),), {"probes": torch.rand(3, 4)}, ShapeError, ["probes", "(K, 5)"]),
    ],
)
def test_bad_input_is_named(args: tuple, kwargs: dict, error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        ToeplitzNetProblem(*args, **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


# -- the declared sum of squares (levenberg-marquardt) ---------------------------------------------
def test_sum_of_squares_is_the_loss_and_vanishes_at_the_reference() -> None:
    problem = small_problem()
    form = problem.sum_of_squares()
    params = problem.init_params(torch.Generator().manual_seed(1))
    torch.testing.assert_close(form.loss_of(form.residuals(params)), problem.loss(params), rtol=1e-12, atol=1e-12)
    # the floor is the loss of the per-row least-squares bands: what a perfect network reaches
    bands = problem.reference()
    direct = problem._loss_on(bands)
    torch.testing.assert_close(form.loss_of(torch.zeros_like(bands)), direct, rtol=1e-12, atol=1e-12)


def test_auto_trains_by_levenberg_marquardt_to_the_reference() -> None:
    problem = ToeplitzNetProblem.example(train=48, test=16, hidden=32)
    result = gdla.solve(problem, max_steps=60)
    assert result.settings["optimizer.method"] == "levenberg-marquardt"
    assert result.metrics["error"] <= 1e-4, result.summary()


@pytest.mark.parametrize("normalize", [True, False])
def test_declared_gram_is_the_residual_jacobians_product(normalize: bool) -> None:
    """``SumOfSquares.gram`` (the network's tangent kernel) against ``J Jᵀ`` from autograd's full Jacobian."""
    problem = ToeplitzNetProblem.example(7, train=16, test=4, hidden=16, normalize=normalize)
    params = problem.init_params(torch.Generator().manual_seed(2))
    form = problem.sum_of_squares()
    keys = list(params)

    def residuals(*tensors: torch.Tensor) -> torch.Tensor:
        return form.residuals(dict(zip(keys, tensors, strict=True))).reshape(-1)

    blocks = torch.autograd.functional.jacobian(residuals, tuple(params.values()))
    J = torch.cat([block.reshape(block.shape[0], -1) for block in blocks], dim=1)
    assert J.shape == (16 * 7, 519)
    torch.testing.assert_close(form.gram(params), J @ J.mT, rtol=1e-12, atol=1e-11)


def test_auto_reaches_the_reference_on_the_gram_path_with_the_dense_paths_answer() -> None:
    """``auto`` → levenberg-marquardt's gram path (112 residuals, 519 unknowns): the per-row least-squares bands
    to 1e-6 and better, the same steps as the dense path (which forms ``J``) to rounding."""
    problem = ToeplitzNetProblem.example(7, train=16, test=4, hidden=16)
    result = gdla.solve(problem)
    assert result.settings["optimizer.method"] == "levenberg-marquardt"
    assert result.settings["optimizer.path"] == "gram"
    assert result.converged and result.metrics["error"] <= 1e-6, result.summary()
    dense = gdla.solve(problem, optimizer="levenberg-marquardt", method="dense")
    assert dense.settings["optimizer.path"] == "dense" and dense.steps == result.steps
    torch.testing.assert_close(result.solution, dense.solution, rtol=0, atol=1e-12)
    for key, value in result.params.items():
        torch.testing.assert_close(value, dense.params[key], rtol=1e-8, atol=1e-9)
