"""Scaling of ``gdla.solve(..., distributed=True)``: a batch of 4×4 inverses on 1 rank vs 2 ranks.

Run ``python benchmarks/distributed_scaling.py [--batch N] [--steps S]``: it starts itself under
``torchrun --standalone --nproc-per-node W`` for W = 1 and 2 (1 thread per rank, gloo) and prints
one line per W: the solve loop's seconds (rank 0's ``Result.seconds``), the whole ``gdla.solve``
call's wall time, and the parallel efficiency ``t₁ / (W · t_W)``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _worker(batch: int, steps: int, optimizer: str) -> None:
    import torch
    import torch.distributed as dist

    import gdla
    from gdla_plugins.problems.inverse import InverseProblem

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    g = torch.Generator().manual_seed(0)
    A = torch.eye(4, dtype=torch.float64) + 0.3 * torch.randn(batch, 4, 4, generator=g, dtype=torch.float64)
    problem = InverseProblem(A)
    dist.barrier()
    began = time.perf_counter()
    result = gdla.solve(problem, optimizer=optimizer, max_steps=steps, tol=0.0, distributed=True)
    wall = time.perf_counter() - began
    if dist.get_rank() == 0:
        print(
            json.dumps(
                {"seconds": result.seconds, "wall": wall, "steps": result.steps, "residual": result.metrics["residual"]}
            )
        )
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--optimizer", default="newton-schulz")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.batch, args.steps, args.optimizer)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    timings = {}
    for world in (1, 2):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(world),
            __file__,
            "--worker",
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--optimizer",
            args.optimizer,
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        timings[world] = json.loads(done.stdout.strip().splitlines()[-1])
    for world, t in timings.items():
        eff_loop = timings[1]["seconds"] / (world * t["seconds"])
        eff_wall = timings[1]["wall"] / (world * t["wall"])
        print(
            f"{args.batch} {args.optimizer} 4x4, {args.steps} steps, {world} rank(s) x 1 thread: loop "
            f"{t['seconds']:.3f} s (efficiency {eff_loop:.2f}), whole solve {t['wall']:.3f} s "
            f"(efficiency {eff_wall:.2f}), residual {t['residual']:.2e}"
        )


if __name__ == "__main__":
    main()
