"""The ``gdla`` command: ``plugins``, ``info``, ``solve`` and ``demo``; :func:`main` maps errors to exit codes.

The parser is :mod:`gdla.cli_parse`'s, the commands are :mod:`gdla.commands`'. Exit codes: 0
success; 1 bad data or a failed run (unreadable matrix file, NaN entries, a singular matrix, a
problem too large for the memory, a diverged run); 2 bad usage (unknown option, invalid option
value, unknown problem or optimizer name); 130 interrupted (Ctrl-C, anywhere). Bad usage is told
by type: a command line that does not parse, :class:`~gdla.errors.UsageError` and
:class:`~gdla.errors.UnknownNameError`. Errors are one ``gdla: error: ...`` paragraph on stderr,
never a traceback: :class:`gdla.GdlaError` is caught, and so is an exception raised inside a
plugin's method (a :class:`~gdla.errors.PluginError` naming it, exit 1:
:func:`gdla.plugin_checks.blame`); anything else is a bug in gdla and surfaces as a traceback.
``--debug`` adds the traceback after the paragraph. gdla's own warnings (a skipped plugin, a
backend fallback) are one ``gdla: warning: ...`` line.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import TextIO

from gdla.cli_parse import CommandLineError, build_parser, parse_option
from gdla.commands import COMMANDS
from gdla.errors import GdlaError, GdlaWarning, PluginError, UnknownNameError, UsageError
from gdla.interrupts import INTERRUPTED_EXIT, prompt_interrupts

__all__ = ["main", "parse_option"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gdla`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    try:
        # inside one long torch call too: the watchdog ends the process if the call holds Ctrl-C off
        with prompt_interrupts(lambda: _print_error("interrupted")):
            return _main(argv)
    except KeyboardInterrupt:  # anywhere: parsing, importing torch, loading plugins, solving
        _print_error("interrupted")
        return INTERRUPTED_EXIT


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CommandLineError as exc:
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
        debug = bool(getattr(args, "debug", False))
        try:
            return COMMANDS[args.command](args, sys.stdout)
        except (UnknownNameError, UsageError) as exc:
            return _failed(exc, 2, debug)
        except GdlaError as exc:
            return _failed(exc, 1, debug)
        except BrokenPipeError:  # `gdla plugins --json | head -1`: the reader left, nothing to say
            sys.stderr.close()
            return 0
        except Exception as exc:  # raised in a plugin's method: a PluginError naming it; anywhere else, a bug
            from gdla.plugin_checks import blame

            blamed = blame(exc)
            if blamed is None:
                raise
            return _failed(blamed, 1, debug)


def _failed(exc: BaseException, code: int, debug: bool) -> int:
    """The error's paragraph (then, with ``--debug``, its traceback and its cause's) and the exit code."""
    raised_inside = isinstance(exc, PluginError) and exc.__cause__ is not None  # a plugin's exception, wrapped
    _print_error(f"{exc} (--debug shows the traceback)" if raised_inside and not debug else str(exc))
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    return code


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
            try:
                print(f"gdla: warning: {message}", file=sys.stderr)
            except (AttributeError, OSError, ValueError):  # no stderr to warn on
                pass
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def _print_error(message: str) -> None:
    """The error paragraph on stderr; where there is none (closed, ``None``), the exit code alone tells."""
    try:
        print(f"gdla: error: {message}", file=sys.stderr)
    except (AttributeError, OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
