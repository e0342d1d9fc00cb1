"""Ctrl-C stops a run inside a long whole-run kernel: the loop hands the kernel stretches of bounded length."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import gdla
from gdla import loop
from gdla.backend import extension_status


def _seed_000() -> gdla.Problem:
    return gdla.get_problem("inverse").example(side="left", dtype=torch.float32)


@pytest.mark.skipif(not extension_status()[0], reason="needs the compiled whole-run kernels")
def test_stretches_are_bounded_and_give_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    options = {"optimizer": "momentum", "lr": 0.9, "momentum": 0.9, "max_steps": 3000, "tol": 0}
    whole = gdla.solve(_seed_000(), **options)
    calls: list[int] = []
    cls = gdla.get_optimizer("momentum")
    real = cls.advance

    def counting(self, steps, tol=0.0):
        calls.append(steps)
        return real(self, steps, tol)

    monkeypatch.setattr(cls, "advance", counting)
    monkeypatch.setattr(loop, "FIRST_STRETCH_WORK", 100 * 16)  # 100 steps of a 4×4 problem
    monkeypatch.setattr(loop, "STRETCH_SECONDS", 1e-9)  # every call after the first: one step
    cut = gdla.solve(_seed_000(), **options)
    assert calls[0] == 100 and set(calls[1:]) == {1} and len(calls) == 3000 - 100 + 1
    assert cut.losses == whole.losses and torch.equal(cut.solution, whole.solution)


@pytest.mark.skipif(not extension_status()[0], reason="needs the compiled whole-run kernels")
@pytest.mark.skipif(os.name != "posix", reason="sends a real SIGINT")
def test_ctrl_c_inside_a_long_kernel_run_exits_130_promptly() -> None:
    command = [
        sys.executable, "-m", "gdla", "solve", "inverse", "-p", "batch=10000", "--optimizer", "momentum",
        "--lr", "0.1", "--steps", "3000000", "--tol", "0",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4.0)  # imports, set-up, then well inside the kernel's run
    assert process.poll() is None, process.communicate()
    sent = time.perf_counter()
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    finally:
        process.kill()
    waited = time.perf_counter() - sent
    _, err = process.communicate()
    assert process.returncode == 130, err
    assert waited < 2.0, f"exited {waited:.2f} s after SIGINT"


_LONG_CALL = """
import sys, torch
import gdla.cli, gdla.commands

def long_setup(args, out):
    A = torch.randn(2500, 2500, dtype=torch.float64)
    print("ready", flush=True)
    while True:  # each call runs for a second or more without returning to Python
        torch.linalg.svdvals(A)

gdla.commands.COMMANDS["solve"] = long_setup
sys.exit(gdla.cli.main(["solve", "inverse"]))
"""


@pytest.mark.skipif(os.name != "posix", reason="sends a real SIGINT")
def test_ctrl_c_inside_one_long_torch_call_exits_130_within_the_grace_period() -> None:
    # Python's handler cannot run until svdvals returns; the command's watchdog ends the process instead
    process = subprocess.Popen(
        [sys.executable, "-c", _LONG_CALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n", process.communicate()
        time.sleep(0.3)  # inside svdvals
        sent = time.perf_counter()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
        waited = time.perf_counter() - sent
    finally:
        process.kill()
    _, err = process.communicate()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "gdla: error: interrupted"
    assert waited < 1.0 + 1.0, f"exited {waited:.2f} s after SIGINT"


def test_the_watchdog_stays_quiet_when_the_block_ends() -> None:
    from gdla.interrupts import prompt_interrupts

    said: list[str] = []
    with prompt_interrupts(lambda: said.append("interrupted")):
        value = int(torch.ones(3).sum())
    assert value == 3 and said == []
    with pytest.raises(KeyboardInterrupt), prompt_interrupts(lambda: said.append("interrupted")):
        signal.raise_signal(signal.SIGINT)  # Python's own handler: KeyboardInterrupt, promptly
    time.sleep(1.2)  # past the grace period: the watchdog saw the block end and did not fire
    assert said == []


def test_ctrl_c_anywhere_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gdla import cli as cli_module

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    for where in ("build_parser", "_warning_printer"):  # before parsing, and while running a command
        with monkeypatch.context() as patch:
            patch.setattr(cli_module, where, interrupted)
            assert cli_module.main(["plugins"]) == 130
        err = capsys.readouterr().err
        assert err.strip() == "gdla: error: interrupted" and "Traceback" not in err
