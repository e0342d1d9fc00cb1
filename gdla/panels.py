"""What a problem shows in ``gdla demo``: panels of runs, declared by :meth:`gdla.Problem.demo`.

Plain data, importing nothing above the problem contract, so a problem can declare its panels
without importing the demo (which imports the solve loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gdla.problem import Problem

__all__ = ["DemoPanel", "DemoRun"]


@dataclass
class DemoRun:
    """One solve in a demo panel.

    Attributes:
        label: the curve's legend and, with the problem's name, the table row.
        problem: the problem to solve.
        options: keyword arguments for :func:`gdla.solve` (``optimizer``, ``lr``, ``max_steps``...).
        quick_steps: ``max_steps`` under ``gdla demo --quick`` (``None``: the demo's quick default).
        row: the table's PROBLEM cell (default: the problem's name).
        halve_lr_on_divergence: retry with half the learning rate (up to 5 times) when the run diverges,
            and say so in the legend (for a notebook's bold learning rate).
        plot_residual: plot the relative residual per step instead of the loss.
    """

    label: str
    problem: Problem
    options: dict[str, Any] = field(default_factory=dict)
    quick_steps: int | None = None
    row: str | None = None
    halve_lr_on_divergence: bool = False
    plot_residual: bool = False


@dataclass
class DemoPanel:
    """A figure panel: its title, its runs, and whether it is a large headline panel."""

    title: str
    runs: list[DemoRun]
    headline: bool = False
    ylabel: str = "loss"
    note: str = ""
