"""Fixtures for the core's tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gdla.cli import main

CliRun = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRun:
    """Run ``gdla ARGV...`` in-process; returns ``(exit code, stdout, stderr)`` and checks no traceback."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return run


def error_line(err: str) -> str:
    """The single ``gdla: error: ...`` line of ``err``."""
    lines = [line for line in err.splitlines() if line.startswith("gdla: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def error_of() -> Callable[[str], str]:
    """:func:`error_line` as a fixture (test modules cannot import conftest under importlib mode)."""
    return error_line
