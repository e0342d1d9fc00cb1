"""The seed notebooks' own eager loops against ``gdla.solve``, side by side in one process.

Prints the ratio table of the performance issue and writes it to
``benchmarks/results/notebooks.md``::

    .venv/bin/python benchmarks/notebooks.py [--repeats 5] [--threads N] [--out FILE]

The cold-start table (:func:`cold_start_rows`) times fresh processes instead: ``import torch``,
``import gdla``, each built-in method's first solve, and the ``gdla solve`` command against
``python -c "import torch"``, at the default thread count and at ``OMP_NUM_THREADS=1`` side by side (``--cold-only``:
just that table, into ``benchmarks/results/cold-start.md``). ``--setup-only``: the set-up rows (:func:`setup_rows`)
and that table, into ``benchmarks/results/setup-and-cold-start.md``.

Every row of the main table times the eager loop, then gdla, each as the median of back-to-back calls after a
warm-up (:func:`timing.median_seconds`: at least ``--repeats`` calls, more where they fill half a
second), float32 unless said, ``backend="auto"``, through the public :func:`gdla.solve` (set-up
included, and the final residual read from ``Result.metrics``; the reference-based ``error`` is
computed only when read, and no row reads it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from eager_loops import batch_momentum_eager
from timing import MEASURE, WARM_UP, median_seconds, shown_seconds

import gdla

HERE = Path(__file__).resolve().parent
#: Lines printed under the table (accuracy checks that go with the timings).
NOTES: list[str] = []


# -- seed 000: momentum on M @ A ≈ I, the notebook's hand-rolled gradient buffer -------------------
def seed000_eager(A: torch.Tensor, start: torch.Tensor, steps: int) -> torch.Tensor:
    guess = start.clone().requires_grad_(True)
    eye = torch.eye(len(A))
    for _ in range(steps):
        loss = ((guess @ A - eye) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            guess -= 0.9 * guess.grad
            guess.grad *= 0.9
    return guess.detach()


# -- seed 001: SVD penalty form with torch.optim.SGD(momentum) -------------------------------------
def seed001_eager(M: torch.Tensor, steps: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(314)
    m, n = M.shape
    k = min(m, n)
    U = torch.rand(m, k, generator=g).requires_grad_(True)
    d = torch.rand(k, generator=g).requires_grad_(True)
    V = torch.rand(n, k, generator=g).requires_grad_(True)
    optimizer = torch.optim.SGD([U, d, V], lr=0.9, momentum=0.9)
    eye_u, eye_v = torch.eye(k), torch.eye(k)
    for _ in range(steps):
        optimizer.zero_grad()
        fit = ((U @ torch.diag(d * d) @ V.T - M) ** 2).mean()
        loss = fit + ((U.T @ U - eye_u) ** 2).mean() / 100 + ((V.T @ V - eye_v) ** 2).mean() / 100
        loss.backward()
        optimizer.step()
    return d.detach()


# -- seed 002: S = Init + Ω ⊙ U, two hops, SGD lr 0.01 ---------------------------------------------
def seed002_eager(init: torch.Tensor, omega: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, steps: int) -> None:
    U = torch.zeros(3, 3, requires_grad=True)
    optimizer = torch.optim.SGD([U], lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        S = init + omega * U
        loss = torch.linalg.matrix_norm(Y - S @ (S @ X), ord="fro")
        loss.backward()
        optimizer.step()


# -- seed 003: one linear layer W, Adam with 0.05 → 0.025 → 0.01 ---------------------------------------
def seed003_eager(A: torch.Tensor, steps: int) -> torch.Tensor:
    layer = torch.nn.Linear(A.shape[0], A.shape[0], bias=False)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[10_000, 100_000], gamma=0.5)
    eye = torch.eye(A.shape[0])
    for _ in range(steps):
        optimizer.zero_grad()
        loss = ((layer(A.T).T - eye) ** 2).mean()  # W A ≈ I
        loss.backward()
        optimizer.step()
        schedule.step()
    return layer.weight.detach()


def solved(problem: object, **settings: object) -> float:
    """``gdla.solve`` as a user calls it, reading the final residual (the figure a run is judged by)."""
    return gdla.solve(problem, **settings).metrics["residual"]


def defaults_note(A16: object, seed: object) -> str:
    """Solves with the default tolerance: in bulk (the kernel tests the residual) against one step a call."""
    parts = []
    for name, problem, options in (
        ("seed 003's 16×16 problem, gdla.solve defaults (adam)", A16, {"optimizer": "adam"}),
        ("seed 000's problem, momentum lr .9 μ .9, default tol", seed, {"optimizer": "momentum", "lr": 0.9,
                                                                          "momentum": 0.9, "max_steps": 10_000}),
    ):
        result = gdla.solve(problem, **options)
        bulk = median_seconds(lambda problem=problem, options=options: solved(problem, **options), 5)
        watched = median_seconds(
            lambda problem=problem, options=options: solved(problem, callback=lambda *_: None, **options), 5
        )
        parts.append(
            f"{name}: {result.steps} steps to {result.stop_reason} (tol {result.settings['tol']:g}), "
            f"{shown_seconds(bulk)} in bulk vs {shown_seconds(watched)} one step a call (a callback watching)"
        )
    return "Runs with a tolerance: " + "; ".join(parts)


def rows(repeats: int) -> list[tuple[str, float, float, str]]:
    """``(scenario, eager seconds, gdla seconds, unit)`` per row."""
    out = []
    inverse = gdla.get_problem("inverse")
    seed = inverse.example(side="left", dtype=torch.float32)
    torch.manual_seed(314)
    start = torch.rand(4, 4)
    steps = 10_000
    eager = median_seconds(lambda: seed000_eager(seed.A, start, steps), repeats)
    mine = median_seconds(
        lambda: solved(seed, optimizer="momentum", lr=0.9, momentum=0.9, max_steps=steps, tol=0), repeats
    )
    out.append(("seed 000: 4×4 inverse, momentum lr .9 μ .9, 10,000 steps, tol=0 (whole run)", eager, mine, "run"))

    svd = gdla.get_problem("svd").example(dtype=torch.float32)
    M = svd.M if hasattr(svd, "M") else svd.reference()[0]
    steps = 2_000
    eager = median_seconds(lambda: seed001_eager(M, steps), repeats)
    mine = median_seconds(
        lambda: solved(svd, optimizer="sgd", lr=0.9, momentum=0.9, max_steps=steps, tol=0), repeats
    )
    out.append((f"seed 001: SVD {tuple(M.shape)}, SGD momentum, {steps:,} steps (per step)", eager / steps,
                mine / steps, "step"))

    sparse = gdla.get_problem("sparse").example(hops=2, dtype=torch.float32)
    steps = 500
    eager = median_seconds(lambda: seed002_eager(sparse.init, sparse.omega, sparse.X, sparse.Y, steps), repeats)
    mine = median_seconds(lambda: solved(sparse, optimizer="sgd", lr=0.01, max_steps=steps, tol=0), repeats)
    out.append((f"seed 002: masked operator 3×3, two hops, SGD lr .01, {steps} steps (per step)", eager / steps,
                mine / steps, "step"))

    A16 = inverse.well_conditioned(16, dtype=torch.float32)
    steps = 2_000
    eager = median_seconds(lambda: seed003_eager(A16.A, steps), repeats)
    mine = median_seconds(
        lambda: solved(A16, optimizer="adam", lr=0.05, schedule="multistep", max_steps=steps, tol=0), repeats
    )
    truth, full = torch.linalg.inv(A16.A.double()), 20_000  # the notebook's own run length
    notebook_error = float(torch.linalg.norm(seed003_eager(A16.A, full).double() - truth) / torch.linalg.norm(truth))
    answer = gdla.solve(A16, optimizer="adam", lr=0.05, schedule="multistep", max_steps=full, tol=0)
    default = gdla.solve(A16, optimizer="adam")
    NOTES.append(
        f"seed 003 accuracy after the notebook's {full:,} steps (relative error of the inverse): notebook "
        f"{notebook_error:.2e}, gdla with the notebook's settings {answer.metrics['error']:.2e} ({answer.backend}); "
        f"gdla's default adam (exponential decay): {default.metrics['error']:.2e} after {default.steps} steps "
        f"({default.stop_reason})"
    )
    out.append((f"seed 003: 16×16 inverse, Adam + stepped schedule, {steps:,} steps (per step)", eager / steps,
                mine / steps, "step"))
    NOTES.append(defaults_note(A16, seed))

    batch = inverse.well_conditioned(4, batch=(10_000,), dtype=torch.float32)
    X0 = batch.matrix_inverse().safe_start()
    steps = 200  # issue 21's target 3: >= 40x per step
    eager = median_seconds(lambda: batch_momentum_eager(batch.A, X0, steps), repeats)
    mine = median_seconds(
        lambda: solved(batch, optimizer="momentum", lr=0.5, momentum=0.9, max_steps=steps, tol=0), repeats
    )
    out.append((f"10,000 × 4×4 momentum, {steps} steps, vs bmm autograd (per step)", eager / steps, mine / steps,
                "step"))

    steps = 1_000  # the same, where the solve's set-up and summary weigh a tenth as much per step
    eager = median_seconds(lambda: batch_momentum_eager(batch.A, X0, steps), 3)
    mine = median_seconds(
        lambda: solved(batch, optimizer="momentum", lr=0.5, momentum=0.9, max_steps=steps, tol=0), repeats
    )
    out.append((f"10,000 × 4×4 momentum, {steps:,} steps, vs bmm autograd (per step)", eager / steps, mine / steps,
                "step"))

    eager = median_seconds(lambda: torch.linalg.inv(batch.A), repeats)
    mine = median_seconds(lambda: solved(batch), repeats)
    out.append(("10,000 × 4×4, optimizer='auto', whole solve, vs torch.linalg.inv", eager, mine, "run"))

    big = inverse.well_conditioned(1024, dtype=torch.float32)
    M0 = torch.rand(1024, 1024)
    eager = median_seconds(lambda: [big.A.mT @ (big.A @ M0) for _ in range(5)], repeats)
    mine = median_seconds(lambda: solved(big, optimizer="sgd", max_steps=5, tol=0), repeats)
    out.append(("n = 1024, SGD, 5 steps, whole solve vs 5 × the two-GEMM floor", eager, mine, "run"))
    return out


# -- cold start: each figure from fresh interpreters ---------------------------------------------------
#: The method families, each with the problem its first solve runs on (a small example, 50 steps at most).
COLD_METHODS = [
    ("newton-schulz", "inverse"), ("cg", "inverse"), ("line-search", "inverse"), ("heavy-ball", "inverse"),
    ("momentum", "inverse"), ("sgd", "inverse"), ("adam", "inverse"), ("adagrad", "inverse"),
    ("rmsprop", "inverse"), ("lbfgs", "inverse"), ("levenberg-marquardt", "inverse"), ("riemannian-svd", "svd"),
    ("auto", "inverse"),
]
COLD_SOLVE = """
import json, sys, time, warnings
began = time.perf_counter()
import torch
imported = time.perf_counter()
import gdla
ready = time.perf_counter()
warnings.simplefilter("ignore")
times = []
for _ in range(2):
    start = time.perf_counter()
    gdla.solve({problem!r}, optimizer={method!r}, max_steps=50, seed=0)
    times.append(time.perf_counter() - start)
print(json.dumps({{"torch": imported - began, "gdla": ready - imported, "first": times[0], "again": times[1],
                  "dynamo": "torch._dynamo" in sys.modules}}))
"""
#: The command of the cold-start target, and what it is measured against.
COLD_COMMAND = ["-m", "gdla", "solve", "inverse", "--size", "8", "--optimizer", "adam"]
TORCH_ONLY = ["-c", "import torch"]


def _fresh(args: list[str], threads: int | None = None) -> tuple[float, str]:
    """Wall seconds of ``python ARGS`` in a fresh interpreter (``OMP_NUM_THREADS=threads`` where given: torch's
    intra-op threads), and what it printed last; compiled bytecode cached (as an installed package has it), in a
    folder of the temporary directory rather than beside the sources."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "gdla-bench-pycache")
    env |= {"OMP_NUM_THREADS": str(threads)} if threads else {}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, check=True)
    lines = out.stdout.strip().splitlines()
    return time.perf_counter() - start, lines[-1] if lines else ""


def cold_start_rows(repeats: int, threads: int | None = None) -> list[tuple[str, str, str]]:
    """``(measure, seconds, target)`` rows, each the median of ``repeats`` fresh interpreters (after one unmeasured
    run of each script, which caches its bytecode), at ``threads`` intra-op threads (default: torch's own).

    A method's first solve is timed in-process after ``import torch; import gdla``, and "beyond the
    imports" is that first solve less the same solve again in the same process: what only the first
    call pays (lazy imports, the extension's loading, first-call set-up), not the method's arithmetic.
    """
    rows = []
    _fresh(TORCH_ONLY, threads)
    _fresh(COLD_COMMAND, threads)
    command, alone = [], []
    for _ in range(repeats):  # interleaved: the machine's load falls on both alike
        alone.append(_fresh(TORCH_ONLY, threads)[0])
        command.append(_fresh(COLD_COMMAND, threads)[0])
    ratios = [c / a for c, a in zip(command, alone, strict=True)]
    rows.append(("`python -c \"import torch\"` (wall)", f"{statistics.median(alone):.2f} s", ""))
    rows.append((f"`gdla {' '.join(COLD_COMMAND[2:])}` (wall)", f"{statistics.median(command):.2f} s",
                 f"≤ 1.3× the line above: {statistics.median(ratios):.2f}× (median of the runs' ratios)"))
    for method, problem in COLD_METHODS:
        script = COLD_SOLVE.format(problem=problem, method=method)
        _fresh(["-c", script], threads)
        runs = [json.loads(_fresh(["-c", script], threads)[1]) for _ in range(repeats)]
        if method == COLD_METHODS[0][0]:
            rows.append(("`import torch` (in-process)", f"{statistics.median(r['torch'] for r in runs):.2f} s", ""))
            rows.append(("`import gdla` after torch", f"{statistics.median(r['gdla'] for r in runs) * 1e3:.1f} ms", ""))
        beyond = statistics.median(r["first"] - r["again"] for r in runs)
        first = statistics.median(r["first"] for r in runs)
        dynamo = " (imports torch._dynamo)" if any(r["dynamo"] for r in runs) else ""
        rows.append((f"first solve, {method} on {problem}, beyond the imports{dynamo}",
                     f"{beyond * 1e3:.0f} ms (first call {first * 1e3:.0f} ms)",
                     "≤ 250 ms" + ("" if beyond <= 0.25 else ": not met")))
    return rows


def cold_start_table(repeats: int) -> str:
    """The cold-start rows at the default thread count and at one thread, side by side (one run each)."""
    lines = [f"Cold start: fresh interpreters, medians of {repeats}, bytecode cached; default threads "
             f"({torch.get_num_threads()} here) and `OMP_NUM_THREADS=1`.", "",
             "| measure | default threads | 1 thread |", "| --- | --- | --- |"]
    for (measure, *default), (_, *one) in zip(cold_start_rows(repeats), cold_start_rows(repeats, 1), strict=True):
        lines.append(f"| {measure} | {' — '.join(filter(None, default))} | {' — '.join(filter(None, one))} |")
    return "\n".join(lines)


# -- set-up in proportion to the data -----------------------------------------------------------------
class Lyapunov(gdla.Problem):
    """A plugin problem with no Gram factor: ``A X + X Aᵀ = C`` declared quadratic (its Hessian by autograd)."""

    name, summary, quadratic = "bench-lyapunov", "A X + X A^T = C", True

    def __init__(self, A: torch.Tensor, C: torch.Tensor) -> None:
        self.A, self.C = A, C

    @classmethod
    def example(cls, size: int | None = None, **_: object) -> Lyapunov:
        n, g = size or 100, torch.Generator().manual_seed(0)  # A = 2I + a little noise: κ(Hessian) ≈ 3
        A, C = torch.randn(2, n, n, generator=g, dtype=torch.float64)
        return cls(2 * torch.eye(n, dtype=torch.float64) + A * 0.3 / math.sqrt(n), C)

    def init_params(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"X": torch.zeros_like(self.C)}

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.A @ params["X"] + params["X"] @ self.A.mT - self.C).square().sum()

    def residual(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(params).sqrt() / torch.linalg.matrix_norm(self.C)  # ‖A X + X Aᵀ − C‖_F / ‖C‖_F

    def solution(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return params["X"]

    reference = error = staticmethod(lambda *_: torch.tensor(math.nan))  # no reference here; no row reads one


def setup_rows(repeats: int) -> list[tuple[str, str, str]]:
    """``(measure, default threads, 1 thread)``: the set-up targets, at both thread counts in one process."""
    inverse = gdla.get_problem("inverse")
    A, M0 = inverse.well_conditioned(1024, dtype=torch.float64).A, torch.rand(1024, 1024, dtype=torch.float64)
    lyapunov = Lyapunov.example()
    columns, default = [], torch.get_num_threads()
    for threads in (default, 1):
        torch.set_num_threads(threads)
        floor = median_seconds(lambda: [A.mT @ (A @ M0) for _ in range(5)], repeats)
        built = median_seconds(lambda: solved(inverse(A), optimizer="sgd", max_steps=5, tol=0), repeats)
        alone = median_seconds(lambda: inverse(A), repeats)
        runs = [gdla.solve(lyapunov, optimizer="cg") for _ in range(max(repeats, 5))]
        share = statistics.median(r.setup_seconds / (r.setup_seconds + r.seconds + r.summary_seconds) for r in runs)
        columns.append((shown_seconds(floor), f"{shown_seconds(built)} ({built / floor:.2f}× the floor)",
                        f"{shown_seconds(alone)} ({alone / floor * 10:.2f} GEMMs)",
                        f"{share:.0%} (set-up {shown_seconds(statistics.median(r.setup_seconds for r in runs))})"))
    torch.set_num_threads(default)
    measures = ("n = 1024 float64: 5 × the two-GEMM floor",
                "n = 1024 float64: `InverseProblem(A)` + 5 SGD steps by `gdla.solve` (target ≤ 1.1× the floor)",
                "n = 1024 float64: `InverseProblem(A)` alone",
                f"100 × 100 Lyapunov plugin (no Gram factor), `cg`, {runs[0].steps} steps: set-up share (target ≤ 20%)")
    return list(zip(measures, *columns, strict=True))


def table(results: list[tuple[str, float, float, str]]) -> str:
    lines = ["| scenario | eager / floor | gdla.solve | speed-up (eager ÷ gdla) |", "| --- | --- | --- | --- |"]
    for name, eager, mine, unit in results:
        lines.append(f"| {name} | {shown_seconds(eager)}/{unit} | {shown_seconds(mine)}/{unit} | {eager / mine:.3g}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cold-only", action="store_true", help="only the cold-start table (fresh processes)")
    parser.add_argument("--setup-only", action="store_true", help="only the set-up rows and the cold-start table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the fresh interpreters' thread count
    flags = f"--repeats {args.repeats}" + (f" --threads {args.threads}" if args.threads else "")
    machine = f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads by default"
    if args.setup_only:
        setup = [f"| {measure} | {default} | {one} |" for measure, default, one in setup_rows(args.repeats)]
        text = "\n".join(["| measure | default threads | 1 thread |", "| --- | --- | --- |", *setup])
        print(text, flush=True)  # the fresh interpreters take longer
        text += "\n\n" + cold_start_table(args.repeats)
        out = args.out or HERE / "results" / "setup-and-cold-start.md"
        out.write_text(f"# Set-up in proportion to the data, and the cold start\n\nCommand: `.venv/bin/python "
                       f"benchmarks/notebooks.py --setup-only {flags}`  \n{machine}; in-process rows: medians of at "
                       f"least {args.repeats} calls after {WARM_UP} s of warm-up, both thread counts in one process."
                       f"\n\n{text}\n")
        print(f"written to {out}")
        return
    cold = cold_start_table(args.repeats)
    if args.cold_only:
        out = args.out or HERE / "results" / "cold-start.md"
        out.write_text(f"# Cold start\n\nCommand: `.venv/bin/python benchmarks/notebooks.py --cold-only {flags}`  \n"
                       f"{machine}.\n\n{cold}\n")
        print(cold, f"written to {out}", sep="\n")
        return
    args.out = args.out or HERE / "results" / "notebooks.md"
    results = rows(args.repeats)
    text = table(results) + "".join(f"\n\n{note}" for note in NOTES) + "\n\n" + cold
    header = (
        "# The notebooks' eager loops against gdla.solve\n\n"
        f"Command: `.venv/bin/python benchmarks/notebooks.py --repeats {args.repeats}"
        f"{f' --threads {args.threads}' if args.threads else ''}`  \n"
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"gdla {gdla.__version__}, extension: {gdla.extension_status()[1]}; float32; each side the median of at "
        f"least {args.repeats} back-to-back calls after {WARM_UP} s of warm-up (more calls where they fill "
        f"{MEASURE} s), eager then gdla, one row at a time, in one process.\n\n"
    )
    args.out.write_text(header + text + "\n")
    print(text)
    print(f"written to {args.out}")
    assert all(math.isfinite(e) and math.isfinite(m) for _, e, m, _ in results)


if __name__ == "__main__":
    main()
