"""Diagnostics: condition estimates, the warning before a run that cannot finish, and stop reasons."""

from __future__ import annotations

import json
import math
import re
import warnings

import pytest
import torch

import gdla
from gdla.result import STOP_REASONS
from gdla_plugins.optimizers._spectral import (
    Lanczos,
    fixed_step_rate,
    gram_extremes,
    hessian_extremes,
    lanczos_extremes,
)
from gdla_plugins.problems.inverse import InverseProblem


def seeded_rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def hilbert(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    return 1.0 / (i[:, None] + i[None, :] + 1)


# -- condition estimates ----------------------------------------------------------------------
def test_inverse_condition_in_the_result() -> None:
    A = seeded_rand(16, 16)
    result = gdla.solve(InverseProblem(A), max_steps=3, tol=0, backend="autograd")
    assert result.condition == pytest.approx(float(torch.linalg.cond(A)), rel=1e-8)
    assert "condition number estimate" in result.summary()
    assert json.loads(json.dumps(result.to_dict()))["condition"] == pytest.approx(result.condition)


def test_batched_condition_is_the_worst_member() -> None:
    A = torch.stack([hilbert(4), torch.eye(4, dtype=torch.float64), seeded_rand(4, 4)])
    result = gdla.solve(InverseProblem(A), max_steps=2, tol=0, backend="autograd")
    assert result.condition == pytest.approx(float(torch.linalg.cond(A).max()), rel=1e-8)


def test_singular_condition_says_singular_not_nan() -> None:
    A = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    result = gdla.solve(InverseProblem(A, pseudo=True), max_steps=2, tol=0, backend="autograd")
    # σ_min is 0 or rounding noise: either way beyond 1/ε, the mark of a numerically singular matrix
    assert not math.isnan(result.condition) and result.condition >= 1 / torch.finfo(torch.float64).eps
    json.dumps(result.to_dict())


@pytest.mark.parametrize("name", ["svd", "toeplitz", "sparse"])
def test_other_problems_condition(name: str) -> None:
    problem = gdla.get_problem(name).example(**({"size": 8} if name == "sparse" else {}))
    expected = {
        "svd": lambda: float(torch.linalg.cond(problem.M)),
        "toeplitz": lambda: float(torch.linalg.cond(problem.design()[0])) ** 2,  # of the Hessian DᵀD
        "sparse": lambda: float(torch.linalg.cond(problem.X)) ** 2,  # of X Xᵀ
    }[name]()
    assert problem.condition_estimate() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("case", ["rand64", "hilbert6", "batch"])
def test_lanczos_condition_estimates_agree_with_torch(case: str) -> None:
    A = {"rand64": seeded_rand(64, 64), "hilbert6": hilbert(6), "batch": seeded_rand(200, 5, 5)}[case]
    estimate = gram_extremes(A).condition.sqrt()
    # squaring costs accuracy at κ ≈ 1/√ε (Hilbert 6): a few percent there, 1e-6 elsewhere
    torch.testing.assert_close(estimate, torch.linalg.cond(A), rtol=5e-2 if case == "hilbert6" else 1e-6, atol=0)


def test_a_resumed_lanczos_run_gives_the_bits_of_fresh_runs_and_pays_only_its_new_steps() -> None:
    A = seeded_rand(3, 12, 12, seed=4)
    gram = A.mT @ A  # a batch of three PSD operators
    start = seeded_rand(3, 12, seed=5) - 0.5
    products = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        products.append(1)
        return (gram @ v[..., None])[..., 0]

    run = Lanczos(matvec, start)
    for steps in (2, 5, 3, 12, 40):  # shorter asks reread the run, longer ones go on; 40 is clipped to d = 12
        resumed = run.extremes(steps)
        fresh = lanczos_extremes(lambda v: (gram @ v[..., None])[..., 0], start, steps)
        assert torch.equal(resumed.largest, fresh.largest) and torch.equal(resumed.smallest, fresh.smallest)
        assert resumed.matvecs == fresh.matvecs == min(steps, 12)
    assert len(products) == 12  # each iteration once
    torch.testing.assert_close(run.extremes(12).largest, torch.linalg.eigvalsh(gram)[..., -1], rtol=1e-10, atol=0)


def test_hessian_condition_of_the_inverse_loss_is_cond_squared() -> None:
    problem = InverseProblem(seeded_rand(32, 32))
    spectrum = hessian_extremes(problem, problem.init_params(torch.Generator()), steps=120)
    assert spectrum.worst_condition() == pytest.approx(float(torch.linalg.cond(problem.A)) ** 2, rel=1e-6)


# -- the warning before the run ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("optimizer", "options"),
    [("heavy-ball", {}), ("line-search", {}), ("cg", {"max_steps": 10}), ("newton-schulz", {"max_steps": 10})],
)
def test_warns_before_a_run_that_cannot_reach_tol(optimizer: str, options: dict) -> None:
    problem = InverseProblem(seeded_rand(64, 64))
    budget = options.pop("max_steps", 100)
    with pytest.warns(gdla.ConvergenceWarning) as caught:
        result = gdla.solve(problem, optimizer=optimizer, max_steps=budget, tol=1e-8, backend="autograd", **options)
    text = str(caught[0].message)
    assert f"optimizer {optimizer!r} is expected to need about" in text
    assert f"more than max_steps={budget}" in text
    expected = float(text.split("about ")[1].split(" steps")[0])
    assert expected > budget
    # the advice names a method expected to fit the budget, or says that none does
    if "should need about" in text:
        advised = float(text.split("should need about ")[1].split(" steps")[0])
        assert advised <= budget and f"optimizer={optimizer!r}" not in text
    else:
        assert text.endswith("raise max_steps")
    assert result.warnings == [text]
    assert not result.converged


def test_no_warning_when_the_budget_suffices() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = gdla.solve(InverseProblem(seeded_rand(64, 64)), max_steps=100, tol=1e-8, backend="autograd")
    assert result.converged and result.warnings == []


def test_estimated_steps_are_right_within_a_few() -> None:
    A = seeded_rand(64, 64)
    problem = InverseProblem(A)
    ns = gdla.get_optimizer("newton-schulz")(problem, problem.init_params(torch.Generator()))
    result = gdla.solve(problem, optimizer="newton-schulz", tol=1e-8, backend="autograd")
    assert abs(ns.expected_steps(1e-8) - result.steps) <= 3  # 24 estimated, 26 run


def test_momentum_rate_formula() -> None:
    # gradient descent with lr = 1/L contracts by 1 − μ/L; heavy ball at its optimum by √β
    assert fixed_step_rate(1.0, 0.0, [0.01, 1.0]) == pytest.approx(0.99)
    assert fixed_step_rate(4 / (1 + 0.1) ** 2, (0.9 / 1.1) ** 2, [0.01, 1.0]) == pytest.approx(0.9 / 1.1)
    assert fixed_step_rate(2.5, 0.0, [1.0]) > 1  # lr above 2/L diverges


@pytest.mark.skipif(
    gdla.get_optimizer("momentum").expected_steps is gdla.Optimizer.expected_steps,
    reason="momentum has no expected_steps yet (fixed_step_expected_steps is proposed for it)",
)
def test_momentum_on_rand64_warns_and_names_a_method_that_can() -> None:
    problem = InverseProblem(seeded_rand(64, 64))
    pattern = r"'momentum' .* max_steps=100; optimizer='newton-schulz' should need about (\d+) steps"
    with pytest.warns(gdla.ConvergenceWarning, match=pattern) as caught:
        gdla.solve(problem, optimizer="momentum", max_steps=100, tol=1e-6, backend="autograd")
    advised = int(re.search(pattern, str(caught[0].message)).group(1))
    # ...and the method it names does reach the tolerance within that budget, as estimated
    result = gdla.solve(problem, optimizer="newton-schulz", max_steps=100, tol=1e-6, backend="autograd")
    assert result.converged and result.steps <= advised + 2


# -- stop reasons -----------------------------------------------------------------------------
def check_stop(result: gdla.Result, reason: str) -> None:
    assert result.stop_reason == reason, result.summary()
    assert result.message == STOP_REASONS[reason]
    assert STOP_REASONS[reason] in result.summary()
    assert result.to_dict()["stop_reason"] == reason


def test_stop_converged() -> None:
    result = gdla.solve(InverseProblem(seeded_rand(8, 8)), tol=1e-9, backend="autograd")
    check_stop(result, "converged")
    assert result.metrics["residual"] <= 1e-9


def test_stop_max_steps() -> None:
    result = gdla.solve(InverseProblem(seeded_rand(8, 8)), optimizer="cg", max_steps=3, tol=0, backend="autograd")
    check_stop(result, "max_steps")
    assert result.steps == 3


def test_stop_stalled_at_the_rounding_floor() -> None:
    # Hilbert 6 cannot be inverted to a residual of 1e-15 in float64: Newton-Schulz levels off
    result = gdla.solve(InverseProblem(hilbert(6)), tol=1e-15, patience=20, backend="autograd")
    check_stop(result, "stalled")
    assert result.metrics["error"] <= 1e-8  # stalled at the floor, not lost
    assert result.steps < 200


def test_stop_diverged_without_nan_in_the_metrics() -> None:
    problem = InverseProblem(seeded_rand(8, 8))
    with pytest.warns(gdla.ConvergenceWarning, match="expected to diverge at this learning rate"):
        result = gdla.solve(problem, optimizer="sgd", lr=1e3, max_steps=500, backend="autograd")
    check_stop(result, "diverged")
    assert result.steps < 500


def test_stop_callback() -> None:
    result = gdla.solve(
        InverseProblem(seeded_rand(8, 8)), callback=lambda step, loss, params: step == 4, backend="autograd"
    )
    check_stop(result, "callback")
    assert result.steps == 4
