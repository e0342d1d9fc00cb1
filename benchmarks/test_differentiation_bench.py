"""Differentiable and warm-started solves (pytest-benchmark): the cost of each backward mode, warm vs cold.

Run with ``pytest benchmarks/test_differentiation_bench.py --benchmark-only`` (not part of the test suite).

* ``differentiation 5000 steps``: one 5,000-step ``sgd`` (momentum 0.9, ``tol=0``) solve of a 16×16
  inverse, then a backward pass through its answer: ``forward`` (``backward="none"``: the solve alone),
  ``implicit`` (solve + implicit backward), ``unroll`` (solve + replay of the 5,000 steps with autograd +
  backward). ``extra_info`` has the backward pass alone (``backward_s``) and its ratio to the solve.
* ``warm start newton-schulz``: the answer for ``A + 1e-3 E`` from a cold (safe) start and from the answer
  for ``A`` (``init=``); ``extra_info`` has the steps each took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

import gdla
from gdla_plugins.problems.inverse import InverseProblem

SIDE, STEPS = 16, 5_000


def _matrix(dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    return InverseProblem.well_conditioned(SIDE, seed=seed, dtype=dtype).A.to(device)


def _solve(A: torch.Tensor, backward: str) -> Any:
    return gdla.solve(
        InverseProblem(A), optimizer="sgd", momentum=0.9, max_steps=STEPS, tol=0, backward=backward
    )


@pytest.mark.parametrize("mode", ["forward", "implicit", "unroll"])
def test_backward_modes(benchmark: Any, mode: str, dtype: torch.dtype, device: torch.device) -> None:
    benchmark.group = f"differentiation {STEPS} steps, inverse {SIDE}x{SIDE} sgd"
    A = _matrix(dtype, device)
    weight = torch.randn(SIDE, SIDE, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)

    def forward() -> Any:
        return _solve(A, "none")

    def differentiated() -> tuple[float, float]:
        leaf = A.clone().requires_grad_()
        began = time.perf_counter()
        result = _solve(leaf, mode)
        solved = time.perf_counter()
        (grad,) = torch.autograd.grad((result.solution * weight).sum(), leaf)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return solved - began, time.perf_counter() - solved

    target: Callable[[], Any] = forward if mode == "forward" else differentiated
    out = benchmark.pedantic(target, rounds=3, warmup_rounds=1)
    if mode != "forward":
        solve_s, backward_s = out
        benchmark.extra_info.update(
            {"solve_s": solve_s, "backward_s": backward_s, "backward_over_solve": backward_s / solve_s}
        )
        leaf = A.clone().requires_grad_()
        (grad,) = torch.autograd.grad((_solve(leaf, mode).solution * weight).sum(), leaf)
        inverse = torch.linalg.inv(A.double())
        exact = -(inverse.mT @ weight.double() @ inverse.mT)
        benchmark.extra_info["grad_error_vs_inv"] = float((grad.double() - exact).norm() / exact.norm())


@pytest.mark.parametrize("start", ["cold", "warm"])
def test_warm_start_newton_schulz(benchmark: Any, start: str, dtype: torch.dtype, device: torch.device) -> None:
    benchmark.group = f"warm start newton-schulz {SIDE * 4}x{SIDE * 4}, A + 1e-3 E"
    n = SIDE * 4
    A = InverseProblem.well_conditioned(n, seed=2, dtype=dtype).A.to(device)
    E = torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=dtype).to(device)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    first = gdla.solve(InverseProblem(A), optimizer="newton-schulz", tol=tol)
    init = first if start == "warm" else None
    result = benchmark(lambda: gdla.solve(InverseProblem(A + 1e-3 * E), optimizer="newton-schulz", tol=tol, init=init))
    benchmark.extra_info.update({"steps": result.steps, "stop": result.stop_reason, "tol": tol})
