"""The momentum whole-run kernel alone against the eager ``torch.bmm`` autograd + SGD loop (issue 21, target 3).

Prints a Markdown table (paste it into ``benchmarks/results/momentum-kernel.md``)::

    .venv/bin/python benchmarks/momentum_kernel.py [--threads 1 2] [--calls 15] [--before OLD_SO] [--rounds 2]

10,000 float32 (and float64) 4×4 matrices near the identity from the safe start, ``side="right"``, lr 0.5,
momentum 0.9: ``torch.ops.gdla.inverse_momentum_run`` for 200 steps in one call (the kernel ``gdla.solve`` runs for
``optimizer="momentum"``), against ``benchmarks/eager_loops.py``'s ``batch_momentum_eager`` (``torch.bmm`` autograd and
``torch.optim.SGD``, 10 steps a call) on the same float32 batch. Figures are per step: the median of ``--calls``
calls, the variants interleaved call by call (a slow spell of the shared machine hits them all alike).

``--library SO`` loads that extension file alone (``torch.ops.load_library``; gdla is not imported) instead of
gdla's own. ``--before OLD_SO`` runs this script in fresh processes, alternately on OLD_SO and on gdla's extension,
``--rounds`` times each (two extensions cannot register the same operators in one process), and prints both
columns; the ratio to the eager loop, measured in the same process, is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from eager_loops import batch_momentum_eager

STEPS = 200
EAGER_STEPS = 10
BATCH = 10_000


def problems(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A well-conditioned batch near the identity and its safe start A^T / (||A||_1 ||A||_inf)."""
    g = torch.Generator().manual_seed(0)
    A = torch.eye(4, dtype=torch.float64) + 0.15 * torch.randn(BATCH, 4, 4, generator=g, dtype=torch.float64)
    X = A.mT / (torch.linalg.matrix_norm(A, 1) * torch.linalg.matrix_norm(A, math.inf))[..., None, None]
    return A.to(dtype).contiguous(), X.to(dtype).contiguous()


def per_step_us(threads: int, calls: int) -> dict[str, float]:
    """Median microseconds per step of each variant at ``threads`` threads."""
    torch.set_num_threads(threads)
    op = torch.ops.gdla.inverse_momentum_run
    data = {dtype: problems(dtype) for dtype in (torch.float32, torch.float64)}

    def kernel(dtype: torch.dtype):
        A, X0 = data[dtype]

        def call() -> None:
            X, buf = X0.clone(), torch.zeros_like(X0)
            op(A, X, buf, "right", 0.5, 0.9, STEPS, False, math.nan, 1e30, -1.0)

        return call

    variants = {  # name: (call, steps a call)
        "kernel, float32": (kernel(torch.float32), STEPS),
        "kernel, float64": (kernel(torch.float64), STEPS),
        "eager bmm + SGD, float32": (lambda: batch_momentum_eager(*data[torch.float32], EAGER_STEPS), EAGER_STEPS),
    }
    for call, _ in variants.values():  # warm-up
        call()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(calls):
        for name, (call, steps) in variants.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) * 1e6 for name, values in times.items()}


def measure(threads: list[int], calls: int) -> dict[int, dict[str, float]]:
    return {count: per_step_us(count, calls) for count in dict.fromkeys(threads)}


def run_child(library: str | None, threads: list[int], calls: int) -> dict[int, dict[str, float]]:
    command = [sys.executable, str(Path(__file__).resolve()), "--json", "--calls", str(calls), "--threads"]
    command += [str(count) for count in threads]
    if library is not None:
        command += ["--library", library]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return {int(count): figures for count, figures in json.loads(out).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--library", help="an extension .so to load instead of gdla's own")
    parser.add_argument("--before", help="an older extension .so: print it and gdla's own side by side")
    parser.add_argument("--rounds", type=int, default=2, help="processes for each side with --before")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.before is None:
        if args.library is not None:
            torch.ops.load_library(args.library)
        else:
            import gdla.ops  # noqa: F401  (registers the op)
        figures = measure(args.threads, args.calls)
        if args.json:
            print(json.dumps(figures))
            return
        runs = {"this build": [figures]}
    else:
        runs = {"before": [], "after": []}
        for _ in range(args.rounds):
            runs["before"].append(run_child(str(Path(args.before).resolve()), args.threads, args.calls))
            runs["after"].append(run_child(None, args.threads, args.calls))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.calls} interleaved calls, "
          f"{len(next(iter(runs.values())))} process(es) each")
    print()
    names = list(runs)
    print("| threads | variant | " + " | ".join(f"{name}: µs a step (eager ÷ kernel)" for name in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for count in dict.fromkeys(args.threads):
        for variant in ("kernel, float32", "kernel, float64", "eager bmm + SGD, float32"):
            cells = []
            for name in names:
                parts = []
                for figures in runs[name]:
                    us, base = figures[count][variant], figures[count]["eager bmm + SGD, float32"]
                    parts.append(f"{us:.1f}" if variant.startswith("eager") else f"{us:.1f} ({base / us:.1f}×)")
                cells.append(" / ".join(parts))
            print(f"| {count} | {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
