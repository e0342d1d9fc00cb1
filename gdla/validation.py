"""Argument checks shared by the core and the plugins.

Each check raises :class:`gdla.errors.InputError` (or a subclass) whose message names the
argument, what was expected and what was received, so bad input never reaches torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch

from gdla.errors import InputError, ShapeError

__all__ = [
    "as_dtype",
    "as_device",
    "check_choice",
    "check_finite",
    "check_int",
    "check_matrix",
    "check_nonnegative",
    "check_positive",
    "check_probability",
]

FLOAT_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float": torch.float32,
    "double": torch.float64,
}


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_matrix(
    value: Any,
    name: str,
    *,
    square: bool = False,
    batch: bool = True,
    dtype: torch.dtype | None = None,
    allow_nonfinite: bool = False,
) -> torch.Tensor:
    """Return ``value`` as a floating-point tensor of shape ``(..., m, n)``.

    Accepts tensors, NumPy arrays and nested lists. Rejects integer and boolean data, fewer than
    two dimensions (or more, when ``batch`` is false), empty matrices, NaN/Inf entries and, with
    ``square``, non-square matrices.
    """
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(
                f"{name}: expected a matrix (tensor, NumPy array or nested list), received {_describe(value)} ({exc})"
            ) from None
    if value.device.type not in ("cpu", "cuda"):
        raise InputError(
            f"{name}: expected a matrix on the CPU or a CUDA device, received one on {str(value.device)!r}"
            + (" (a 'meta' tensor holds no data to solve)" if value.device.type == "meta" else "")
        )
    if not (value.is_floating_point()):
        raise InputError(
            f"{name}: expected a floating-point matrix (float32 or float64), received {value.dtype} "
            "data; store it as floating point (in Python: tensor.double() or array.astype('float64'))"
        )
    if value.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise InputError(f"{name}: expected float32 or float64 data, received {value.dtype}")
    if value.dim() < 2 or (not batch and value.dim() != 2):
        want = "a matrix with shape (..., m, n)" if batch else "a 2-D matrix"
        raise ShapeError(f"{name}: expected {want}, received shape {tuple(value.shape)}")
    if value.numel() == 0:
        raise ShapeError(f"{name}: expected a non-empty matrix, received shape {tuple(value.shape)}")
    if square and value.shape[-1] != value.shape[-2]:
        raise ShapeError(
            f"{name}: expected a square matrix, received shape {tuple(value.shape)}; "
            "for a rectangular matrix use the pseudo-inverse"
        )
    if not allow_nonfinite:
        check_finite(value, name)
    if dtype is not None and value.dtype != dtype:
        value = value.to(dtype)
    return value


def check_finite(value: torch.Tensor, name: str) -> torch.Tensor:
    """Raise if ``value`` holds NaN or Inf entries."""
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise InputError(
            f"{name}: expected finite entries, received {bad} NaN/Inf "
            f"entr{'y' if bad == 1 else 'ies'} in shape {tuple(value.shape)}"
        )
    return value


def check_positive(value: Any, name: str) -> float:
    """Return ``value`` as a float, raising unless it is a finite number > 0."""
    number = _as_real(value, name)
    if not number > 0:
        raise InputError(f"{name}: expected a number > 0, received {value!r}")
    return number


def check_nonnegative(value: Any, name: str) -> float:
    """Return ``value`` as a float, raising unless it is a finite number >= 0."""
    number = _as_real(value, name)
    if not number >= 0:
        raise InputError(f"{name}: expected a number >= 0, received {value!r}")
    return number


def check_probability(value: Any, name: str, *, closed: bool = False) -> float:
    """Return ``value`` as a float in ``[0, 1)`` (``[0, 1]`` with ``closed``)."""
    number = _as_real(value, name)
    upper_ok = number <= 1 if closed else number < 1
    if not (number >= 0 and upper_ok):
        interval = "[0, 1]" if closed else "[0, 1)"
        raise InputError(f"{name}: expected a number in {interval}, received {value!r}")
    return number


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int, raising unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name}: expected an integer, received {_describe(value)}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, received {value}")
    return int(value)


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; otherwise list them in the error."""
    options = list(choices)
    if value not in options:
        listed = ", ".join(repr(c) for c in options)
        raise InputError(f"{name}: expected one of {listed}, received {value!r}")
    return value


def check_callable(value: Any, name: str) -> Callable[..., Any] | None:
    """Return ``value`` if it is ``None`` or callable."""
    if value is not None and not callable(value):
        raise InputError(f"{name}: expected a callable or None, received {_describe(value)}")
    return value


def as_dtype(value: Any, name: str = "dtype") -> torch.dtype | None:
    """Map ``None``, ``"float32"``/``"float64"`` or a torch dtype to a floating torch dtype."""
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        if value not in (torch.float32, torch.float64):
            raise InputError(f"{name}: expected torch.float32 or torch.float64, received {value}")
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in FLOAT_DTYPES:
        return FLOAT_DTYPES[value.removeprefix("torch.")]
    raise InputError(f"{name}: expected 'float32', 'float64' or None, received {value!r}")


def as_device(value: Any, name: str = "device") -> torch.device | None:
    """Map ``None``, a string or a torch device to a torch device that exists here."""
    if value is None:
        return None
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise InputError(f"{name}: expected a device such as 'cpu' or 'cuda:0', received {value!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{name}: received {value!r}, but this torch build or machine has no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"{name}: received {value!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise InputError(
            f"{name}: expected 'cpu' or a CUDA device such as 'cuda:0', received {value!r} (gdla solves on the CPU "
            "and on CUDA; a 'meta' tensor holds no data to solve)"
        )
    return device


def _as_real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name}: expected a number, received {_describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"{name}: expected a finite number, received {value!r}")
    return number
