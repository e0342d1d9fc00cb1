"""Scaling over ranks: a batch of 4×4 inverses (``distributed=True``), or one DTensor matrix.

Run ``python benchmarks/distributed_scaling.py [--batch N] [--steps S]``: it starts itself under
``torchrun --standalone --nproc-per-node W`` for W = 1 and 2 (1 thread per rank, gloo) and prints
one line per W: the solve loop's seconds (rank 0's ``Result.seconds``), the whole ``gdla.solve``
call's wall time, and the parallel efficiency ``t₁ / (W · t_W)``.

``--dtensor N`` instead inverts one ``N×N`` float64 matrix (``InverseProblem.well_conditioned``)
with ``--optimizer`` (default Newton-Schulz) to the default tolerance: on W = 1 a plain tensor in
one process, on W = 2 a DTensor row-sharded (``Shard(0)``) over a 1-D gloo mesh. Besides the
timings it prints the relative difference between the two answers.
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


def _dtensor_worker(size: int, optimizer: str, save: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import gdla
    from gdla_plugins.problems.inverse import InverseProblem

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    A = InverseProblem.well_conditioned(size, seed=0).A
    if world > 1:  # one process: the plain tensor, the baseline
        A = distribute_tensor(A, init_device_mesh("cpu", (world,)), [Shard(0)])
    dist.barrier()
    began = time.perf_counter()
    problem = InverseProblem(A)  # the singular-value analysis runs on the gathered matrix, every rank
    built = time.perf_counter() - began
    result = gdla.solve(problem, optimizer=optimizer)
    metrics = dict(result.metrics.items())  # read inside the timing: figures read lazily cost here
    wall = time.perf_counter() - began
    if dist.get_rank() == 0:
        torch.save(result.solution, save)
        figures = {
            "seconds": result.seconds, "setup": result.setup_seconds, "build": built, "wall": wall,
            "steps": result.steps, "stop": result.stop_reason, "residual": metrics["residual"],
            "error": metrics["error"],
        }
        print(json.dumps(figures))
    dist.barrier()
    dist.destroy_process_group()


def _dtensor_report(size: int, optimizer: str, env: dict[str, str]) -> None:
    import tempfile

    import torch

    timings = {}
    with tempfile.TemporaryDirectory() as folder:
        answers = {}
        for world in (1, 2):
            save = os.path.join(folder, f"solution{world}.pt")
            command = [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
                __file__, "--worker", "--dtensor", str(size), "--optimizer", optimizer, "--save", save,
            ]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            timings[world] = json.loads(done.stdout.strip().splitlines()[-1])
            answers[world] = torch.load(save)
    difference = float(torch.linalg.matrix_norm(answers[2] - answers[1]) / torch.linalg.matrix_norm(answers[1]))
    for world, t in timings.items():
        kind = "plain tensor, 1 process" if world == 1 else f"DTensor Shard(0), {world} ranks"
        print(
            f"{size}x{size} float64 {optimizer}, {kind} x 1 thread: {t['steps']} steps ({t['stop']}), loop "
            f"{t['seconds']:.2f} s (efficiency {timings[1]['seconds'] / (world * t['seconds']):.2f}), set-up "
            f"{t['setup']:.2f} s + problem build {t['build']:.2f} s, whole call with metrics "
            f"{t['wall']:.2f} s (efficiency {timings[1]['wall'] / (world * t['wall']):.2f}), residual "
            f"{t['residual']:.2e}, error {t['error']:.2e}"
        )
    print(f"relative difference of the answers, 2 ranks vs 1 process: {difference:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--optimizer", default="newton-schulz")
    parser.add_argument("--dtensor", type=int, default=None, metavar="N", help="one N×N DTensor matrix instead")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.dtensor is not None:
            _dtensor_worker(args.dtensor, args.optimizer, args.save)
        else:
            _worker(args.batch, args.steps, args.optimizer)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if args.dtensor is not None:
        _dtensor_report(args.dtensor, args.optimizer, env)
        return
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
