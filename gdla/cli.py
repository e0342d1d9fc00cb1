"""The ``gdla`` command: ``plugins``, ``info``, ``solve`` and ``demo``.

Exit codes: 0 success; 1 bad data or a failed run (unreadable matrix file, NaN entries, a
singular matrix, a problem too large for the memory, a diverged run); 2 bad usage (unknown
option, invalid option value, unknown problem or optimizer name); 130 interrupted (Ctrl-C,
anywhere). Errors are one ``gdla: error: ...`` paragraph on stderr, never a traceback: only
:class:`gdla.GdlaError` is caught, so anything else is a bug and surfaces as one. gdla's own
warnings (a skipped plugin, a backend fallback) are one ``gdla: warning: ...`` line.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from gdla.errors import GdlaError, GdlaWarning, InputError, MatrixFileError, UnknownNameError

__all__ = ["main"]

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
    "progress": "--json (which turns the progress bar off)",
    "callback": "the Python API",
}
OPTION_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class OptionValueError(InputError):
    """A ``-p``/``-o`` option (or a flag) whose value the problem or optimizer refused: bad usage, exit 2."""


class UsageError(Exception):
    """A command line that does not parse; exits with code 2."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    # argparse prints and exits on its own; raising instead keeps main() returning an int and
    # lets every error share one format.
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage().strip())


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
    plugins.set_defaults(run=_cmd_plugins)

    info = commands.add_parser("info", help="versions, the compiled extension and plugin load failures")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(run=_cmd_info)

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
    solve.add_argument("--seed", type=_int_at_least(0), default=0, metavar="N", help="seed of the starting point")
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
    solve.set_defaults(run=_cmd_solve)

    demo = commands.add_parser("demo", help="run every built-in problem and draw one figure")
    demo.add_argument("--out", default="gdla-demo.png", metavar="FILE", help="figure file (default: gdla-demo.png)")
    demo.add_argument("--quick", action="store_true", help="fewer steps, for a smoke test")
    demo.set_defaults(run=_cmd_demo)
    return parser


# -- commands -----------------------------------------------------------------------------------
def _cmd_plugins(args: argparse.Namespace, out: TextIO) -> int:
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
    return 0


def _cmd_info(args: argparse.Namespace, out: TextIO) -> int:
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
    print("\n".join(lines), file=out)
    return 0


def _cmd_solve(args: argparse.Namespace, out: TextIO) -> int:
    from gdla.loop import solve
    from gdla.memory import allocation_error, check_fits
    from gdla.registry import get_problem

    problem_cls = get_problem(args.problem)
    _check_option_names(args, problem_cls)
    if args.plot is not None:
        from gdla.plotting import check_figure_path

        check_figure_path(args.plot, "--plot")  # fail before a long run, not after it
    if args.save is not None:
        from gdla.io import check_save_path

        check_save_path(args.save, "--save")
    import torch

    dtype = None if args.dtype is None else (torch.float32 if args.dtype == "float32" else torch.float64)
    if args.distributed:
        from gdla.distributed import init_from_environment, is_reporting_rank

        init_from_environment(args.device)
    try:
        if args.matrix is not None:
            from gdla.io import load_matrix

            # a problem that declares it takes a sparse matrix gets a coordinate file as one: never n² numbers
            matrix = load_matrix(args.matrix, keep_sparse=bool(getattr(problem_cls, "accepts_sparse_matrix", False)))
            positions_only = matrix.layout != torch.strided and matrix.dtype == torch.bool
            if not (matrix.is_floating_point() or matrix.is_complex() or positions_only):
                matrix = matrix.to(dtype or torch.float64)  # integer and dense pattern files hold exact values
            try:
                problem = _build(args, problem_cls.from_matrix, matrix)
            except InputError as exc:
                if isinstance(exc, OptionValueError):
                    raise
                # the problem names its argument ("A: ..."); say which file that argument came from
                raise type(exc)(f"matrix file {args.matrix!r} for problem {args.problem!r}: {exc}") from None
        else:
            if args.size is not None:
                needed = _estimate(problem_cls, args, dtype or torch.float64)
                check_fits(needed, f"problem {args.problem!r} of size {args.size}")
            problem = _build(args, problem_cls.example, size=args.size, dtype=dtype or torch.float64)
        if args.save is not None and problem.sparse_storage() is not None and args.save.lower().endswith(".npy"):
            raise MatrixFileError(
                f"--save: problem {args.problem!r} stores its operator sparse, so its answer is a sparse tensor; "
                f".npy stores dense arrays only, received {args.save!r}: use .mtx (coordinate) or .pt"
            )
        result = _usage_checked(
            args,
            lambda: solve(
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
                progress=not args.json and sys.stderr.isatty(),
                distributed=args.distributed,
                **dict(args.option),
            ),
            dict(args.option),
        )
    except (MemoryError, RuntimeError) as exc:
        error = allocation_error(exc, f"gdla solve {args.problem}")
        if error is None:
            raise
        raise error from None
    if args.distributed and not is_reporting_rank():  # every rank holds the whole result: rank 0 reports it
        return 0 if result.stop_reason != "diverged" else 1
    if args.plot is not None:
        from gdla.plotting import plot_losses

        plot_losses(result, args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), allow_nan=False), file=out)
    else:
        print(result.summary(), file=out)
        if args.plot is not None:
            print(f"  loss plot saved to {args.plot}", file=out)
    if args.save is not None:  # after the report: a file that cannot be written does not lose the result
        from gdla.io import save_matrix

        save_matrix(result.solution, args.save)
        if not args.json:
            print(f"  solution saved to {args.save}", file=out)
    return 0 if result.stop_reason != "diverged" else 1


def _check_option_names(args: argparse.Namespace, problem_cls: Any) -> None:
    """``-p``/``-o`` names against the problem's and the optimizer's declared options (bad usage if unknown)."""
    from gdla.options import check_names
    from gdla.registry import get_optimizer

    try:
        check_names("problem", args.problem, problem_cls.options, dict(args.problem_option))
        optimizer_cls = get_optimizer(args.optimizer)
        # auto hands its options to the method it picks, which checks them itself
        check_names("optimizer", args.optimizer, optimizer_cls.options, dict(args.option))
    except InputError as exc:
        raise OptionValueError(str(exc)) from None


def _estimate(problem_cls: Any, args: argparse.Namespace, dtype: Any) -> int | None:
    try:
        return problem_cls.estimated_bytes(args.size, dtype, **dict(args.problem_option))
    except (TypeError, ValueError):  # options the estimate cannot read: the build will say what is wrong
        return None


def _usage_checked(args: argparse.Namespace, call: Callable[[], Any], options: dict[str, Any]) -> Any:
    """``call()``, with an error about one of the given options (its message starts ``NAME:``) as bad usage."""
    try:
        return call()
    except InputError as exc:
        if isinstance(exc, OptionValueError) or type(exc) is not InputError:
            raise
        named = str(exc).split(":", 1)[0].strip()
        if named in options or named in ("options", "lr", "max_steps", "tol", "patience", "seed", "backend"):
            raise OptionValueError(str(exc)) from None
        raise


def _build(args: argparse.Namespace, factory: Callable[..., Any], *positional: Any, **keywords: Any) -> Any:
    """Call a problem factory with the ``--problem-option`` values; an option it lacks or refuses is bad usage."""
    options = dict(args.problem_option)
    try:
        return _usage_checked(args, lambda: factory(*positional, **keywords, **options), options)
    except TypeError as exc:
        if not options or not any(words in str(exc) for words in ("keyword argument", "multiple values")):
            raise
        raise OptionValueError(
            f"--problem-option: problem {args.problem!r} does not accept these options "
            f"({', '.join(sorted(options))}): {exc}"
        ) from None


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from gdla.demo import run_demo

    run_demo(args.out, quick=args.quick, stream=out)
    return 0


# -- entry point --------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gdla`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # anywhere: parsing, importing torch, loading plugins, solving
        _print_error("interrupted")
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        # one paragraph: the error, then where the full usage is (not the usage block itself)
        command = exc.usage.removeprefix("usage: ").split(" [")[0].split(" PROBLEM")[0]
        _print_error(f"{exc} (see `{command} --help`)")
        return 2
    except SystemExit as exc:  # --help and --version exit on their own
        return exc.code if isinstance(exc.code, int) else 0
    with warnings.catch_warnings():
        # Our own warnings are expected events (a skipped plugin, a backend fallback): one line
        # each, not Python's file:line form. Other warnings keep their usual form and filters.
        warnings.simplefilter("always", GdlaWarning)
        warnings.showwarning = _warning_printer(warnings.showwarning)
        try:
            return args.run(args, sys.stdout)
        except (UnknownNameError, OptionValueError) as exc:
            _print_error(str(exc))
            return 2
        except GdlaError as exc:
            _print_error(str(exc))
            return 1
        except BrokenPipeError:  # `gdla plugins --json | head -1`: the reader left, nothing to say
            sys.stderr.close()
            return 0


def _warning_printer(fallback: Callable[..., None]) -> Callable[..., None]:
    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, GdlaWarning):
            print(f"gdla: warning: {message}", file=sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def _print_error(message: str) -> None:
    print(f"gdla: error: {message}", file=sys.stderr)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
