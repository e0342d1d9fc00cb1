"""``auto``, the default optimizer: what it picks, why it says so, and the step counts it reaches."""

from __future__ import annotations

import math

import pytest
import torch

import gdla
from gdla.testing import relative_error
from gdla_plugins.optimizers.auto import Auto, choose
from gdla_plugins.problems.inverse import InverseProblem


def seeded_rand(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def relative_residual(A: torch.Tensor, M: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(A @ M - torch.eye(A.shape[-1], dtype=A.dtype)) / math.sqrt(A.shape[-1]))


@pytest.mark.parametrize(("n", "budget"), [(64, 100), (16, 40)])
def test_random_matrices_reach_1e_8_within_budget(n: int, budget: int) -> None:
    A = seeded_rand(n)
    result = gdla.solve(InverseProblem(A), tol=1e-8, backend="autograd")  # optimizer="auto" is the default
    assert result.optimizer == "auto" and result.settings["optimizer.method"] == "newton-schulz"
    assert result.converged and result.steps <= budget, result.summary()  # measured: 26 (n=64), 23 (n=16)
    assert relative_residual(A, result.solution) <= 1e-8


def test_hilbert_6_reaches_1e_6_within_200_steps() -> None:
    i = torch.arange(6, dtype=torch.float64)
    A = 1.0 / (i[:, None] + i[None, :] + 1)  # κ ≈ 1.5e7
    result = gdla.solve(InverseProblem(A), tol=1e-6, backend="autograd")
    assert result.converged and result.steps <= 200, result.summary()  # measured: 53
    assert relative_residual(A, result.solution) <= 1e-6


@pytest.mark.parametrize(
    ("name", "options", "method"),
    [
        ("inverse", {}, "newton-schulz"),
        ("inverse", {"pseudo": True}, "newton-schulz"),
        ("sparse", {}, "cg"),
        ("sparse", {"size": 6, "loss": "mse"}, "cg"),
        ("toeplitz", {}, "cg"),
        ("svd", {}, "riemannian-svd"),
        ("sparse", {"hops": 2}, "lbfgs"),
        ("sparse", {"size": 6, "activation": "tanh"}, "lbfgs"),
        ("toeplitz-net", {"train": 8, "test": 4}, "levenberg-marquardt"),
    ],
)
def test_choice_per_problem(name: str, options: dict, method: str) -> None:
    problem = gdla.get_problem(name).example(**options)
    cls, reason = choose(problem)
    assert cls.name == method
    words = (name, "least-squares", "nonlinear", "inverse", "singular", "squared")
    assert reason and any(word in reason for word in words)


@pytest.mark.parametrize("name", ["inverse", "sparse", "toeplitz"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_converges_on_every_example(name: str, dtype: torch.dtype) -> None:
    problem = gdla.get_problem(name).example(dtype=dtype)
    result = gdla.solve(problem, backend="autograd")
    assert result.stop_reason in ("converged", "stalled"), result.summary()
    limit = 1e-8 if dtype == torch.float64 else 1e-4
    assert result.metrics["error"] <= limit, result.summary()
    assert result.settings["optimizer.method"] == choose(problem)[0].name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_svd_example_with_lbfgs_memory(dtype: torch.dtype) -> None:
    """Where riemannian-svd is missing, L-BFGS takes the memory the svd problem advises."""
    problem = gdla.get_problem("svd").example(dtype=dtype)
    memory = problem.quasi_newton_memory
    result = gdla.solve(problem, optimizer="lbfgs", history_size=memory, backend="autograd")
    assert result.converged, result.summary()
    assert result.settings["optimizer.history_size"] == 200
    fit = gdla.get_optimizer("lbfgs").suitability(problem)
    assert fit is not None and fit.options == {"history_size": 200}
    # measured: 645 steps in float64 (3977 with torch's 20 pairs), 154 in float32 (tol 1e-5)
    assert result.steps <= 1000, result.summary()
    reference = torch.linalg.svdvals(problem.M.double())
    assert relative_error(result.solution[1], reference) <= (1e-9 if dtype == torch.float64 else 1e-4)


def test_nonlinear_example_makes_progress() -> None:
    problem = gdla.get_problem("toeplitz-net").example(train=16, test=4, hidden=8)
    result = gdla.solve(problem, max_steps=10, tol=0, backend="autograd")
    assert result.settings["optimizer.method"] == "levenberg-marquardt"  # it declares sum_of_squares()
    assert result.losses[-1] < 0.1 * result.losses[0]


def test_describe_reports_method_reason_and_delegate_settings() -> None:
    result = gdla.solve(InverseProblem(seeded_rand(5)), backend="autograd")
    assert result.settings["optimizer.method"] == "newton-schulz"
    assert "Newton-Schulz" in result.settings["optimizer.reason"]
    assert result.settings["optimizer.start"] == "safe"  # the delegate's own settings follow
    assert result.to_dict()["settings"]["optimizer.method"] == "newton-schulz"


def test_learning_rate_is_dropped_for_exact_methods_and_kept_otherwise() -> None:
    result = gdla.solve(InverseProblem(seeded_rand(5)), lr=0.3, backend="autograd")
    assert result.converged and result.settings["lr"] is None
    assert "lr=0.3 ignored" in result.settings["optimizer.reason"]
    nonlinear = gdla.get_problem("sparse").example(hops=2)
    sparse = gdla.solve(nonlinear, lr=0.5, max_steps=3, tol=0, backend="autograd")
    assert sparse.settings["optimizer.method"] == "lbfgs" and sparse.settings["lr"] == 0.5


def test_options_go_to_the_delegate() -> None:
    problem = gdla.get_problem("sparse").example(size=8)
    result = gdla.solve(problem, blocks="global", backend="autograd")
    assert result.converged and result.settings["optimizer.blocks"] == "global"
    assert relative_error(result.solution, problem.reference()) <= 1e-8
    with pytest.raises(gdla.UsageError, match="'auto' picked 'cg' .* has no option 'momentum'"):
        gdla.solve(problem, momentum=0.9, backend="autograd")


def test_method_for_names_the_delegate_without_building_it() -> None:
    assert Auto.method_for(InverseProblem(seeded_rand(3))) == "newton-schulz"
    assert Auto.method_for(gdla.get_problem("toeplitz").example()) == "cg"


def test_building_auto_builds_the_method_it_picks() -> None:
    """``auto`` is a way of planning: building it directly builds the picked method, with its expected steps."""
    problem = InverseProblem(seeded_rand(64))
    params = problem.init_params(torch.Generator())
    opt = Auto(problem, params)
    assert type(opt) is gdla.get_optimizer("newton-schulz")
    assert opt.expected_steps(1e-8) == pytest.approx(24, abs=3)
