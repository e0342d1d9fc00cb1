"""Memory: what a problem would need, what the machine has free, and allocation failures as clear errors.

A problem class may say how many bytes its :meth:`~gdla.Problem.example` of a given size needs
(:meth:`gdla.Problem.estimated_bytes`); the command line checks that against the memory available
before building anything, and :func:`gdla.solve` turns an allocation failure anywhere in a run
into a :class:`~gdla.errors.ResourceError` instead of an allocator traceback.
"""

from __future__ import annotations

import os

from gdla.errors import ResourceError

__all__ = ["allocation_error", "available_bytes", "check_fits", "format_bytes"]

#: Fraction of the available memory a problem may plan to use (the rest is for its work space).
HEADROOM = 0.8
#: Messages of the allocation failures torch raises as plain RuntimeError on the CPU.
ALLOCATION_MESSAGES = ("can't allocate memory", "defaultcpuallocator", "out of memory", "not enough memory")


def available_bytes() -> int | None:
    """Memory available to new allocations: ``MemAvailable`` from ``/proc/meminfo`` (Linux), else ``None``."""
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
