"""The values-only ``sparse`` problem at scale: n = 200,000, about 1.2M stored entries, p = 8 columns.

Run ``python benchmarks/sparse_scale.py [--n N] [--per-row K] [--columns P] [--tol T]``; prints the
build time, one ``loss_and_grad`` (a gradient step's work) against one sparse product ``S X`` plus
one transpose product ``Sᵀ G``, the ``optimizer="auto"`` solve (method, steps, seconds, relative
residual, error against the row-wise reference) and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import torch

import gdla
from gdla_plugins.problems.sparse import SparseProblem


def _best_of(call: Callable[[], object], repeats: int = 5) -> float:
    call()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--per-row", type=int, default=6)
    parser.add_argument("--columns", type=int, default=8)
    parser.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args()
    began = time.perf_counter()
    problem = SparseProblem.example(args.n, storage="sparse", per_row=args.per_row, columns=args.columns, loss="mse")
    build = time.perf_counter() - began
    pattern, X = problem.pattern, problem.X
    assert pattern is not None
    U = torch.zeros(pattern.nnz, dtype=problem.dtype)
    grad = _best_of(lambda: problem.loss_and_grad({"U": U}))
    products = _best_of(lambda: (pattern.csr(problem.init_values) @ X, pattern.csr_t(problem.init_values) @ X))
    began = time.perf_counter()
    result = gdla.solve(problem, optimizer="auto", tol=args.tol, max_steps=5000)
    solve = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"n={args.n} nnz={pattern.nnz} p={args.columns} float64 threads={torch.get_num_threads()}: "
        f"build {build:.2f} s; loss_and_grad {grad * 1e3:.1f} ms vs S·X + Sᵀ·G {products * 1e3:.1f} ms "
        f"(ratio {grad / products:.2f}); "
        f"auto -> {result.optimizer} {result.steps} steps {result.stop_reason} in {solve:.1f} s "
        f"(loop {result.seconds:.1f} s), residual {result.metrics['residual']:.2e}, "
        f"error {result.metrics['error']:.2e}; "
        f"peak RSS {peak:.0f} MiB (dense S alone would be {args.n**2 * 8 / 2**30:.0f} GiB)"
    )


if __name__ == "__main__":
    main()
