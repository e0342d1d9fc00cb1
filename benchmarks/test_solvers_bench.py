"""Side-by-side timings of the fast solvers against ``torch.linalg`` (pytest-benchmark).

Run with ``pytest benchmarks/test_solvers_bench.py`` (not part of the test suite). One group per
operation and size, the implementation as the parameter, so each table compares like with like;
``extra_info`` records the accuracy reached, the iterations, and for the Newton-Schulz kernel its
time as a fraction of ``torch.linalg.inv``'s measured in the same process (``ratio_to_inv``).
"""

from __future__ import annotations

import math
import timeit
from collections.abc import Callable
from typing import Any

import pytest
import torch

import gdla
from gdla_plugins.optimizers.newton_schulz import FUSED_MAX_SIDE, _ops_function, batched_inverse
from gdla_plugins.problems.inverse import InverseProblem

BATCH, SIDE, TOL = 10_000, 4, 1e-6


def worst_residual(A: torch.Tensor, X: torch.Tensor) -> float:
    """``max ‖A X − I‖_F / √n`` over the batch, computed in float64."""
    eye = torch.eye(A.shape[-1], dtype=torch.float64)
    return float((torch.linalg.matrix_norm(A.double() @ X.double() - eye) / math.sqrt(A.shape[-1])).max())


def best_seconds(fn: Callable[[], Any], repeats: int = 20) -> float:
    fn()
    return min(timeit.repeat(fn, number=1, repeat=repeats))


@pytest.fixture(scope="module")
def small_batch() -> torch.Tensor:
    """10,000 well-conditioned 4x4 float32 matrices (condition numbers below about 5)."""
    return InverseProblem.well_conditioned(SIDE, batch=(BATCH,), seed=0, dtype=torch.float32).A


def _kernel_available() -> bool:
    return _ops_function("small_inverse_newton_schulz") is not None and SIDE <= FUSED_MAX_SIDE


IMPLEMENTATIONS = ["torch.linalg.inv", "newton-schulz-kernel", "newton-schulz-torch", "gdla.solve-newton-schulz"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_small_batch_inverse(benchmark: Any, small_batch: torch.Tensor, implementation: str) -> None:
    A = small_batch
    benchmark.group = f"inverse {BATCH}x{SIDE}x{SIDE} float32 to {TOL:g}"
    if implementation == "torch.linalg.inv":
        X = benchmark(torch.linalg.inv, A)
        steps = 0
    elif implementation == "newton-schulz-kernel":
        if not _kernel_available():
            pytest.skip("gdla.ops.small_inverse_newton_schulz is not available (build the extension)")
        X, per_problem = benchmark(batched_inverse, A, tol=TOL, backend="fused")
        steps = int(per_problem.max())
        kernel = best_seconds(lambda: batched_inverse(A, tol=TOL, backend="fused"))
        reference = best_seconds(lambda: torch.linalg.inv(A))
        benchmark.extra_info["ratio_to_inv"] = kernel / reference
    elif implementation == "newton-schulz-torch":
        X, per_problem = benchmark(batched_inverse, A, tol=TOL, backend="autograd")
        steps = int(per_problem.max())
    else:
        problem = InverseProblem(A)
        result = benchmark(gdla.solve, problem, optimizer="newton-schulz", tol=TOL, backend="autograd")
        X, steps = result.solution, result.steps
    residual = worst_residual(A, X)
    benchmark.extra_info.update({"residual": residual, "steps": steps})
    assert residual <= 2 * TOL  # float32 rounding of the check itself on top of tol


MEDIUM_METHODS = ["torch.linalg.inv", "newton-schulz", "cg", "auto"]


@pytest.mark.parametrize("implementation", MEDIUM_METHODS)
def test_random_64_inverse(benchmark: Any, implementation: str) -> None:
    A = torch.rand(64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    benchmark.group = "inverse rand(64, 64) float64 to 1e-8"
    if implementation == "torch.linalg.inv":
        X, steps = benchmark(torch.linalg.inv, A), 0
    else:
        result = benchmark(gdla.solve, InverseProblem(A), optimizer=implementation, tol=1e-8, backend="autograd")
        X, steps = result.solution, result.steps
    residual = worst_residual(A, X)
    benchmark.extra_info.update({"residual": residual, "steps": steps})
    assert residual <= 1e-8
