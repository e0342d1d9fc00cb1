"""Normalised units: a problem's data scaled by an exact power of two, and the map back.

Multiplying a floating-point tensor by ``2^k`` only changes exponents, so (away from overflow and
subnormals) it is exact: solving the problem on ``2^-e · data`` and scaling the answer back gives
the same bits as solving in the original units would in exact arithmetic, and every method sees
data whose largest entry lies in ``[0.5, 1)`` whatever units the caller used. That is what makes
a solve of ``A`` and of ``2^k · A`` behave identically (same steps, same normalised losses).

:func:`gdla.solve` asks :meth:`gdla.Problem.normalized` for a :class:`Normalization`, runs on its
``problem`` and hands its ``restore``\\ d parameters to the caller's problem.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gdla.errors import InputError

if TYPE_CHECKING:  # annotations only: gdla.problem's default normalized() reaches this module
    from gdla.problem import Params, Problem

__all__ = [
    "Normalization",
    "answer_exponent_limits",
    "check_representable",
    "power_of_two_scale",
    "scale_by_power_of_two",
]


@dataclass(frozen=True)
class Normalization:
    """The same problem on power-of-two-scaled data and the map from its parameters back.

    Attributes:
        problem: the problem on scaled data (``data · 2^-exponent``).
        restore: parameters of ``problem`` -> parameters of the original problem (exact scalings).
        exponent: ``e`` such that the normalised data is the original times ``2^-e``.
        param_exponent: ``p`` such that every normalised parameter is the original times ``2^p``
            (``None`` where the parameters do not all scale alike, e.g. the svd's ``U``, ``s``, ``V``).
        loss_exponent: ``j`` such that the normalised loss is the original times ``2^j``.

    With ``p`` and ``j`` known, :func:`gdla.solve` converts what the caller gave in the data's units
    (a learning rate, curvature bounds) into normalised ones, exactly (powers of two): a run with a
    given ``lr`` takes the same steps, bit for bit, whatever the units.
    """

    problem: Problem
    restore: Callable[[Params], Params]
    exponent: int
    param_exponent: int | None = None
    loss_exponent: int = 0


def power_of_two_scale(t: torch.Tensor) -> int:
    """The exponent ``e`` such that ``t · 2^-e`` has its largest absolute entry in ``[0.5, 1)``.

    Computed with :func:`torch.frexp` (exact). An all-zero, empty or non-finite tensor gives 0:
    there is no scale to remove (non-finite data is refused by the problems' own checks).
    """
    if t.numel() == 0:
        return 0
    peak = t.detach().abs().max()
    if not bool(torch.isfinite(peak)) or float(peak) == 0.0:
        return 0
    _, exponent = torch.frexp(peak)
    return int(exponent)


def scale_by_power_of_two(t: torch.Tensor, exponent: int) -> torch.Tensor:
    """``t · 2^exponent``, exact unless an entry over- or underflows.

    The factor is applied in steps of at most ``2^60`` so that no power itself overflows the dtype
    (a float32 tensor cannot hold ``2^200``); each step is a multiplication by an exact power of two,
    and all steps go the same way, so nothing is lost in between that the result would keep.
    """
    remaining = int(exponent)
    while remaining != 0:
        part = max(-60, min(60, remaining))
        t = t * (2.0**part)
        remaining -= part
    return t


@functools.cache
def answer_exponent_limits(dtype: torch.dtype) -> tuple[int, int]:
    """The binary exponents ``(low, high)`` an answer's largest entry may have in ``dtype``.

    ``high`` leaves ``digits`` bits of headroom below overflow (an answer must be usable: its
    products and norms must stay finite); ``low`` keeps all ``digits`` bits of it out of the
    subnormal range. float64: about ``1e-291 … 1e292``; float32: about ``1e-31 … 2e31``.
    """
    info = torch.finfo(dtype)
    digits = int(round(-torch.log2(torch.tensor(info.eps, dtype=torch.float64)).item())) + 1
    max_exp = int(round(torch.log2(torch.tensor(info.max, dtype=torch.float64)).item()))
    min_exp = int(round(torch.log2(torch.tensor(info.tiny, dtype=torch.float64)).item()))
    return min_exp + digits, max_exp - digits


def check_representable(argument: str, answer_exponent: int, dtype: torch.dtype, what: str) -> None:
    """Raise :class:`~gdla.errors.InputError` before any work when the answer cannot be held in ``dtype``.

    Args:
        argument: the data argument whose scale decides it (named in the message).
        answer_exponent: the binary exponent of the answer's largest entry (its scale ``2^k``).
        dtype: the dtype the answer would be computed in.
        what: what the answer is, for the message (e.g. ``"the inverse of A"``).
    """
    low, high = answer_exponent_limits(dtype)
    if low <= answer_exponent <= high:
        return
    size = f"2^{answer_exponent} ≈ {_pow10(answer_exponent)}"
    direction = "overflows" if answer_exponent > high else "underflows"
    raise InputError(
        f"{argument}: {what} has entries of about {size}, which {direction} {str(dtype).removeprefix('torch.')} "
        f"(answers must lie between 2^{low} and 2^{high}); rescale {argument} towards 1 and scale the answer "
        "back yourself" + (", or use float64" if dtype != torch.float64 else "")
    )


def _pow10(exponent: int) -> str:
    return f"1e{round(exponent * 0.30102999566398120)}"
