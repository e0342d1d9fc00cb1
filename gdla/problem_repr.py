"""How a problem prints: ``repr(problem)`` is one short line, never its data.

``InverseProblem(name='inverse', A=4×4, side='right', dtype=float64, device=cpu)``: the class, the
registered name, each tensor constructor argument by its shape (``sparse`` where it is), the
other arguments as given (long ones shortened), the data's dtype and device, and ``batch=N`` for
a batched problem. A problem that records no constructor arguments shows its floating-point tensor
attributes instead. :class:`gdla.Problem` uses :func:`problem_repr` as its ``__repr__``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["problem_repr"]

#: At most this many constructor arguments are shown (then ``…``), each value at most this many characters.
MAX_ARGUMENTS = 8
MAX_VALUE = 40


def problem_repr(problem: Any) -> str:
    """``ClassName(name=..., <arguments>, dtype=..., device=..., batch=...)`` for ``problem`` (see the module)."""
    parts = [f"name={problem.name!r}"] if getattr(problem, "name", "") else []
    try:
        parts += _arguments(problem)
        parts += [f"dtype={str(problem.dtype).removeprefix('torch.')}", f"device={problem.device}"]
        batch = problem.batch_size()
        if batch is not None:
            parts.append(f"batch={batch}")
    except Exception:  # noqa: BLE001 - printing must not fail on a plugin's broken property: show what is known
        parts.append("…")
    return f"{type(problem).__name__}({', '.join(parts)})"


def _arguments(problem: Any) -> list[str]:
    """``key=value`` for the recorded constructor arguments (``None`` ones left out), or the data tensors' shapes."""
    recorded = problem.__dict__.get("_constructor_arguments")
    items = recorded.items() if recorded is not None else problem._data().items()
    shown = [f"{key}={_value(value)}" for key, value in items if value is not None]
    if len(shown) > MAX_ARGUMENTS:
        shown = [*shown[:MAX_ARGUMENTS], "…"]
    return shown


def _value(value: Any) -> str:
    """A tensor or array by its shape (``4×4``, ``4×4 sparse``, a scalar tensor by its value), anything else by
    its ``repr``, shortened."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return f"{value.item():g}" if value.is_floating_point() else str(value.item())
        shape = "×".join(str(size) for size in value.shape)
        return shape if value.layout == torch.strided else f"{shape} sparse"
    if isinstance(value, np.ndarray):
        return "×".join(str(size) for size in value.shape) or repr(value.item())
    text = repr(value)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"
