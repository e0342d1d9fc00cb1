"""The ``gdla`` commands: ``plugins``, ``info``, ``solve`` and ``demo``, each ``command(args, out) -> exit code``.

:mod:`gdla.cli_parse` parses the command line, :mod:`gdla.cli` runs the command named in
``args.command`` (:data:`COMMANDS`) and maps its errors to exit codes. A command raises
:class:`~gdla.errors.UsageError` (or :class:`~gdla.errors.UnknownNameError`) for bad usage, exit
2, and any other :class:`~gdla.errors.GdlaError` for bad data or a failed run, exit 1. Imports are
made inside the commands, so the command line starts without torch.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from gdla.errors import InputError, MatrixFileError, UsageError

__all__ = ["COMMANDS", "demo", "info", "plugins", "solve"]


def plugins(args: argparse.Namespace, out: TextIO) -> int:
    """``gdla plugins [--json]``: the registered problems and optimizers (with their options, as JSON)."""
    from gdla.backend import extension_status
    from gdla.registry import registry

    entries = registry.entries()
    if args.json:
        from gdla.options import describe

        listed = [{**entry.to_dict(), "options": describe(entry.obj.options)} for entry in entries]
        print(json.dumps(listed, indent=2), file=out)
        return 0
    rows = [("KIND", "NAME", "PLUGIN", "VERSION", "SUMMARY")]
    rows += [(e.kind, e.name, e.plugin, e.version, getattr(e.obj, "summary", "")) for e in entries]
    print(_table(rows), file=out)
    loaded, detail = extension_status()
    print(f"\ncompiled extension gdla._C: {'loaded' if loaded else 'unavailable'} ({detail})", file=out)
    if registry.failures:
        print(f"{len(registry.failures)} plugin(s) skipped; see `gdla info`", file=out)
    for clash in registry.clashes():  # listed twice above: usable only as DIST:NAME
        print(f"clash: {clash}", file=out)
    return 0


def info(args: argparse.Namespace, out: TextIO) -> int:
    """``gdla info [--json]``: versions, the compiled extension and plugin load failures."""
    import numpy
    import scipy
    import torch

    from gdla import __version__
    from gdla.backend import extension_status
    from gdla.registry import registry

    entries = registry.entries()
    loaded, detail = extension_status()
    facts: dict[str, Any] = {
        "gdla": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "extension": {"loaded": loaded, "detail": detail},
        "problems": sorted(e.name for e in entries if e.kind == "problem"),
        "optimizers": sorted(e.name for e in entries if e.kind == "optimizer"),
        "plugin_failures": list(registry.failures),
        "name_clashes": registry.clashes(),
    }
    if args.json:
        print(json.dumps(facts, indent=2), file=out)
        return 0
    cuda = f"CUDA {facts['cuda']}" if facts["cuda"] else "no CUDA device"
    lines = [
        f"gdla {facts['gdla']} (Python {facts['python']}, torch {facts['torch']}, {cuda}, "
        f"numpy {facts['numpy']}, scipy {facts['scipy']})",
        f"compiled extension gdla._C: {'loaded' if loaded else 'unavailable'} ({detail})",
        f"problems: {', '.join(facts['problems']) or 'none'}",
        f"optimizers: {', '.join(facts['optimizers']) or 'none'}",
        f"plugin load failures: {len(registry.failures)}",
    ]
    lines += [f"  {failure}" for failure in registry.failures]
    lines += [f"clash: {clash}" for clash in facts["name_clashes"]]
    print("\n".join(lines), file=out)
    return 0


def solve(args: argparse.Namespace, out: TextIO) -> int:
    """``gdla solve PROBLEM ...``: build the problem, solve it, report; exit 1 if the run diverged.

    ``--save`` writes only the answer of a successful run (:func:`_unsaved_reason`), and atomically:
    a failed run, or a write cut short, leaves an existing file as it was (exit 1).
    """
    from gdla.building import build_problem
    from gdla.memory import allocation_error
    from gdla.registry import get_problem

    problem_cls = get_problem(args.problem)
    _checked_optimizer(args)  # unknown -o names fail before the problem is built
    if args.plot is not None:
        from gdla.plotting import check_figure_path

        check_figure_path(args.plot, "--plot")  # fail before a long run, not after it
    if args.save is not None:
        from gdla.io import check_save_path

        check_save_path(args.save, "--save")
    if args.distributed:
        from gdla.distributed import init_from_environment, is_reporting_rank

        init_from_environment(args.device)
    try:
        problem = build_problem(
            problem_cls,
            size=args.size,
            matrix=args.matrix,
            options=dict(args.problem_option),
            dtype=args.dtype,
            options_name="--problem-option",
        )
        init = None
        if args.init is not None:  # read before the run: a bad file fails before any work
            from gdla.io import load_params

            init = load_params(args.init)
        if args.save is not None and problem.sparse_storage() is not None and args.save.lower().endswith(".npy"):
            raise MatrixFileError(
                f"--save: problem {args.problem!r} stores its operator sparse, so its answer is a sparse tensor; "
                f".npy stores dense arrays only, received {args.save!r}: use .mtx (coordinate) or .pt"
            )
        if args.save is not None:
            _check_savable(problem, args.save)
        result = _run(args, problem, init)
    except (MemoryError, RuntimeError) as exc:
        error = allocation_error(exc, f"gdla solve {args.problem}")
        if error is None:
            raise
        raise error from None
    if args.distributed and not is_reporting_rank():  # every rank holds the whole result: rank 0 reports it
        return 0 if result.stop_reason != "diverged" else 1
    saved = _report(args, result, out)
    return 0 if result.stop_reason != "diverged" and saved else 1


def _check_savable(problem: Any, path: str) -> None:
    """Refuse, before the run, a ``--save`` format that cannot hold the answer (an SVD's three tensors as
    ``.npy``): the answer at the starting point has the final answer's form, and the writer's own check reads it."""
    from pathlib import Path

    import torch

    from gdla.io import _writer

    try:
        with torch.no_grad():
            sample = problem.solution(problem.init_params(torch.Generator().manual_seed(0)))
    except Exception:  # noqa: BLE001 - a broken plugin method: the run reports it, naming the method
        return
    try:
        _writer(sample, Path(path))
    except MatrixFileError as exc:
        raise MatrixFileError(f"--save: {exc} (refused before the run)") from None


def _checked_optimizer(args: argparse.Namespace) -> Any:
    """The optimizer class named by ``--optimizer``, with the ``-o`` names checked against its declared options."""
    from gdla.options import check_names
    from gdla.registry import get_optimizer

    optimizer_cls = get_optimizer(args.optimizer)
    try:
        # auto hands its options to the method it picks, which checks them itself
        check_names("optimizer", args.optimizer, optimizer_cls.options, dict(args.option))
    except InputError as exc:
        raise UsageError(str(exc)) from None
    return optimizer_cls


def _run(args: argparse.Namespace, problem: Any, init: Any = None) -> Any:
    """``gdla.solve`` with the parsed settings (the run plan calls a method's refusal of ``-o``/``--lr`` usage)."""
    from gdla.loop import solve as solve_problem

    return solve_problem(
        problem,
        optimizer=args.optimizer,
        lr=args.lr,
        max_steps=args.steps,
        tol=args.tol,
        seed=args.seed,
        backend=args.backend,
        dtype=args.dtype,
        device=args.device,
        patience=args.patience,
        progress=not args.json and sys.stderr is not None and not sys.stderr.closed and sys.stderr.isatty(),
        distributed=args.distributed,
        init=_in_dtype(init, problem.dtype),
        **dict(args.option),
    )


def _in_dtype(init: Any, dtype: Any) -> Any:
    """A start read from a file in the problem's dtype (where it is floating: a file's dtype is the writer's)."""
    import torch

    target = dtype
    if isinstance(init, torch.Tensor):
        return init.to(target) if init.is_floating_point() else init
    if isinstance(init, dict):
        return {key: value.to(target) if value.is_floating_point() else value for key, value in init.items()}
    return init


def _report(args: argparse.Namespace, result: Any, out: TextIO) -> bool:
    """The summary (or ``--json``), then the ``--plot`` figure and the ``--save`` file; whether all asked was saved."""
    if args.plot is not None:
        from gdla.plotting import plot_losses

        plot_losses(result, args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), allow_nan=False), file=out)
    else:
        print(result.summary(), file=out)
        if args.plot is not None:
            print(f"  loss plot saved to {args.plot}", file=out)
    if args.save is None:
        return True
    reason = _unsaved_reason(result)
    if reason is not None:  # a failed run's answer never replaces a file
        note = f"solution not saved: {reason}, so {args.save} was not written (an existing file keeps its contents)"
        if args.json:
            import warnings

            from gdla.errors import GdlaWarning

            warnings.warn(f"--save: {note}", GdlaWarning, stacklevel=2)
        else:
            print(f"  {note}", file=out)
        return False
    from gdla.io import save_matrix

    save_matrix(result.solution, args.save)  # after the report: a file that cannot be written does not lose the result
    if not args.json:
        print(f"  solution saved to {args.save}", file=out)
    return True


def _unsaved_reason(result: Any) -> str | None:
    """Why ``--save`` must not write this run's answer, or ``None``.

    Saved: the answer of every run that exits 0 (``converged``, ``max_steps``, ``stalled``,
    ``callback``) when all its entries are finite. Not saved: a ``diverged`` run, or an answer
    with NaN or infinite entries.
    """
    import torch

    if result.stop_reason == "diverged":
        return "the run diverged"
    parts = result.solution if isinstance(result.solution, (tuple, list)) else (result.solution,)
    for part in parts:
        if isinstance(part, torch.Tensor):
            if part.layout == torch.sparse_coo:
                part = part.coalesce()
            stored = part if part.layout == torch.strided else part.values()  # a sparse answer: its stored entries
            if not bool(torch.isfinite(stored).all()):
                return "the answer has NaN or infinite entries"
    return None


def demo(args: argparse.Namespace, out: TextIO) -> int:
    """``gdla demo [--out FILE] [--quick]``: every built-in problem's demo, a table and one figure."""
    from gdla.demo import run_demo

    run_demo(args.out, quick=args.quick, stream=out)
    return 0


#: Each command of :func:`gdla.cli_parse.build_parser` by name.
COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "plugins": plugins,
    "info": info,
    "solve": solve,
    "demo": demo,
}


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)
