"""gdla/norms.py: norms that neither underflow nor overflow, against exact powers of two and float64 references."""

from __future__ import annotations

import math

import pytest
import torch

import gdla
from gdla.norms import jointly_scaled, relative_gap, relative_norm, scaled_norm


@pytest.mark.parametrize("exponent", [-1000, -700, 0, 700, 1000])
def test_the_norm_of_a_3_4_vector_is_exactly_5_at_any_scale(exponent: int) -> None:
    t = torch.tensor([3.0, 4.0], dtype=torch.float64) * 2.0 ** (exponent // 2) * 2.0 ** (exponent - exponent // 2)
    expected = 5.0 * 2.0 ** (exponent // 2) * 2.0 ** (exponent - exponent // 2)
    assert float(scaled_norm(t)) == expected
    if abs(exponent) >= 700:  # where the plain norm squares into 0 or inf
        assert float(torch.linalg.vector_norm(t)) in (0.0, math.inf)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_float32_against_float64(scale: float) -> None:
    t = (torch.randn(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * scale).float()
    reference = float(torch.linalg.vector_norm(t.double()))
    assert float(scaled_norm(t)) == pytest.approx(reference, rel=1e-6)
    assert float(torch.linalg.vector_norm(t)) in (0.0, math.inf)  # what the helper is for


def test_norms_over_dims_keep_the_members_apart() -> None:
    rows = torch.tensor([[3.0, 4.0], [6.0, 8.0]], dtype=torch.float64)
    rows = rows * torch.tensor([[2.0**-600], [2.0**600]], dtype=torch.float64)
    assert scaled_norm(rows, (-1,)).tolist() == [5.0 * 2.0**-600, 10.0 * 2.0**600]
    ratio = relative_norm(rows * 0.5, rows, (-1,))
    assert ratio.tolist() == [0.5, 0.5]


def test_relative_norm_is_nan_where_undefined_and_never_absolute() -> None:
    huge = torch.tensor([1e300, 1e300], dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    assert float(relative_norm(huge * 0.25, huge)) == 0.25
    assert math.isnan(float(relative_norm(huge, zero)))
    assert float(relative_norm(zero, zero)) == 0.0
    assert relative_norm(huge, huge).dim() == 0


def test_relative_gap_is_bounded_and_zero_where_the_equation_holds() -> None:
    a = torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64) * 2.0**-1000
    zero = torch.zeros_like(a)
    assert float(relative_gap(a, a)) == 0.0
    assert float(relative_gap(a, zero)) == 1.0
    assert float(relative_gap(zero, zero)) == 0.0
    assert float(relative_gap(a, 2 * a)) == pytest.approx(1 / 3, rel=1e-15)  # ‖a‖ / (‖a‖ + 2‖a‖)


def test_jointly_scaled_puts_the_largest_entry_in_half_to_one_exactly() -> None:
    a = torch.tensor([3.0, 1.0], dtype=torch.float64) * 2.0**-900
    b = torch.tensor([0.5, 7.0], dtype=torch.float64) * 2.0**-900
    sa, sb = jointly_scaled([a, b])
    assert float(sb.abs().max()) == 7.0 / 8.0
    assert float(sa[0]) / float(sb[1]) == 3.0 / 7.0


def test_the_helpers_are_public() -> None:
    assert {"scaled_norm", "relative_norm", "relative_gap"} <= set(gdla.__all__)
    assert gdla.relative_norm is relative_norm and gdla.scaled_norm is scaled_norm
