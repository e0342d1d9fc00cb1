"""``gdla demo`` stops its runs by step budgets, never by a clock: the same table on a quiet or a busy machine."""

from __future__ import annotations

import itertools
import time

import pytest

from gdla import demo
from gdla.panels import DemoRun
from gdla_plugins.problems.inverse import InverseProblem

SEED_000 = {"optimizer": "momentum", "lr": 0.9, "momentum": 0.9, "max_steps": 300}


def _runs() -> list[DemoRun]:
    problem = InverseProblem.example(kind="random", side="left")
    return [
        DemoRun("seed 000", problem, SEED_000, quick_steps=40),
        DemoRun("residuals", problem, {"optimizer": "adam", "max_steps": 120}, quick_steps=30, plot_residual=True),
    ]


def _outcome(quick: bool) -> list[tuple[object, ...]]:
    rows = []
    for run in _runs():
        result, residuals, _ = demo._solve_run(run, quick)
        row = demo._row(result)
        rows.append((row.steps, row.stop_reason, row.residual, row.error, list(result.losses), residuals))
    return rows


@pytest.mark.parametrize("quick", [False, True])
def test_a_slow_clock_changes_nothing_but_the_seconds(monkeypatch: pytest.MonkeyPatch, quick: bool) -> None:
    quiet = _outcome(quick)
    assert [row[:2] for row in quiet] == (
        [(40, "max_steps"), (30, "max_steps")] if quick else [(300, "max_steps"), (120, "max_steps")]
    )
    assert quiet[1][5] is not None and len(quiet[1][5]) == quiet[1][0]  # one residual a step, plotted
    ticks = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: 100.0 * next(ticks))  # every reading 100 s later: a busy machine
    assert _outcome(quick) == quiet
