"""Runs with a tolerance in bulk: the optimizer's own residual test (``Optimizer.advance(n, tol)``) against the loop's.

A whole-run kernel that finds the residual in the loss its next step computes (the inverse
problem's ``InverseMSE.residual_factor``) runs many steps a call and stops where the loop, testing
after every step, stops: the same losses, steps, stop reason and solution, bit for bit, as a run
watched one step at a time (a callback forces that path).
"""

from __future__ import annotations

import math

import pytest
import torch

import gdla
from gdla.capabilities import InverseMSE
from gdla_plugins.optimizers._whole_run import WholeRun

pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")

inverse = gdla.get_problem("inverse")


def watched(step: int, loss: float, params: object) -> None:
    """A callback that never stops the run: it makes the loop go one step at a time."""


def assert_same_run(bulk: gdla.Result, step: gdla.Result) -> None:
    assert bulk.losses == step.losses
    assert (bulk.steps, bulk.stop_reason) == (step.steps, step.stop_reason)
    assert torch.equal(bulk.solution, step.solution)


CASES = [
    ("momentum", lambda: inverse.example(side="left", dtype=torch.float32), {"lr": 0.9, "momentum": 0.9}),
    ("momentum", lambda: inverse.well_conditioned(6, dtype=torch.float64), {}),
    ("adam", lambda: inverse.well_conditioned(16, dtype=torch.float32), {}),
    ("adam", lambda: inverse(torch.eye(5, dtype=torch.float64) + 0.2 * torch.ones(5, 5, dtype=torch.float64),
                             side="right"), {"schedule": "multistep"}),
]


@pytest.mark.parametrize(("optimizer", "make", "options"), CASES)
def test_bulk_run_with_a_tolerance_equals_the_watched_run(optimizer, make, options) -> None:
    problem = make()
    bulk = gdla.solve(problem, optimizer=optimizer, max_steps=5000, **options)
    step = gdla.solve(problem, optimizer=optimizer, max_steps=5000, callback=watched, **options)
    assert bulk.backend == "fused" and bulk.stop_reason == "converged" and bulk.steps < 5000
    assert_same_run(bulk, step)
    tol = bulk.settings["tol"]
    # the kernel's residual (from the loss, in double) and the problem's (a norm, in the dtype) agree to rounding
    assert bulk.metrics["residual"] <= tol * (1 + 1e-3)
    autograd = gdla.solve(problem, optimizer=optimizer, max_steps=5000, backend="autograd", **options)
    # rounding differs (fused products against autograd's): the step where the residual crosses tol may move a little
    assert autograd.stop_reason == "converged" and abs(autograd.steps - bulk.steps) <= max(2, 0.02 * bulk.steps)


def test_bulk_run_calls_the_kernel_once_per_stretch_the_stall_test_allows(monkeypatch) -> None:
    calls: list[int] = []
    real = WholeRun.advance

    def counting(self, steps, tol=0.0):
        calls.append(steps)
        return real(self, steps, tol)

    monkeypatch.setattr(WholeRun, "advance", counting)
    problem = inverse.example(side="left", dtype=torch.float32)
    result = gdla.solve(problem, optimizer="momentum", lr=0.9, momentum=0.9, max_steps=10_000, patience=300)
    assert result.stop_reason == "converged" and result.steps > 300
    # every call runs as far as the stall test allows (300 steps past the last checkpoint), not one step
    assert len(calls) <= math.ceil(result.steps / 250) + 1 and calls[0] == 300
    monkeypatch.setattr(WholeRun, "advance", real)
    assert_same_run(result, gdla.solve(problem, optimizer="momentum", lr=0.9, momentum=0.9, max_steps=10_000,
                                       patience=300, callback=watched))


def test_stall_and_divergence_stop_a_bulk_run_where_the_watched_run_stops() -> None:
    problem = inverse.well_conditioned(4, dtype=torch.float64)
    stalled = {"optimizer": "adam", "lr": 1e-12, "patience": 7, "max_steps": 500}
    bulk = gdla.solve(problem, **stalled)
    assert bulk.stop_reason == "stalled" and bulk.steps == 8  # checkpoint at step 1, then 7 steps without progress
    assert_same_run(bulk, gdla.solve(problem, callback=watched, **stalled))
    diverging = {"optimizer": "momentum", "lr": 1e3, "momentum": 0.9, "max_steps": 500}
    with pytest.warns(gdla.ConvergenceWarning, match="expected to diverge"):
        bulk = gdla.solve(problem, **diverging)
    assert bulk.stop_reason == "diverged" and bulk.steps < 500
    with pytest.warns(gdla.ConvergenceWarning, match="expected to diverge"):
        assert_same_run(bulk, gdla.solve(problem, callback=watched, **diverging))


def test_problems_whose_residual_is_not_the_loss_declare_no_factor() -> None:
    one = inverse.well_conditioned(4, dtype=torch.float64)
    assert one.fused_loss().residual_factor == 4.0
    tall = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for problem in (
        inverse(tall.mT, side="right"),  # many right inverses: the loop projects after every step
        inverse(tall, side="right", pseudo=True),  # A M = I unattainable: the normal equations' residual
        inverse.well_conditioned(4, batch=(3,), dtype=torch.float64),  # the worst member: not the summed loss
        inverse(one.A, side="both"),  # the larger of two residuals
    ):
        assert problem.fused_loss().residual_factor is None
        if problem.A.shape[-1] != problem.A.shape[-2]:
            continue
        bulk = gdla.solve(problem, optimizer="momentum", max_steps=3000)
        assert_same_run(bulk, gdla.solve(problem, optimizer="momentum", max_steps=3000, callback=watched))


def test_declared_factor_reproduces_the_problems_residual() -> None:
    problem = inverse.well_conditioned(6, dtype=torch.float64)
    form = problem.fused_loss()
    params = problem.init_params(torch.Generator().manual_seed(3))
    loss = problem.loss(params).detach().reshape(1)
    assert float(form.residuals(loss)[0]) == pytest.approx(float(problem.residual(params)), rel=1e-12)


@pytest.mark.parametrize("factor", [4.0, 16.0, 3.0, 1e-3])
@pytest.mark.parametrize("tol", [1e-5, 2.5e-7, 1e-12, 0.3, 7.77e-9])
def test_loss_tolerance_is_the_residual_test_on_the_loss(factor: float, tol: float) -> None:
    form = InverseMSE(torch.eye(2), residual_factor=factor)
    bound = form.loss_tolerance(tol)
    at, above = torch.tensor([bound, math.nextafter(bound, math.inf)], dtype=torch.float64)
    assert float(form.residuals(at.reshape(1))[0]) <= tol < float(form.residuals(above.reshape(1))[0])
    with pytest.raises(gdla.InputError, match="residual_factor"):
        InverseMSE(torch.eye(2)).loss_tolerance(tol)
