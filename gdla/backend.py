"""Which implementation runs a solve: ``autograd`` (the pure-PyTorch reference) or ``fused``.

``fused`` runs the custom ops of the compiled extension ``gdla._C`` (see :mod:`gdla.ops`). The
choice is made once per solve, before the first step, by asking the optimizer (and through it the
problem) with :meth:`gdla.Optimizer.fused_reason`: ``"fused"`` runs fused for the whole run or
raises :class:`~gdla.errors.BackendError` saying which part has no fused path; ``"auto"`` picks
fused exactly where the whole run has one, and warns once when only a missing extension stood in
the way. Set ``GDLA_DISABLE_EXTENSION=1`` to act as if the extension were missing.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gdla.errors import BackendError, BackendWarning
from gdla.problem import Problem

if TYPE_CHECKING:
    from gdla.optimizer import Optimizer
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


def resolve_backend(
    requested: str,
    problem: Problem,
    optimizer: type[Optimizer] | None = None,
    options: Mapping[str, Any] | None = None,
) -> str:
    """The backend that will run ``optimizer`` (with ``options``) on ``problem``: decided once, before any step.

    Without ``optimizer`` only the problem's own fused path (``Problem.fused_reason``) is asked.
    """
    check_choice(requested, "backend", BACKENDS)
    if requested == "autograd":
        return "autograd"
    loaded, detail = extension_status()
    if not loaded:
        if requested == "fused":
            raise BackendError(
                f"backend: 'fused' needs the compiled extension gdla._C, which is unavailable ({detail}); "
                f"{REBUILD_HINT}"
            )
        if problem.fused_reason() is None:  # a fused path existed, only the extension is missing
            _warn_fallback(detail)
        return "autograd"
    reason = (
        problem.fused_reason() if optimizer is None else optimizer.fused_reason(problem, dict(options or {}))
    )
    if reason is None:
        return "fused"
    if requested == "fused":
        who = "" if optimizer is None else f" with optimizer {optimizer.name!r}"
        raise BackendError(
            f"backend: 'fused' was requested for problem {problem.name!r}{who}, but part of the run has no fused "
            f"path: {reason}; use backend='autograd' or 'auto'"
        )
    return "autograd"
