"""Figures: the loss plot of ``gdla solve --plot`` and the panels of ``gdla demo``.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never through
``pyplot``: no global state, no GUI backend, safe on headless machines and inside tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gdla.errors import InputError
from gdla.result import Result

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FIGURE_SUFFIXES", "Curve", "check_figure_path", "demo_figure", "loss_figure", "plot_losses", "save_figure"]

#: File types the Agg canvas writes.
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


@dataclass
class Curve:
    """One line of a convergence panel: ``values[i]`` belongs to step ``i + 1``."""

    label: str
    values: Sequence[float]


def check_figure_path(path: str | os.PathLike[str], name: str = "path") -> Path:
    """Return ``path`` if a figure can be written there: a known suffix and an existing folder."""
    file = Path(path)
    if file.suffix.lower() not in FIGURE_SUFFIXES:
        raise InputError(f"{name}: expected a file ending in {', '.join(FIGURE_SUFFIXES)}, received {str(file)!r}")
    folder = file.parent if str(file.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{name}: the folder {str(folder)!r} of {str(file)!r} does not exist")
    if file.is_dir():
        raise InputError(f"{name}: {str(file)!r} is a folder, expected a file name")
    return file


def save_figure(figure: Figure, path: str | os.PathLike[str], name: str = "path") -> Path:
    """Write ``figure`` to ``path`` (checked by :func:`check_figure_path`)."""
    file = check_figure_path(path, name)
    try:
        figure.savefig(file, dpi=110)
    except OSError as exc:
        raise InputError(f"{name}: cannot write {str(file)!r} ({exc.strerror or exc})") from None
    return file


def _positive(values: Sequence[float]) -> tuple[list[int], list[float]]:
    """Steps and values a log axis can show: finite and > 0 (zero, NaN and Inf are dropped)."""
    steps, kept = [], []
    for step, value in enumerate(values, start=1):
        if value is not None and math.isfinite(value) and value > 0:
            steps.append(step)
            kept.append(float(value))
    return steps, kept


def draw_curves(axes: Axes, curves: Sequence[Curve], *, title: str, ylabel: str) -> None:
    """Log-scale convergence lines on ``axes``; a curve with nothing positive is only listed."""
    drawn = False
    for curve in curves:
        steps, values = _positive(curve.values)
        if values:
            # a run of a few steps is a few points: mark them, or a one-step run is invisible
            marker = "o" if len(values) < 20 else None
            axes.plot(steps, values, label=curve.label, linewidth=1.3, marker=marker, markersize=3)
            drawn = True
        else:
            axes.plot([], [], label=f"{curve.label} (nothing to plot)")
    if drawn:
        axes.set_yscale("log")
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(True, which="major", alpha=0.3)
    if curves:
        axes.legend(fontsize=7, loc="best")


def loss_figure(result: Result, title: str | None = None) -> Figure:
    """The loss of one run against the step, on a log scale."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.add_subplot()
    label = f"{result.optimizer}: {result.stop_reason} after {result.steps} steps"
    heading = title or f"gdla solve {result.problem}"
    draw_curves(axes, [Curve(label, result.losses)], title=heading, ylabel="loss")
    return figure


def plot_losses(result: Result, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Save :func:`loss_figure` of ``result`` to ``path`` (``.png``, ``.pdf`` or ``.svg``)."""
    return save_figure(loss_figure(result, title), path, "plot")


@dataclass
class Panel:
    """One panel of the demo figure."""

    title: str
    curves: list[Curve]
    ylabel: str = "loss"
    note: str = ""


def demo_figure(headline: Sequence[Panel], small: Sequence[Panel], title: str = "gdla demo") -> Figure:
    """Two rows: the ``headline`` panels large on top, the ``small`` ones (one per problem) below."""
    from matplotlib.figure import Figure

    top = max(1, len(headline))
    bottom_columns = min(max(1, len(small)), 5)
    bottom_rows = math.ceil(len(small) / bottom_columns) if small else 0
    columns = top * bottom_columns  # a common grid both rows divide evenly
    figure = Figure(figsize=(5.0 * top + 1.0, 4.4 + 2.6 * bottom_rows), layout="constrained")
    grid = figure.add_gridspec(1 + bottom_rows, columns, height_ratios=[1.7] + [1.0] * bottom_rows)
    width = columns // top
    for index, panel in enumerate(headline):
        axes = figure.add_subplot(grid[0, index * width : (index + 1) * width])
        _draw_panel(axes, panel)
    width = columns // bottom_columns
    for index, panel in enumerate(small):
        row, column = divmod(index, bottom_columns)
        axes = figure.add_subplot(grid[1 + row, column * width : (column + 1) * width])
        _draw_panel(axes, panel)
    figure.suptitle(title, fontsize=12)
    return figure


def _draw_panel(axes: Axes, panel: Panel) -> None:
    draw_curves(axes, panel.curves, title=panel.title, ylabel=panel.ylabel)
    if panel.note:
        axes.text(0.02, 0.02, panel.note, transform=axes.transAxes, fontsize=7, va="bottom", alpha=0.8)


def histories_from(results: Mapping[str, Result]) -> list[Curve]:
    """One loss curve per labelled result."""
    return [Curve(label, result.losses) for label, result in results.items()]
