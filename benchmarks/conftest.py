"""Options and fixtures of the benchmarks: ``--device``, ``--dtype``, ``--sizes`` and a synchronising runner.

The benchmarks are not part of the normal test run (``testpaths = ["tests"]``); run them with
``python -m pytest benchmarks --benchmark-only`` (see benchmarks/README.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

SIZES = (4, 16, 64, 256, 1024)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gdla benchmarks")
    group.addoption("--device", default="cpu", help="device to benchmark on: cpu (default) or cuda")
    group.addoption("--dtype", default="float32", choices=("float32", "float64"), help="dtype of the inputs")
    group.addoption(
        "--sizes",
        default=",".join(map(str, SIZES)),
        help=f"comma-separated matrix sizes n (default {','.join(map(str, SIZES))})",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "n" in metafunc.fixturenames:
        sizes = [int(size) for size in metafunc.config.getoption("--sizes").split(",") if size]
        metafunc.parametrize("n", sizes)


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    device = torch.device(request.config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda: no CUDA device here")
    return device


@pytest.fixture(scope="session")
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture
def run(benchmark, device: torch.device) -> Callable[..., Any]:
    """``run(fn, setup=None)`` times ``fn`` with CUDA synchronised inside the timed call.

    With ``setup`` (an in-place op's inputs reset before every round, untimed) the rounds go
    through ``benchmark.pedantic``, as many as fit in about half a second.
    """

    def synchronised(fn: Callable[[], Any]) -> Callable[[], Any]:
        if device.type != "cuda":
            return fn

        def call() -> Any:
            out = fn()
            torch.cuda.synchronize(device)
            return out

        return call

    def timed(fn: Callable[[], Any], setup: Callable[[], None] | None = None) -> Any:
        target = synchronised(fn)
        if setup is None:
            return benchmark(target)
        setup()
        start = time.perf_counter()
        target()
        rounds = int(min(2000, max(5, 0.5 / max(time.perf_counter() - start, 1e-7))))
        return benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=2)

    return timed


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
