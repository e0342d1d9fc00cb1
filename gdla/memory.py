"""Memory: what a problem would need, what the machine has free, and allocation failures as clear errors.

A problem class may say how many bytes its :meth:`~gdla.Problem.example` of a given size needs
(:meth:`gdla.Problem.estimated_bytes`); the command line checks that against the memory available
before building anything. An optimizer may say how many bytes of dense matrices (Jacobians,
Gram matrices...) it would form on a problem (:meth:`gdla.Optimizer.estimated_bytes`); the
run plan checks the chosen method with :func:`check_method_fits` before building it, so a
dense method asked to solve an operator that only fits sparse is refused with advice instead of
swapping or crashing. :func:`gdla.solve` turns an allocation failure anywhere in a run into a
:class:`~gdla.errors.ResourceError` instead of an allocator traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from gdla.errors import GdlaError, ResourceError

if TYPE_CHECKING:
    from gdla.optimizer import Optimizer
    from gdla.problem import Params, Problem

__all__ = ["allocation_error", "available_bytes", "check_fits", "check_method_fits", "format_bytes"]

#: Fraction of the available memory a problem may plan to use (the rest is for its work space).
HEADROOM = 0.8
#: Messages of the allocation failures torch raises as plain RuntimeError on the CPU.
ALLOCATION_MESSAGES = ("can't allocate memory", "defaultcpuallocator", "out of memory", "not enough memory")


def available_bytes() -> int | None:
    """Memory available to new allocations: the machine's (``MemAvailable`` from ``/proc/meminfo`` on Linux, free
    physical pages elsewhere), or less where this process's address-space limit (``ulimit -v``, ``RLIMIT_AS``)
    leaves less room; ``None`` if neither is known."""
    machine = _machine_available()
    room = _address_space_room()
    known = [value for value in (machine, room) if value is not None]
    return min(known) if known else None


def _address_space_room() -> int | None:
    """Bytes this process may still map under its ``RLIMIT_AS`` soft limit, or ``None`` without a limit."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm", encoding="ascii") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError, IndexError, AttributeError):
        return None
    return max(0, limit - mapped)


def _machine_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other POSIX systems: free physical pages
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def format_bytes(count: float) -> str:
    """``1.5 GiB``, ``320 MiB``, ``12 KiB``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{int(count)} bytes"


def check_fits(needed: int | None, what: str) -> None:
    """Raise :class:`ResourceError` if ``needed`` bytes exceed what is available (with headroom)."""
    if needed is None:
        return
    free = available_bytes()
    if free is None or needed <= HEADROOM * free:
        return
    raise ResourceError(
        f"{what} needs about {format_bytes(needed)} of memory, and {format_bytes(free)} is available; "
        "choose a smaller size, or a problem form that stores less (for example a sparse mask)"
    )


def check_method_fits(
    optimizer: type[Optimizer],
    problem: Problem,
    params: Params,
    options: dict[str, Any],
    alternatives: Callable[[], Iterable[Any]] | None = None,
) -> None:
    """Refuse ``optimizer`` on ``problem`` before any work if the dense matrices it declares would not fit.

    Args:
        optimizer: the optimizer class about to be built.
        problem: the problem it would solve.
        params: the starting parameters (their sizes are the unknowns).
        options: the options it is built with (a method may have a dense and a matrix-free path).
        alternatives: the other methods to advise, best first (the run plan's ranking: items with
            ``name``, ``cls`` and ``fit``, a :class:`~gdla.Suitability`); called only on a refusal.

    Raises:
        ResourceError: :meth:`~gdla.Optimizer.estimated_bytes` exceeds the memory available (with
            :data:`HEADROOM`). The message names the optimizer, the problem's size (its operator's
            shape and stored entries where :meth:`~gdla.Problem.sparse_storage` declares them), the
            memory needed and available, and the best-ranked of ``alternatives`` whose own estimate fits.
    """
    needed = optimizer.estimated_bytes(problem, params, options)
    if needed is None or optimizer.unsupported_reason(problem) is not None:
        return  # nothing dense declared, or the constructor says why it cannot run at all
    free = available_bytes()
    if free is None or needed <= HEADROOM * free:
        return
    unknowns = sum(value.numel() for value in params.values())
    storage = problem.sparse_storage()
    if storage is not None:
        shape, nnz = storage
        size = f"a {' × '.join(str(side) for side in shape)} operator stored sparse with {nnz:,} entries"
    else:
        size = f"{unknowns:,} unknowns"
    raise ResourceError(
        f"optimizer: {optimizer.name!r} would form dense matrices of about {format_bytes(needed)} on problem "
        f"{problem.name!r} ({size}), and {format_bytes(free)} is available; "
        f"{_fitting_method(problem, params, () if alternatives is None else alternatives(), free)}"
    )


def _fitting_method(problem: Problem, params: Params, alternatives: Iterable[Any], free: int) -> str:
    """Advice: the first of ``alternatives`` (best first) whose memory estimate fits."""
    for candidate in alternatives:
        try:
            needed = candidate.cls.estimated_bytes(problem, params, dict(candidate.fit.options))
        except GdlaError:
            continue
        if needed is not None and needed > HEADROOM * free:
            continue
        return (
            f"use optimizer={candidate.name!r}, the best-ranked method that fits (what optimizer='auto' picks by the "
            f"declared suitability: {candidate.fit.reason})"
        )
    return "no registered method that declares itself suitable fits either; solve a smaller problem"


def allocation_error(exc: BaseException, what: str) -> ResourceError | None:
    """The :class:`ResourceError` for an allocation failure ``exc`` during ``what``, or ``None`` if it is not one."""
    if isinstance(exc, ResourceError):
        return exc
    text = str(exc).lower()
    is_oom = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
    if not is_oom and not (isinstance(exc, RuntimeError) and any(m in text for m in ALLOCATION_MESSAGES)):
        return None
    free = available_bytes()
    have = f" ({format_bytes(free)} available now)" if free is not None else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ResourceError(f"{what} ran out of memory{have}: {first[:200]}; try a smaller problem")
