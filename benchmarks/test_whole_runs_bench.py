"""The whole-run kernels through ``gdla.solve`` (pytest-benchmark; not part of the test suite).

One group per seed scenario; the parameter is how the same run is executed:

* ``bulk``: ``backend="fused"``, nothing watching the steps, so the optimizer's whole-run kernel
  takes the budget in one call (``inverse_momentum_run``, ``inverse_adam_run``, ``svd_sgd_run``,
  ``masked_sgd_run``);
* ``step``: the same kernel one step a call (a callback forces the step-by-step loop; the same bits);
* ``autograd``: ``torch.optim`` with autograd gradients, step by step.

``extra_info`` records the steps and the final loss of each, so the table also shows that the three
agree. Run with ``pytest benchmarks/test_whole_runs_bench.py --benchmark-only``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gdla

pytestmark = pytest.mark.skipif(not gdla.extension_status()[0], reason="the compiled extension gdla._C is not built")


def _scenarios() -> dict[str, tuple[Any, dict[str, Any]]]:
    inverse = gdla.get_problem("inverse")
    return {
        "seed 000 momentum 4x4, 2,000 steps": (
            inverse.example(side="left", dtype=torch.float32),
            {"optimizer": "momentum", "lr": 0.9, "momentum": 0.9, "max_steps": 2000},
        ),
        "seed 001 sgd svd 5x4, 2,000 steps": (
            gdla.get_problem("svd").example(dtype=torch.float32),
            {"optimizer": "sgd", "lr": 0.9, "momentum": 0.9, "max_steps": 2000},
        ),
        "seed 002 sgd masked 3x3 two hops, 500 steps": (
            gdla.get_problem("sparse").example(hops=2, dtype=torch.float32),
            {"optimizer": "sgd", "lr": 0.01, "max_steps": 500},
        ),
        "seed 003 adam 16x16 multistep, 2,000 steps": (
            inverse.well_conditioned(16, dtype=torch.float32),
            {"optimizer": "adam", "lr": 0.05, "schedule": "multistep", "max_steps": 2000},
        ),
    }


SCENARIOS = _scenarios()


def _watch(step: int, loss: float, params: gdla.Params) -> None:
    """A callback: the loop then goes one step a call."""


@pytest.mark.parametrize("how", ["bulk", "step", "autograd"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_whole_run(benchmark: Any, scenario: str, how: str) -> None:
    problem, settings = SCENARIOS[scenario]
    options = {**settings, "tol": 0, "backend": "autograd" if how == "autograd" else "fused"}
    if how == "step":
        options["callback"] = _watch
    benchmark.group = scenario
    result = benchmark(gdla.solve, problem, **options)
    benchmark.extra_info.update({"steps": result.steps, "final_loss": result.losses[-1]})
    assert result.steps == settings["max_steps"]


TESTED = {
    "seed 003's problem, solve defaults (adam, tol 1e-5)": (
        gdla.get_problem("inverse").well_conditioned(16, dtype=torch.float32), {"optimizer": "adam"},
    ),
    "seed 000's problem, momentum to tol 1e-5": (
        gdla.get_problem("inverse").example(side="left", dtype=torch.float32),
        {"optimizer": "momentum", "lr": 0.9, "momentum": 0.9, "max_steps": 10_000},
    ),
}


@pytest.mark.parametrize("how", ["bulk", "step", "autograd"])
@pytest.mark.parametrize("scenario", list(TESTED))
def test_run_with_a_tolerance(benchmark: Any, scenario: str, how: str) -> None:
    """The default tolerance: ``bulk`` is the kernel testing the residual itself (``Optimizer.advance``)."""
    problem, settings = TESTED[scenario]
    options = {**settings, "backend": "autograd" if how == "autograd" else "fused"}
    if how == "step":
        options["callback"] = _watch
    benchmark.group = scenario
    result = benchmark(gdla.solve, problem, **options)
    benchmark.extra_info.update({"steps": result.steps, "stop": result.stop_reason})
    assert result.stop_reason == "converged"
