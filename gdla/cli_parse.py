"""The ``gdla`` command line as data: the argument parser and the ``KEY=VALUE`` options of ``-o``/``-p``.

Parsing only: :func:`build_parser` returns the parser (the command's name in ``args.command``),
:mod:`gdla.commands` runs what it parsed, and :mod:`gdla.cli` maps errors to exit codes. A command
line that does not parse raises :class:`CommandLineError` (exit 2) instead of exiting.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["CommandLineError", "build_parser", "parse_key_value", "parse_option", "parse_problem_option"]

#: ``solve()`` arguments that have their own flag and so cannot be passed through ``--option``.
RESERVED_OPTIONS = {
    "problem": "PROBLEM",
    "optimizer": "--optimizer",
    "lr": "--lr",
    "max_steps": "--steps",
    "tol": "--tol",
    "seed": "--seed",
    "backend": "--backend",
    "dtype": "--dtype",
    "device": "--device",
    "patience": "--patience",
    "init": "--init",
    "backward": "the Python API (the command line's answers are detached)",
    "progress": "--json (which turns the progress bar off)",
    "callback": "the Python API",
}
OPTION_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CommandLineError(Exception):
    """A command line that does not parse (exit code 2), with the usage line of the command it concerns."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    # argparse prints and exits on its own; raising instead keeps main() returning an int and
    # lets every error share one format.
    def error(self, message: str) -> NoReturn:
        raise CommandLineError(message, self.format_usage().strip())


# -- argument types -----------------------------------------------------------------------------
def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, received {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, received {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, received {text!r}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, received {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, received {text!r}")
        return value

    return parse


def _seed(text: str) -> int:
    value = _int_at_least(0)(text)
    if value >= 2**64:  # what a torch generator takes
        raise argparse.ArgumentTypeError(f"expected an integer that fits in 64 bits, received {text!r}")
    return value


def parse_option(text: str) -> tuple[str, Any]:
    """An optimizer option ``KEY=VALUE`` (see :func:`parse_key_value`); solve()'s own arguments are refused."""
    key, value = parse_key_value(text, example="momentum=0.9")
    if key in RESERVED_OPTIONS:
        raise argparse.ArgumentTypeError(f"{key!r} is not an optimizer option; use {RESERVED_OPTIONS[key]}")
    return key, value


def parse_problem_option(text: str) -> tuple[str, Any]:
    """A problem option ``KEY=VALUE``, passed to the problem's constructor (``pseudo=true``)."""
    return parse_key_value(text, example="pseudo=true")


def parse_key_value(text: str, example: str = "key=1") -> tuple[str, Any]:
    """Split ``KEY=VALUE``; the value is read as JSON (numbers, booleans, lists, dicts) or kept as text."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not OPTION_KEY.match(key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as {example}, received {text!r}")
    raw = raw.strip()
    python_words = {"True": True, "False": False, "None": None}
    if raw in python_words:
        return key, python_words[raw]
    try:
        value = json.loads(raw)
    except ValueError:
        try:  # what JSON does not spell: 1_000, .5, nan, inf
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                return key, raw
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"option {key}: expected a finite value, received {raw!r}")
    return key, value


# -- the parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``gdla`` parser: ``plugins``, ``info``, ``solve`` and ``demo``, the command's name in ``args.command``."""
    from gdla import __version__

    parser = _Parser(
        prog="gdla",
        description="Linear algebra by gradient descent in PyTorch, extended through plugins.",
        epilog="Exit codes: 0 success, 1 bad data or failed run, 2 bad usage.",
    )
    parser.add_argument("--version", action="version", version=f"gdla {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    plugins = commands.add_parser("plugins", help="list registered problems and optimizers")
    plugins.add_argument("--json", action="store_true", help="print a JSON list instead of a table")

    info = commands.add_parser("info", help="versions, the compiled extension and plugin load failures")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")

    solve = commands.add_parser(
        "solve",
        help="solve one problem",
        description="Solve PROBLEM (see `gdla plugins`) on a matrix file or on its built-in example.",
        epilog=(
            "Sparse files: for a problem that takes sparse matrices (sparse) a coordinate .mtx stays sparse "
            "end to end: its stored positions are the mask, its values the operator to learn (a pattern file: "
            "a random operator on the pattern), X has -p columns=K random columns. Example: "
            "gdla solve sparse --matrix A.mtx -p loss=mse --save S.mtx. A method that would form dense "
            "matrices too big for the memory (-o method=dense with levenberg-marquardt) is refused with one "
            "that fits."
        ),
    )
    solve.add_argument("problem", metavar="PROBLEM", help="registered problem name, e.g. inverse")
    source = solve.add_mutually_exclusive_group()
    source.add_argument(
        "--matrix",
        metavar="FILE",
        help="matrix file: .npy, .pt or .mtx (Matrix Market; a coordinate file stays sparse for problems that "
        "take sparse matrices, e.g. sparse: its positions are the mask, its values the operator to learn)",
    )
    source.add_argument("--size", type=_int_at_least(1), metavar="N", help="size of the built-in example")
    solve.add_argument("--optimizer", default="auto", metavar="NAME", help="registered optimizer (default: auto)")
    solve.add_argument("--lr", type=_positive_float, metavar="X", help="learning rate (default: the optimizer's)")
    solve.add_argument("--steps", type=_int_at_least(1), metavar="N", help="maximum number of steps")
    solve.add_argument(
        "--tol", type=_nonnegative_float, metavar="X", help="relative residual to stop at; 0 runs all steps"
    )
    solve.add_argument("--seed", type=_seed, default=0, metavar="N", help="seed of the starting point")
    solve.add_argument("--patience", type=_int_at_least(1), metavar="N", help="steps without progress before 'stalled'")
    solve.add_argument("--backend", choices=("auto", "autograd", "fused"), default="auto")
    solve.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        help="convert the data (default: keep it; integer and pattern files become float64)",
    )
    solve.add_argument("--device", metavar="DEVICE", help="run on this device, e.g. cpu or cuda:0")
    solve.add_argument(
        "--distributed",
        action="store_true",
        help="shard a batched problem over the ranks (start with torchrun --nproc-per-node N -m gdla solve ...)",
    )
    solve.add_argument("--json", action="store_true", help="print the result as JSON (no progress bar)")
    solve.add_argument("--plot", metavar="FILE", help="save a log-scale loss plot (.png, .pdf or .svg)")
    solve.add_argument(
        "--save",
        metavar="FILE",
        help="save the solution: .pt (anything, a sparse answer stays sparse), .npy (dense) or .mtx "
        "(one matrix; a sparse answer as coordinate entries)",
    )
    solve.add_argument(
        "--init",
        metavar="FILE",
        help="start from these parameters: a .pt dict of named tensors (a Result's params), or for a problem with "
        "one parameter a saved answer (.npy, .pt or .mtx, e.g. a previous run's --save)",
    )
    solve.add_argument(
        "--option",
        "-o",
        action="append",
        type=parse_option,
        default=[],
        metavar="KEY=VALUE",
        help="optimizer option, repeatable, e.g. -o momentum=0.9 -o schedule=cosine",
    )
    solve.add_argument(
        "--problem-option",
        "-p",
        action="append",
        type=parse_problem_option,
        default=[],
        metavar="KEY=VALUE",
        help="problem option, repeatable, e.g. -p pseudo=true -p side=left (see the problem's docstring)",
    )

    demo = commands.add_parser("demo", help="run every built-in problem and draw one figure")
    demo.add_argument("--out", default="gdla-demo.png", metavar="FILE", help="figure file (default: gdla-demo.png)")
    demo.add_argument("--quick", action="store_true", help="fewer steps, for a smoke test")
    for command in (plugins, info, solve, demo):
        command.add_argument("--debug", action="store_true", help="after an error's paragraph, show its traceback")
    return parser
