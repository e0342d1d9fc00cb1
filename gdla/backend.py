"""Which implementation computes the loss and its gradient: ``autograd`` or ``fused``.

``autograd`` is the pure-PyTorch reference. ``fused`` runs the custom ops of the compiled
extension ``gdla._C`` (see :mod:`gdla.ops`). ``auto`` picks ``fused`` when the problem has a
fused path and the extension loaded, else falls back to ``autograd`` with one warning saying why.
Set ``GDLA_DISABLE_EXTENSION=1`` to act as if the extension were missing.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

from gdla.errors import BackendError, BackendWarning
from gdla.problem import Problem
from gdla.validation import check_choice

__all__ = ["BACKENDS", "extension_status", "resolve_backend"]

BACKENDS = ("auto", "autograd", "fused")
REBUILD_HINT = "build it with: pip install --no-build-isolation -e ."


@functools.cache
def extension_status() -> tuple[bool, str]:
    """Return ``(loaded, detail)``: whether ``gdla._C`` and its ops loaded, and where from or why not."""
    if os.environ.get("GDLA_DISABLE_EXTENSION", "") not in ("", "0"):
        return False, "disabled by GDLA_DISABLE_EXTENSION"
    try:
        module = importlib.import_module("gdla._C")
        importlib.import_module("gdla.ops")
    except Exception as exc:  # ImportError, undefined symbols, ABI mismatch...
        return False, f"{type(exc).__name__}: {exc}"
    return True, f"loaded from {os.path.basename(getattr(module, '__file__', '?'))}"


@functools.cache
def _warn_fallback(reason: str) -> None:
    hint = "" if reason.startswith("disabled") else f"; {REBUILD_HINT}"
    warnings.warn(
        f"backend='auto' fell back to autograd: the compiled extension gdla._C is unavailable ({reason}){hint}",
        BackendWarning,
        stacklevel=4,
    )


def resolve_backend(requested: str, problem: Problem) -> str:
    """Map the requested backend to the one that will run for ``problem``."""
    check_choice(requested, "backend", BACKENDS)
    if requested == "autograd":
        return "autograd"
    if not problem.fused:
        if requested == "fused":
            raise BackendError(
                f"backend: 'fused' was requested but problem {problem.name!r} has no fused kernel; "
                "use backend='autograd' or 'auto'"
            )
        return "autograd"
    loaded, detail = extension_status()
    if loaded:
        return "fused"
    if requested == "fused":
        raise BackendError(
            f"backend: 'fused' needs the compiled extension gdla._C, which is unavailable ({detail}); {REBUILD_HINT}"
        )
    _warn_fallback(detail)
    return "autograd"
