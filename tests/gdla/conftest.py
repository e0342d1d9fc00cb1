"""Fixtures for the core's tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

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


@pytest.fixture(scope="session")
def torchrun() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``torchrun(*args, cwd=folder)``: ``python -m torch.distributed.run --standalone --nproc-per-node 2 *args``.

    A clean launch (no rank variables inherited from an enclosing torchrun), one thread a rank,
    output captured, two minutes at most.
    """

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        inherited = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        env = {k: v for k, v in os.environ.items() if k not in inherited}
        env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)

    return run
