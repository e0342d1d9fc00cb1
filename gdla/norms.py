r"""Norms that neither underflow nor overflow: every 2-norm here is taken after an exact power-of-two scaling.

``torch.linalg.vector_norm`` squares the entries: ``1e-160`` data (float64) squares to ``0`` and
``1e+160`` data to ``inf``, so a relative residual ``‖g‖ / ‖h‖`` of such data reads ``0 / 0``
(NaN, or 0 after a "safe" division) or ``inf / inf``, whatever the answer's quality. Dividing
every tensor of a ratio by one power of two ``2^e`` first (the binary exponent of their largest
entry, found exactly with :func:`torch.frexp`) leaves the ratio unchanged and puts the largest
entry in ``[0.5, 1)``, where nothing is lost.

These are the helpers a plugin uses for its ``residual()`` and ``error()`` (the README's example
does), and the built-in problems use them for theirs:

* :func:`scaled_norm`: ``‖t‖`` itself, in the data's units.
* :func:`relative_norm`: ``‖a‖ / ‖b‖``, a relative error or residual (NaN where undefined).
* :func:`relative_gap`: ``‖a − b‖ / (‖a‖ + ‖b‖)``, a residual bounded by 1.
* :func:`jointly_scaled`: the tensors themselves, divided by their common power of two.

``dim`` is the dimensions a norm runs over (the others index independent problems, whose ratios
are kept apart); ``None`` takes every entry and gives a 0-dim tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["jointly_scaled", "relative_gap", "relative_norm", "scaled_norm"]

Dims = tuple[int, ...] | None


def _common_exponent(tensors: Sequence[torch.Tensor], dim: Dims) -> torch.Tensor:
    """The binary exponent of the largest absolute entry over ``dim`` of all ``tensors`` (``keepdim``); 0 where none
    is finite and nonzero."""
    if dim is None:
        peaks = [t.detach().abs().amax() if t.numel() else t.new_zeros(()) for t in tensors]
    else:
        peaks = [t.detach().abs().amax(dim=dim, keepdim=True) for t in tensors]
    peak = peaks[0]
    for other in peaks[1:]:
        peak = torch.maximum(peak, other)
    peak = torch.where(torch.isfinite(peak) & (peak > 0), peak, torch.ones_like(peak))
    _, exponent = torch.frexp(peak)
    return exponent


def _times_power_of_two(tensor: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """``tensor · 2^exponent``, the power applied in two halves so that neither leaves the dtype's range."""
    first = torch.div(exponent, 2, rounding_mode="floor")
    second = exponent - first
    factors = [torch.exp2(part.to(torch.float64)).to(tensor.dtype) for part in (first, second)]
    return tensor * factors[0] * factors[1]


def jointly_scaled(tensors: Sequence[torch.Tensor], dim: Dims = None) -> list[torch.Tensor]:
    """``tensors`` (same batch dimensions) all divided by the same exact power of two per member, ``2^e``.

    ``e`` is the binary exponent of the largest absolute entry over ``dim`` of all of them, so the
    largest scaled entry lies in ``[0.5, 1)`` and norms over ``dim`` neither overflow nor underflow
    (except for an entry ``2^-1074`` times smaller than the largest, which is negligible anyway).
    """
    exponent = -_common_exponent(tensors, dim)
    return [_times_power_of_two(t, exponent) for t in tensors]


def scaled_norm(tensor: torch.Tensor, dim: Dims = None) -> torch.Tensor:
    """``‖tensor‖₂`` over ``dim`` (every entry for ``None``), right for ``1e-300`` and ``1e+300`` data alike.

    Only a norm that is itself beyond the dtype's range (``inf``) or below its smallest subnormal
    (``0``) is not represented.
    """
    exponent = _common_exponent([tensor], dim)
    scaled = _times_power_of_two(tensor, -exponent)
    norm = torch.linalg.vector_norm(scaled, dim=dim)
    return _times_power_of_two(norm, exponent if dim is None else exponent.squeeze(dim))


def relative_norm(difference: torch.Tensor, reference: torch.Tensor, dim: Dims = None) -> torch.Tensor:
    """Per member ``‖difference‖ / ‖reference‖`` (2-norm over ``dim``), computed in scaled arithmetic.

    Both are divided by one exact power of two first, so the ratio is right whatever the units:
    ``1e-200`` data no longer underflows into ``0 / 0``. Where the reference is zero the ratio is
    undefined: NaN if the difference is nonzero, 0 if both are zero (the answer is then exact).
    A relative error is ``relative_norm(x − x_ref, x_ref)``; a relative residual
    ``relative_norm(Aᵀ(A x − b), Aᵀ b)``.
    """
    diff, ref = jointly_scaled([difference, reference], dim)
    num = torch.linalg.vector_norm(diff, dim=dim)
    den = torch.linalg.vector_norm(ref, dim=dim)
    undefined = torch.where(num > 0, torch.full_like(num, float("nan")), torch.zeros_like(num))
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), undefined)


def relative_gap(value: torch.Tensor, target: torch.Tensor, dim: Dims = None) -> torch.Tensor:
    """Per member ``‖value − target‖ / (‖value‖ + ‖target‖)`` over ``dim``, in scaled arithmetic.

    A residual of an equation ``value = target`` that is unchanged when both are rescaled, at most 1,
    and 0 when both vanish (the equation then holds).
    """
    value, target = jointly_scaled([value, target], dim)
    num = torch.linalg.vector_norm(value - target, dim=dim)
    den = torch.linalg.vector_norm(value, dim=dim) + torch.linalg.vector_norm(target, dim=dim)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
