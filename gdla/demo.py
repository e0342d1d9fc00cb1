"""``gdla demo``: every built-in problem's own demo scenarios, a summary table and one figure.

Each problem plugin says what to show through :meth:`gdla.Problem.demo`, a list of
:class:`DemoPanel` (each a few :class:`DemoRun`). Headline panels (for example seed notebook
000's momentum comparison and a comparison of methods, both declared by the ``inverse`` problem)
are drawn large on top; every problem's small panel below. The demo itself names no problem or
optimizer.

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

from gdla import registry as registry_module
from gdla.errors import ConvergenceWarning, GdlaError
from gdla.loop import solve
from gdla.panels import DemoPanel, DemoRun
from gdla.plotting import Curve, Panel, check_figure_path, demo_figure, save_figure
from gdla.problem import Params
from gdla.result import Result

__all__ = ["DemoPanel", "DemoReport", "DemoRow", "DemoRun", "run_demo"]

# Looked up at call time (``_registry()``), so a registry swapped in by tests is the one used.


def _registry() -> Any:
    return registry_module.registry


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


def _panels(report: DemoReport, quick: bool) -> list[DemoPanel]:
    panels: list[DemoPanel] = []
    for name in builtin_problems():
        try:
            panels.extend(_registry().entry("problem", name).obj.demo(quick=quick))
        except GdlaError as exc:
            report.notes.append(f"{name}: demo skipped ({exc})")
    return panels


def _solve_run(run: DemoRun, clock: _Clock, quick: bool) -> tuple[Result, _TimeBudget, str]:
    """Solve one demo run within its time share; returns the result, its budget and a legend suffix."""
    options = dict(run.options)
    if quick:
        options["max_steps"] = run.quick_steps or min(options.get("max_steps") or 300, 300)
    problem = run.problem
    for _attempt in range(6):
        budget = clock.budget(record=(lambda params: float(problem.residual(params))) if run.plot_residual else None)
        with warnings.catch_warnings():
            # slow methods are shown on purpose, to be compared: no "will not converge" warning
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = solve(problem, callback=budget, **options)
        if result.stop_reason != "diverged" or not run.halve_lr_on_divergence or options.get("lr") is None:
            break
        options["lr"] = options["lr"] / 2
    changed = ""
    if options.get("lr") != run.options.get("lr"):
        changed = f"; lr {run.options['lr']:g} diverged, lr {options['lr']:g} shown"
    return result, budget, changed


def _draw(report: DemoReport, panel: DemoPanel, clock: _Clock, quick: bool) -> Panel | None:
    curves = []
    for run in panel.runs:
        try:
            result, budget, changed = _solve_run(run, clock, quick)
        except GdlaError as exc:
            report.notes.append(f"{panel.title}, {run.label}: skipped ({exc})")
            continue
        row = _row(result, budget)
        row.problem = run.row or row.problem
        report.rows.append(row)
        history = budget.history if run.plot_residual else result.losses
        label = f"{run.label}: {row.stop_reason}, {result.steps} steps{changed}" if run.label else row.stop_reason
        curves.append(Curve(label, history))
    if not curves:
        return None
    title = panel.title if panel.headline else f"{panel.title} ({report.rows[-1].optimizer})"
    return Panel(title, curves, ylabel=panel.ylabel, note=panel.note)


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
    panels = _panels(report, quick)
    runs = sum(len(panel.runs) for panel in panels)
    clock = _Clock(total=8.0 if quick else 40.0, per_run=1.0 if quick else 6.0, runs=runs)
    drawn = [(panel.headline, _draw(report, panel, clock, quick)) for panel in panels]
    headline = [figure for top, figure in drawn if top and figure is not None]
    small = [figure for top, figure in drawn if not top and figure is not None]
    report.seconds = time.perf_counter() - start
    print(report.table(), file=stream)
    for note in report.notes:
        print(f"note: {note}", file=stream)
    if out is not None:
        figure = demo_figure(headline, small, title=f"gdla demo ({'quick, ' if quick else ''}{report.seconds:.0f} s)")
        report.figure = save_figure(figure, out, "out")
        print(f"figure saved to {report.figure}", file=stream)
    return report
