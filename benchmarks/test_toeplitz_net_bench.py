"""The toeplitz-net example trained to its reference by ``auto``, against the dense Levenberg-Marquardt before it.

Run with ``python -m pytest benchmarks/test_toeplitz_net_bench.py --benchmark-only`` (not part of the test
suite). One group per thread count (the default and 1), the implementation as the parameter:

* ``auto``: what ``gdla.solve(gdla.get_problem("toeplitz-net").example())`` runs, Levenberg-Marquardt's gram
  path (the problem's declared ``J Jᵀ``, a 1,792-square Cholesky factor per damped solve); medians of 3 calls
  after a first one in the same process, whose time is recorded as ``first_call_s``; ``fresh_process_s`` is
  the same solve in a new interpreter, its imports excluded;
* ``levenberg-marquardt dense``: the same method forming ``J`` (1,792 × 12,007) and ``J Jᵀ`` each step, the
  path ``auto`` took before; one call (tens of seconds), after ``auto`` in the same process.

Each call builds the example and solves it; ``extra_info`` records the steps, the error reached against the
per-row least-squares bands, the path, the threads and the sizes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
import torch

import gdla

IMPLEMENTATIONS: dict[str, dict[str, Any]] = {
    "auto": {},
    "levenberg-marquardt dense": {"optimizer": "levenberg-marquardt", "method": "dense"},
}
DEFAULT_THREADS = torch.get_num_threads()


def solve_example(options: dict[str, Any]) -> gdla.Result:
    return gdla.solve(gdla.get_problem("toeplitz-net").example(), **options)


def fresh_process_seconds(threads: int) -> float:
    """The example's ``auto`` solve in a new interpreter, timed after ``import torch, gdla``."""
    code = textwrap.dedent(
        f"""
        import json, time
        import torch, gdla
        torch.set_num_threads({threads})
        start = time.perf_counter()
        gdla.solve(gdla.get_problem("toeplitz-net").example())
        print(json.dumps(time.perf_counter() - start))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("threads", [DEFAULT_THREADS, 1], ids=["default-threads", "1-thread"])
@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_toeplitz_net_example_to_its_reference(benchmark: Any, implementation: str, threads: int) -> None:
    options = IMPLEMENTATIONS[implementation]
    benchmark.group = f"toeplitz-net example (256 rows, n = 11, hidden 100) float64, {threads} thread(s)"
    torch.set_num_threads(threads)
    try:
        if implementation == "auto":
            start = time.perf_counter()
            solve_example(options)
            benchmark.extra_info["first_call_s"] = time.perf_counter() - start
            benchmark.extra_info["fresh_process_s"] = fresh_process_seconds(threads)
            rounds = 3
        else:
            rounds = 1
        result = benchmark.pedantic(solve_example, args=(options,), rounds=rounds, iterations=1)
    finally:
        torch.set_num_threads(DEFAULT_THREADS)
    settings = result.settings
    benchmark.extra_info.update(
        {
            "threads": threads,
            "steps": result.steps,
            "error": float(result.metrics["error"]),
            "stop_reason": result.stop_reason,
            "method": settings.get("optimizer.method", result.optimizer),
            "path": settings.get("optimizer.path"),
            "residuals": settings.get("optimizer.residuals"),
            "unknowns": settings.get("optimizer.unknowns"),
        }
    )
    assert result.metrics["error"] <= 1e-6, result.summary()
