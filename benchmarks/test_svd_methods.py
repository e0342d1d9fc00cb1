"""The SVD by ``riemannian-svd`` (picked by ``auto``) against the seed's penalty form with L-BFGS / Adam.

Run with ``python -m pytest benchmarks/test_svd_methods.py --benchmark-only -s`` (not part of the
test suite). Each case solves once (``pedantic``, one round) and records in ``extra_info`` the
steps, the stop reason, the worst singular-value error relative to ``σ₁`` (against
``torch.linalg.svdvals``), the residual of the defining equations and the orthonormality defect.
The penalty runs are capped (L-BFGS 500 steps, Adam 1000): they do not converge at these sizes.
Results: benchmarks/results/svd-methods.md.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

import gdla
from gdla_plugins.problems.svd import SVDProblem

SIDES = (16, 32, 64, 128)
METHODS: dict[str, dict[str, Any]] = {
    "auto (riemannian-svd)": {},
    "penalty + lbfgs (500 steps)": {"optimizer": "lbfgs", "history_size": 200, "max_steps": 500},
    "penalty + adam (1000 steps)": {"optimizer": "adam", "lr": 1e-2, "max_steps": 1000},
}


def line(info: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())


def accuracy(problem: SVDProblem, params: dict[str, torch.Tensor]) -> dict[str, float]:
    U, S, V = problem.solution(params)
    reference = torch.linalg.svdvals(problem.M)[: problem.rank]
    eye = torch.eye(problem.rank, dtype=problem.M.dtype)
    return {
        "sv_error": float((S - reference).abs().max() / reference[0]),
        "residual": float(problem.residual(params)),
        "orthonormality": max(
            float(torch.linalg.matrix_norm(U.mT @ U - eye)), float(torch.linalg.matrix_norm(V.mT @ V - eye))
        ),
    }


def run_case(benchmark: Any, problem: SVDProblem, options: dict[str, Any]) -> None:
    holder: dict[str, Any] = {}

    def solve() -> None:
        start = time.perf_counter()
        holder["result"] = gdla.solve(problem, seed=0, **options)
        holder["seconds"] = time.perf_counter() - start

    benchmark.pedantic(solve, rounds=1, iterations=1)
    result = holder["result"]
    info = {"steps": result.steps, "stop": result.stop_reason, "seconds": holder["seconds"]}
    info.update(accuracy(problem, result.params))
    benchmark.extra_info.update(info)
    print(f"\n{benchmark.name}: {line(info)}")


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("side", SIDES)
def test_square_svd(benchmark: Any, side: int, method: str) -> None:
    benchmark.group = f"svd {side}x{side} float64"
    M = torch.randn(side, side, generator=torch.Generator().manual_seed(side), dtype=torch.float64)
    run_case(benchmark, SVDProblem(M), METHODS[method])


@pytest.mark.parametrize("method", ["auto (riemannian-svd)", "torch.svd_lowrank (niter=8)"])
def test_truncated_rank_5_of_300x200(benchmark: Any, method: str) -> None:
    benchmark.group = "truncated rank 5 of 300x200 float64"
    M = torch.randn(300, 200, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    problem = SVDProblem(M, rank=5)
    if method.startswith("auto"):
        run_case(benchmark, problem, {})
        return
    holder: dict[str, Any] = {}

    def lowrank() -> None:
        start = time.perf_counter()
        holder["out"] = torch.svd_lowrank(M, q=10, niter=8)
        holder["seconds"] = time.perf_counter() - start

    benchmark.pedantic(lowrank, rounds=1, iterations=1)
    U, S, V = holder["out"]
    params = {"U": U[:, :5].contiguous(), "s": S[:5].sqrt(), "V": V[:, :5].contiguous()}
    info = {"steps": 8, "stop": "niter", "seconds": holder["seconds"], **accuracy(problem, params)}
    benchmark.extra_info.update(info)
    print(f"\n{benchmark.name}: {line(info)}")


def test_toeplitz_net_levenberg_marquardt(benchmark: Any) -> None:
    benchmark.group = "toeplitz-net example float64"
    problem = gdla.get_problem("toeplitz-net").example()
    holder: dict[str, Any] = {}

    def solve() -> None:
        start = time.perf_counter()
        holder["result"] = gdla.solve(problem, seed=0, max_steps=60)
        holder["seconds"] = time.perf_counter() - start

    benchmark.pedantic(solve, rounds=1, iterations=1)
    result = holder["result"]
    info = {
        "optimizer": result.settings.get("optimizer.method"),
        "steps": result.steps,
        "stop": result.stop_reason,
        "seconds": holder["seconds"],
        "error": result.metrics["error"],
        "residual": result.metrics["residual"],
    }
    benchmark.extra_info.update(info)
    print(f"\n{benchmark.name}: {line(info)}")
