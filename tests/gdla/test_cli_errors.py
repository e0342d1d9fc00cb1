"""``gdla solve`` on a plugin's mistake: one paragraph, exit 1 (a usage error: 2); the traceback only with --debug."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gdla.cli import main
from gdla.testing import SmallLeastSquares


class BrokenInit(SmallLeastSquares):
    name = "broken-init"

    def __init__(self, A: torch.Tensor, b: torch.Tensor) -> None:
        raise ValueError("A must be square")


@pytest.fixture
def broken(register_classes: Any) -> None:
    register_classes(BrokenInit, name="broken")


def test_an_exception_in_a_plugin_is_one_paragraph(broken: None, cli: Any, error_of: Any) -> None:
    code, out, err = cli("solve", "broken-init")
    assert (code, out) == (1, "")
    assert error_of(err) == (
        f"gdla: error: problem 'broken-init' ({__name__}.BrokenInit, distribution 'local'): __init__() raised "
        "ValueError: A must be square (--debug shows the traceback)"
    )
    assert err.count("\n") == 1


def test_debug_adds_the_traceback(broken: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["solve", "broken-init", "--debug"]) == 1
    err = capsys.readouterr().err
    first, rest = err.split("\n", 1)
    assert first.startswith("gdla: error: problem 'broken-init'") and first.endswith("A must be square")
    assert "Traceback (most recent call last)" in rest and 'raise ValueError("A must be square")' in rest
    assert "PluginError" in rest  # the cause, then the error raised from it


def test_a_usage_error_still_exits_2_with_debug(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["solve", "inverse", "--optimizer", "cg", "-o", "nonsense=1", "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gdla: error: ") and "nonsense" in err and "Traceback" in err


def test_a_bug_outside_plugins_is_not_blamed_on_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception with no plugin method on its traceback is not a PluginError: it surfaces as itself."""
    import gdla.commands

    def boom(args: Any, out: Any) -> int:
        raise ZeroDivisionError("a bug in gdla")

    monkeypatch.setitem(gdla.commands.COMMANDS, "plugins", boom)
    with pytest.raises(ZeroDivisionError):
        main(["plugins"])
