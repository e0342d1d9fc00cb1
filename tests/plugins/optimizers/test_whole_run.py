"""Whole runs in one kernel call (``momentum``, ``adam``, ``sgd`` under ``backend="fused"``): ``advance(n)`` gives the
bits of ``n`` calls of ``advance(1)``, with and without the kernel's own residual test."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gdla
from gdla.optimizer import Stretch
from gdla.stopping import BLOW_UP

pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")

inverse = gdla.get_problem("inverse")
STEPS = 120


def build(name: str, problem: gdla.Problem, **options: Any) -> gdla.Optimizer:
    params = problem.init_params(torch.Generator().manual_seed(0))
    return gdla.get_optimizer(name)(problem, params, backend="fused", max_steps=1000, **options)


def in_bulk(opt: gdla.Optimizer, steps: int, tol: float) -> tuple[list[float], list[float] | None]:
    """``advance`` asked for all ``steps`` again and again until they are taken (or it stops early)."""
    losses: list[float] = []
    residuals: list[float] | None = [] if tol > 0 else None
    while len(losses) < steps:
        stretch = opt.advance(steps - len(losses), tol)
        assert isinstance(stretch, Stretch) and 1 <= len(stretch.losses) <= steps - len(losses)
        losses += stretch.losses.tolist()
        if residuals is not None:
            if stretch.residuals is None:  # one step taken: the loop tests it
                assert len(stretch.losses) == 1
                residuals.append(float(opt.problem.residual(opt.params)))
            else:
                residuals += stretch.residuals.tolist()
            if residuals[-1] <= tol:
                break
    return losses, residuals


def one_by_one(opt: gdla.Optimizer, steps: int, tol: float) -> tuple[list[float], list[float] | None]:
    losses: list[float] = []
    residuals: list[float] | None = [] if tol > 0 else None
    for _ in range(steps):
        stretch = opt.advance(1, tol)
        assert len(stretch.losses) == 1
        losses += stretch.losses.tolist()
        if residuals is not None:
            residuals.append(
                float(opt.problem.residual(opt.params)) if stretch.residuals is None else float(stretch.residuals[0])
            )
            if residuals[-1] <= tol:
                break
    return losses, residuals


CASES = {
    "momentum": lambda dtype: ("momentum", inverse.example(side="left", dtype=dtype), {"lr": 0.9, "momentum": 0.9}),
    "momentum-6": lambda dtype: ("momentum", inverse.well_conditioned(6, dtype=dtype), {}),
    "adam": lambda dtype: ("adam", inverse.well_conditioned(16, dtype=dtype), {}),
    "adam-multistep": lambda dtype: ("adam", inverse.well_conditioned(5, dtype=dtype, side="right"),
                                     {"schedule": "multistep", "schedule_options": {"milestones": [20, 60]}}),
    "sgd-svd": lambda dtype: ("sgd", gdla.get_problem("svd").example(dtype=dtype), {"lr": 0.9, "momentum": 0.9}),
    "sgd-masked": lambda dtype: ("sgd", gdla.get_problem("sparse").example(hops=2, dtype=dtype),
                                 {"lr": 0.01, "momentum": 0.5, "schedule": "cosine"}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_advance_in_bulk_equals_one_step_a_call(case: str, dtype: torch.dtype, tol: float) -> None:
    name, problem, options = CASES[case](dtype)
    bulk, step = build(name, problem, **options), build(name, problem, **options)
    assert bulk._whole_run is not None, "the kernel should serve this run"
    bulk_losses, bulk_residuals = in_bulk(bulk, STEPS, tol)
    step_losses, step_residuals = one_by_one(step, STEPS, tol)
    assert bulk_losses == step_losses  # the same bits
    assert bulk_residuals == step_residuals
    for key in bulk.params:
        assert torch.equal(bulk.params[key], step.params[key])
    if tol == 0:
        assert len(bulk_losses) == STEPS


def test_the_inverse_kernels_test_the_residual_themselves_and_stop_there() -> None:
    problem = inverse.well_conditioned(6, dtype=torch.float64)
    opt = build("momentum", problem)
    stretch = opt.advance(5000, 1e-8)
    assert stretch.residuals is not None and stretch.residuals.shape == stretch.losses.shape
    assert float(stretch.residuals[-1]) <= 1e-8 < float(stretch.residuals[:-1].min())
    assert float(problem.residual(opt.params)) == pytest.approx(float(stretch.residuals[-1]), rel=1e-6)


def test_without_a_residual_factor_a_run_with_a_tolerance_takes_one_step_a_call() -> None:
    problem = inverse.well_conditioned(4, batch=(3,), dtype=torch.float64)  # the worst member: no factor
    assert problem.fused_loss().residual_factor is None
    opt = build("momentum", problem)
    stretch = opt.advance(50, 1e-8)
    assert len(stretch.losses) == 1 and stretch.residuals is None
    assert len(opt.advance(50).losses) == 50


def test_a_diverging_kernel_run_stops_after_the_step_that_blows_up() -> None:
    problem = inverse.example(side="left")
    opt = build("momentum", problem, lr=40.0, momentum=0.9)
    losses = opt.advance(3000).losses
    first = float(losses[0])
    assert len(losses) < 3000
    assert not (float(losses[-1]) <= BLOW_UP * first)  # the last step is the one that diverged
    assert all(float(value) <= BLOW_UP * first for value in losses[:-1])
