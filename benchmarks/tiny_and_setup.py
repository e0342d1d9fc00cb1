"""Issue 21's targets 3 and 2 side by side, at the default thread count and at 1, in one process.

Writes ``benchmarks/results/tiny-and-setup.md``::

    .venv/bin/python benchmarks/tiny_and_setup.py [--repeats 5] [--out FILE]

Rows (each side the median of back-to-back calls after a warm-up, :func:`timing.median_seconds`; the two sides
of the 10,000-matrix ratios called in turn, :func:`timing.interleaved_medians`, so both see the same moments;
every gdla side through the public :func:`gdla.solve`, the final residual read from ``Result.metrics``, as
:func:`notebooks.solved` does):

- 10,000 float32 4×4 matrices, ``optimizer="auto"`` (Newton-Schulz) with the default ``tol``, the whole solve,
  against ``torch.linalg.inv`` on the same batch (target 3: faster);
- the same batch, momentum (lr 0.5, μ 0.9), 200 steps, ``tol=0``, per step against ``torch.bmm`` autograd with
  ``torch.optim.SGD`` (target 3: ≥ 40×);
- one float32 4×4 matrix, ``optimizer="auto"``: the fixed cost of a solve;
- ``n = 1024``: ``InverseProblem(A)`` + 5 SGD steps (``tol=0``) against five times the two-GEMM floor
  ``A.mT @ (A @ M)``, float32 and float64 (target 2: ≤ 1.1×);
- the 100 × 100 Lyapunov plugin (no Gram factor) by ``cg``: the set-up's share of the solve (target 2: ≤ 20%).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import torch
from eager_loops import batch_momentum_eager
from notebooks import HERE, Lyapunov, solved
from timing import interleaved_medians, median_seconds, shown_seconds

import gdla

STEPS = 200


def columns(repeats: int) -> list[tuple[str, str]]:
    """``(measure, figure)`` at the current thread count."""
    inverse = gdla.get_problem("inverse")
    batch = inverse.well_conditioned(4, batch=(10_000,), dtype=torch.float32)
    out = []
    mine, eager = interleaved_medians(lambda: solved(batch), lambda: torch.linalg.inv(batch.A), repeats)
    out.append(("10,000 × 4×4 float32, `auto` whole solve vs `torch.linalg.inv` (target: ratio > 1)",
                f"{shown_seconds(mine)} vs {shown_seconds(eager)}: {eager / mine:.2f}×"))
    X0 = batch.matrix_inverse().safe_start()
    mine, eager = interleaved_medians(
        lambda: solved(batch, optimizer="momentum", lr=0.5, momentum=0.9, max_steps=STEPS, tol=0),
        lambda: batch_momentum_eager(batch.A, X0, STEPS), repeats,
    )
    mine, eager = mine / STEPS, eager / STEPS
    out.append((f"10,000 × 4×4 float32, momentum, {STEPS} steps, per step vs `bmm` autograd (target ≥ 40×)",
                f"{shown_seconds(mine)} vs {shown_seconds(eager)}: {eager / mine:.3g}×"))
    one = inverse.well_conditioned(4, dtype=torch.float32)
    fixed = median_seconds(lambda: solved(one), repeats)
    out.append(("one 4×4 float32, `auto` whole solve (the fixed cost)", shown_seconds(fixed)))
    for dtype in (torch.float32, torch.float64):
        A, M0 = inverse.well_conditioned(1024, dtype=dtype).A, torch.rand(1024, 1024, dtype=dtype)
        floor = median_seconds(lambda A=A, M0=M0: [A.mT @ (A @ M0) for _ in range(5)], repeats)
        built = median_seconds(lambda A=A: solved(inverse(A), optimizer="sgd", max_steps=5, tol=0), repeats)
        name = str(dtype).removeprefix("torch.")
        out.append((f"n = 1024 {name}: `InverseProblem(A)` + 5 SGD steps vs 5 × the two-GEMM floor (target ≤ 1.1×)",
                    f"{shown_seconds(built)} vs {shown_seconds(floor)}: {built / floor:.2f}×"))
    lyapunov = Lyapunov.example()
    runs = [gdla.solve(lyapunov, optimizer="cg") for _ in range(max(repeats, 5))]
    share = statistics.median(r.setup_seconds / (r.setup_seconds + r.seconds + r.summary_seconds) for r in runs)
    out.append((f"100 × 100 Lyapunov plugin (no Gram factor), `cg`, {runs[0].steps} steps: set-up share (target ≤ 20%)",
                f"{share:.0%} (set-up {shown_seconds(statistics.median(r.setup_seconds for r in runs))})"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tiny-and-setup.md")
    args = parser.parse_args()
    default = torch.get_num_threads()
    figures = {}
    for threads in (default, 1):
        torch.set_num_threads(threads)
        figures[threads] = columns(args.repeats)
    torch.set_num_threads(default)
    lines = [f"| measure | {default} threads (default) | 1 thread |", "| --- | --- | --- |"]
    for (measure, many), (_, one) in zip(figures[default], figures[1], strict=True):
        lines.append(f"| {measure} | {many} | {one} |")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    text = "\n".join(lines)
    args.out.write_text(
        "# Tiny batches and set-up in proportion (issue 21, targets 3 and 2)\n\n"
        f"Command: `.venv/bin/python benchmarks/tiny_and_setup.py --repeats {args.repeats}`  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (load average after the run: "
        f"{load}), torch {torch.__version__}, gdla {gdla.__version__}, extension: {gdla.extension_status()[1]}; "
        f"medians of at least {args.repeats} back-to-back calls after a warm-up (the 10,000-matrix rows: the two "
        "sides called in turn), both thread counts in one process; `A × B: r×` reads gdla's time, the other "
        "side's, and their ratio (other ÷ gdla, except the floor rows: gdla ÷ floor).\n\n" + text + "\n"
    )
    print(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
