"""``gdla demo``: every built-in problem on its seed scenario, a summary table and one figure.

The figure has two large panels on top and one small panel per built-in problem below:

* seed notebook 000's comparison: the inverse of a random 4×4 matrix against the inverse of
  ``diag(1, 2, 3, 4)``, both by gradient descent with momentum (lr 0.9, momentum 0.9);
* a comparison of methods on the inverse of ``torch.rand(64, 64)``: the relative residual
  ``‖A M − I‖_F / √n`` against the step for each solver that is installed;
* the loss history of each built-in problem solved with the default optimizer.

Every run has a wall-clock budget, so the demo ends in well under a minute on two cores.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from gdla import registry as registry_module
from gdla.errors import ConvergenceWarning, GdlaError
from gdla.loop import solve
from gdla.plotting import Curve, Panel, check_figure_path, demo_figure, save_figure
from gdla.problem import Params, Problem
from gdla.result import Result

__all__ = ["DemoReport", "DemoRow", "run_demo"]

# Looked up at call time (``_registry()``), so a registry swapped in by tests is the one used.


def _registry() -> Any:
    return registry_module.registry


#: Methods compared on ``torch.rand(64, 64)``, with the options each runs with.
COMPARED_METHODS: dict[str, dict[str, Any]] = {
    "newton-schulz": {},
    "cg": {},
    "heavy-ball": {},
    "adam": {},
    "momentum": {},
}
#: Seed notebook 000's settings.
SEED_LR, SEED_MOMENTUM, SEED_STEPS = 0.9, 0.9, 10_000
#: Step budgets for built-in problems whose default would outlast the demo (an amortised fit
#: improves slowly for thousands of steps); a fixed count keeps the table reproducible.
BUILTIN_STEPS = {"toeplitz-net": 500}
#: The distribution whose problems count as built in.
BUILTIN_DIST = "gdla"


@dataclass
class DemoRow:
    """One line of the summary table."""

    problem: str
    optimizer: str
    steps: int
    stop_reason: str
    residual: float
    error: float
    seconds: float

    def cells(self) -> tuple[str, ...]:
        return (
            self.problem,
            self.optimizer,
            str(self.steps),
            self.stop_reason,
            _sci(self.residual),
            _sci(self.error),
            f"{self.seconds:.2f}",
        )


@dataclass
class DemoReport:
    """What the demo ran and where the figure went."""

    rows: list[DemoRow] = field(default_factory=list)
    figure: Path | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        header = ("PROBLEM", "OPTIMIZER", "STEPS", "STOP", "RESIDUAL", "ERROR", "SECONDS")
        rows = [header] + [row.cells() for row in self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _sci(value: float) -> str:
    return f"{value:.2e}" if math.isfinite(value) else "nan"


class _Clock:
    """Shares the demo's total time among its runs: each gets at most ``per_run`` seconds and at
    most its fair share of what is left, so the whole demo ends in about ``total`` seconds."""

    def __init__(self, total: float, per_run: float, runs: int) -> None:
        self.deadline = time.perf_counter() + total
        self.per_run = per_run
        self.runs_left = max(1, runs)

    def budget(self, record: Callable[[Params], float] | None = None) -> _TimeBudget:
        left = max(0.0, self.deadline - time.perf_counter())
        share = min(self.per_run, max(0.2, left / self.runs_left))
        self.runs_left = max(1, self.runs_left - 1)
        return _TimeBudget(share, record)


class _TimeBudget:
    """A ``solve`` callback that stops a run ``seconds`` after its first step (so one-time set-up
    costs, such as torch's first linear-algebra call, do not eat the budget) and, optionally,
    records a history."""

    def __init__(self, seconds: float, record: Callable[[Params], float] | None = None) -> None:
        self.seconds = seconds
        self.deadline = math.inf
        self.record = record
        self.history: list[float] = []
        self.expired = False

    def __call__(self, step: int, loss: float, params: Params) -> bool:
        if step == 1:
            self.deadline = time.perf_counter() + self.seconds
        if self.record is not None:
            self.history.append(self.record(params))
        if time.perf_counter() > self.deadline:
            self.expired = True
        return self.expired


def _row(result: Result, budget: _TimeBudget) -> DemoRow:
    stop = "time limit" if result.stop_reason == "callback" and budget.expired else result.stop_reason
    return DemoRow(
        problem=result.problem,
        optimizer=result.method,
        steps=result.steps,
        stop_reason=stop,
        residual=float(result.metrics.get("residual", math.nan)),
        error=float(result.metrics.get("error", math.nan)),
        seconds=result.seconds,
    )


def builtin_problems() -> list[str]:
    """Names of the problems shipped with gdla itself (not those of third-party plugins)."""
    return [entry.name for entry in _registry().entries("problem") if entry.plugin == BUILTIN_DIST]


def _run_builtins(report: DemoReport, clock: _Clock, max_steps: int | None) -> list[Panel]:
    panels = []
    for name in builtin_problems():
        budget = clock.budget()
        try:
            problem = _registry().entry("problem", name).obj.example()
            steps = max_steps if max_steps is not None else BUILTIN_STEPS.get(name)
            result = solve(problem, max_steps=steps, callback=budget)
        except GdlaError as exc:
            report.notes.append(f"{name}: skipped ({exc})")
            continue
        row = _row(result, budget)
        report.rows.append(row)
        panels.append(Panel(f"{name} ({row.optimizer})", [Curve(row.stop_reason, result.losses)]))
    return panels


def _seed_comparison(report: DemoReport, max_steps: int, clock: _Clock) -> Panel | None:
    """Seed 000: random 4×4 against diag(1..4), gradient descent with momentum 0.9 at lr 0.9."""
    if "momentum" not in _registry().names("optimizer") or "inverse" not in _registry().names("problem"):
        report.notes.append("seed comparison skipped: needs the 'inverse' problem and the 'momentum' optimizer")
        return None
    inverse = _registry().entry("problem", "inverse").obj
    curves = []
    for kind, label in (("random", "random 4×4"), ("diagonal", "diag(1, 2, 3, 4)")):
        lr = SEED_LR
        try:
            problem = inverse.example(kind=kind, side="left")  # the notebook learns M with M @ A ≈ I
            # The notebook's lr may be too bold for some matrices; halve it until the run stays
            # finite and say so in the legend, rather than draw a diverged curve.
            for _attempt in range(6):
                budget = clock.budget()
                result = solve(
                    problem, optimizer="momentum", lr=lr, momentum=SEED_MOMENTUM, max_steps=max_steps, callback=budget
                )
                if result.stop_reason != "diverged":
                    break
                lr /= 2
        except GdlaError as exc:
            report.notes.append(f"seed comparison, {kind} matrix: skipped ({exc})")
            continue
        row = _row(result, budget)
        row.problem = f"inverse ({kind})"
        report.rows.append(row)
        changed = "" if lr == SEED_LR else f"; lr {SEED_LR} diverged, lr {lr:g} shown"
        curves.append(Curve(f"{label}: {row.stop_reason} at step {result.steps}{changed}", result.losses))
    if not curves:
        return None
    return Panel(f"seed 000: momentum {SEED_MOMENTUM}, lr {SEED_LR}: random vs diagonal matrix", curves, ylabel="loss")


def _method_comparison(report: DemoReport, max_steps: int, clock: _Clock) -> Panel | None:
    """Residual against step for several solvers on the inverse of ``torch.rand(64, 64)``."""
    if "inverse" not in _registry().names("problem"):
        return None
    generator = torch.Generator().manual_seed(0)
    A = torch.rand(64, 64, generator=generator, dtype=torch.float64)  # shape: (64, 64)
    problem: Problem = _registry().entry("problem", "inverse").obj(A)
    available = _registry().names("optimizer")
    curves = []
    for method, options in COMPARED_METHODS.items():
        if method not in available:
            report.notes.append(f"method comparison: {method!r} is not installed, left out")
            continue
        budget = clock.budget(record=lambda params: float(problem.residual(params)))
        try:
            with warnings.catch_warnings():
                # slow methods are here on purpose, to be compared: no "will not converge" warning
                warnings.simplefilter("ignore", ConvergenceWarning)
                result = solve(problem, optimizer=method, max_steps=max_steps, callback=budget, **options)
        except GdlaError as exc:
            report.notes.append(f"method comparison: {method} failed ({exc})")
            continue
        row = _row(result, budget)
        row.problem = "inverse (rand 64×64)"
        report.rows.append(row)
        curves.append(Curve(f"{method}: {row.stop_reason}, {result.steps} steps", budget.history))
    if not curves:
        return None
    cond = problem.condition_estimate()
    note = f"cond(A) ≈ {cond:.2e}" if cond is not None else ""
    return Panel("inverse of torch.rand(64, 64): methods compared", curves, ylabel="relative residual", note=note)


def run_demo(
    out: str | os.PathLike[str] | None = "gdla-demo.png", *, quick: bool = False, stream: TextIO | None = None
) -> DemoReport:
    """Run the demo, print its table to ``stream`` and save the figure to ``out`` (``None``: no figure).

    Args:
        out: figure file (``.png``, ``.pdf`` or ``.svg``); checked before anything runs.
        quick: smaller step and time budgets (a smoke test of a few seconds).
        stream: where the table goes (default ``sys.stdout``).
    """
    stream = sys.stdout if stream is None else stream
    if out is not None:
        check_figure_path(out, "out")
    start = time.perf_counter()
    report = DemoReport()
    runs = 2 + len(COMPARED_METHODS) + len(builtin_problems())
    clock = _Clock(total=8.0 if quick else 40.0, per_run=1.0 if quick else 6.0, runs=runs)
    seed_panel = _seed_comparison(report, 1_000 if quick else SEED_STEPS, clock)
    method_panel = _method_comparison(report, 150 if quick else 500, clock)
    small = _run_builtins(report, clock, 300 if quick else None)
    report.seconds = time.perf_counter() - start
    headline = [panel for panel in (seed_panel, method_panel) if panel is not None]
    print(report.table(), file=stream)
    for note in report.notes:
        print(f"note: {note}", file=stream)
    if out is not None:
        figure = demo_figure(headline, small, title=f"gdla demo ({'quick, ' if quick else ''}{report.seconds:.0f} s)")
        report.figure = save_figure(figure, out, "out")
        print(f"figure saved to {report.figure}", file=stream)
    return report
