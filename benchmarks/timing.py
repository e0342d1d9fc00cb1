"""Timing helpers of the benchmark scripts: medians of back-to-back calls, two functions called in turn.

Medians in the steady state, as ``timeit``'s autorange takes them; used by ``notebooks.py`` and
``tiny_and_setup.py``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

#: Seconds of calls before timing (at least one call), and the least total time the timed calls fill.
WARM_UP, MEASURE = 0.2, 0.5


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median time of one call, in the steady state (as ``timeit``'s autorange does).

    Calls ``fn`` for ``WARM_UP`` seconds first (first-call costs, and the caches and branch
    history the previous row left, are not this row's), then times at least ``repeats`` calls and
    as many more as fill ``MEASURE`` seconds (at most 2,000): a 0.3 ms solve and a 0.3 s eager loop
    are both medians of calls made back to back.
    """
    began = time.perf_counter()
    fn()
    while time.perf_counter() - began < WARM_UP:
        fn()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < MEASURE and len(times) < 2000):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median times of one call of ``first`` and of ``second``, the two called in turn (as :func:`median_seconds`:
    a warm-up, then at least ``repeats`` pairs and as many more as fill ``MEASURE`` seconds, at most 2,000).

    A ratio of the two is then taken over the same moments: on a shared machine whose speed drifts from second to
    second, two medians taken one after the other can differ by more than the two functions do.
    """
    began = time.perf_counter()
    first(), second()
    while time.perf_counter() - began < WARM_UP:
        first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    while len(times[0]) < repeats or (sum(times[0]) + sum(times[1]) < MEASURE and len(times[0]) < 2000):
        for fn, kept in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def shown_seconds(seconds: float) -> str:
    """``seconds`` in µs, ms or s, three significant digits."""
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"
    return f"{seconds * 1e6:.3g} µs"
