"""``gdla demo``: every built-in problem's own demo scenarios, a summary table and one figure.

Each problem plugin says what to show through :meth:`gdla.Problem.demo`, a list of
:class:`DemoPanel` (each a few :class:`DemoRun`). Headline panels (for example seed notebook
000's momentum comparison and a comparison of methods, both declared by the ``inverse`` problem)
are drawn large on top; every problem's small panel below. The demo itself names no problem or
optimizer.

Every run has a step budget (the ``max_steps`` its problem declares; ``--quick``: its
``quick_steps``, else at most 300), never a clock: the table (steps, stop reason, residual, error)
is the same on any machine, however busy; only the seconds differ.
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


class _Recorder:
    """A ``solve`` callback that records ``record(params)`` after every step and never stops the run."""

    def __init__(self, record: Callable[[Params], float]) -> None:
        self.record = record
        self.history: list[float] = []

    def __call__(self, step: int, loss: float, params: Params) -> bool:
        self.history.append(self.record(params))
        return False


def _row(result: Result) -> DemoRow:
    return DemoRow(
        problem=result.problem,
        optimizer=result.method,
        steps=result.steps,
        stop_reason=result.stop_reason,
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


def _solve_run(run: DemoRun, quick: bool) -> tuple[Result, list[float] | None, str]:
    """Solve one demo run within its step budget; returns the result, the residual history (for a run that
    plots it) and a legend suffix."""
    options = dict(run.options)
    if quick:
        options["max_steps"] = run.quick_steps or min(options.get("max_steps") or 300, 300)
    problem = run.problem
    for _attempt in range(6):
        recorder = _Recorder(lambda params: float(problem.residual(params))) if run.plot_residual else None
        with warnings.catch_warnings():
            # slow methods are shown on purpose, to be compared: no "will not converge" warning
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = solve(problem, callback=recorder, **options)
        if result.stop_reason != "diverged" or not run.halve_lr_on_divergence or options.get("lr") is None:
            break
        options["lr"] = options["lr"] / 2
    changed = ""
    if options.get("lr") != run.options.get("lr"):
        changed = f"; lr {run.options['lr']:g} diverged, lr {options['lr']:g} shown"
    return result, recorder.history if recorder is not None else None, changed


def _draw(report: DemoReport, panel: DemoPanel, quick: bool) -> Panel | None:
    curves = []
    for run in panel.runs:
        try:
            result, residuals, changed = _solve_run(run, quick)
        except GdlaError as exc:
            report.notes.append(f"{panel.title}, {run.label}: skipped ({exc})")
            continue
        row = _row(result)
        row.problem = run.row or row.problem
        report.rows.append(row)
        history = residuals if residuals is not None else result.losses
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
        quick: smaller step budgets (a smoke test).
        stream: where the table goes (default ``sys.stdout``).
    """
    stream = sys.stdout if stream is None else stream
    if out is not None:
        check_figure_path(out, "out")
    start = time.perf_counter()
    report = DemoReport()
    panels = _panels(report, quick)
    drawn = [(panel.headline, _draw(report, panel, quick)) for panel in panels]
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
