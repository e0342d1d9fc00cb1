"""The Newton-Schulz whole-run kernel alone against ``torch.linalg.inv`` (issue 21, target 3), in one process.

Prints a Markdown table (paste it into ``benchmarks/results/newton-schulz-kernel.md``)::

    .venv/bin/python benchmarks/newton_schulz_kernel.py [--threads 1 2] [--calls 200]

10,000 well-conditioned float32 4×4 matrices, ``torch.ops.gdla.small_inverse_newton_schulz_run`` from the safe
start: 7 steps with ``tol=0``; up to 104 steps with ``tol=1e-5`` (what ``gdla.solve`` passes; it stops after 7);
0 steps (the load, one residual and the store); and ``torch.linalg.inv`` on the same batch. Each figure is the
median of ``--calls`` calls, the variants interleaved call by call (so a slow spell of the shared machine hits
them all alike).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

import gdla
import gdla.ops  # noqa: F401  (registers the op)


def medians(threads: int, calls: int) -> dict[str, float]:
    """Median milliseconds of each variant at ``threads`` threads."""
    torch.set_num_threads(threads)
    batch = gdla.get_problem("inverse").well_conditioned(4, batch=(10_000,), dtype=torch.float32)
    A = batch.A.contiguous()
    X = torch.empty_like(A)
    op = torch.ops.gdla.small_inverse_newton_schulz_run
    variants = {
        "run, 7 steps, tol 0": lambda: op(A, X, 7, 0.0, math.nan, 1e12, True),
        "run, tol 1e-5 (stops after 7)": lambda: op(A, X, 104, 1e-5, math.nan, 1e12, True),
        "run, 0 steps": lambda: op(A, X, 0, 0.0, math.nan, 1e12, True),
        "torch.linalg.inv": lambda: torch.linalg.inv(A),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(calls):
        for name, call in variants.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.calls} interleaved calls")
    print()
    print("| threads | variant | median ms | × torch.linalg.inv |")
    print("|---|---|---|---|")
    for threads in dict.fromkeys(args.threads):
        figures = medians(threads, args.calls)
        inverse = figures["torch.linalg.inv"]
        for name, ms in figures.items():
            print(f"| {threads} | {name} | {ms:.3f} | {ms / inverse:.2f} |")


if __name__ == "__main__":
    main()
