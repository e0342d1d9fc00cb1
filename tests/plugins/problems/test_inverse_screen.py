"""The ``inverse`` problem's construction screen: an LU factorisation and 1-norm estimates instead of singular values.

A large square ``A`` without ``pseudo`` is vouched for by :func:`screen`; its singular values are computed only
when a figure needs them (``condition_estimate``, the normal-equations residual) or when the screen cannot vouch
for it, and then every verdict and message is the exact analysis's.
"""

from __future__ import annotations

import pytest
import torch

from gdla.errors import InputError, SingularMatrixError
from gdla_plugins.problems._inverse_analysis import SCREEN_MIN_ENTRIES, analyse, inverse_norm_estimate, screen
from gdla_plugins.problems.inverse import InverseProblem


def random_matrix(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def with_condition(n: int, cond: float, seed: int = 0) -> torch.Tensor:
    """An ``n × n`` float64 matrix with singular values spread geometrically from 1 to ``1 / cond``."""
    left, _ = torch.linalg.qr(random_matrix(n, n, seed=seed))
    right, _ = torch.linalg.qr(random_matrix(n, n, seed=seed + 1))
    sigma = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return (left * sigma) @ right.T


def test_a_large_invertible_matrix_is_built_without_its_singular_values() -> None:
    A = InverseProblem.well_conditioned(96, dtype=torch.float64).A  # 9,216 entries
    assert A.numel() >= SCREEN_MIN_ENTRIES
    problem = InverseProblem(A)
    assert not problem._facts.exact and problem._projector is None and bool(problem._attainable)
    problem.normalized()  # the representability check from the screen's bounds
    assert not problem._facts.exact
    # asked for, the exact figures: torch's, once
    assert problem.condition_estimate() == pytest.approx(float(torch.linalg.cond(A)), rel=1e-10)
    assert problem._facts.exact
    torch.testing.assert_close(problem._sigma_max, torch.linalg.matrix_norm(A, ord=2), rtol=1e-12, atol=0)


@pytest.mark.parametrize("cond", [1e2, 1e8, 1e13])
def test_the_screen_bounds_the_condition_number_it_vouches_for(cond: float) -> None:
    A = with_condition(80, cond)
    exact = analyse(A, "right", False, 80)
    bounds = screen(A, False)
    if bounds is not None:  # vouched for: the exact analysis agrees, and the bounds hold
        assert bool(exact.attainable) and exact.projector is None
        assert float(bounds.cond_low) <= float(exact.cond) <= float(bounds.cond_high)
        assert float(bounds.sigma_low) <= float(exact.sigma_max) <= float(bounds.sigma_high)
    assert (bounds is None) == (cond >= 1e13)  # 1e13 · slack passes 1 / (80 ε) ≈ 5.6e13: left to the exact analysis
    assert bool(InverseProblem(A)._attainable) == bool(exact.attainable)


def test_the_norm_estimates_are_lower_bounds_within_a_small_factor() -> None:
    for seed in range(4):
        A = random_matrix(70, 70, seed=seed)
        LU, pivots, _ = torch.linalg.lu_factor_ex(A)
        inverse = torch.linalg.inv(A)
        for transposed, norm in ((False, 1), (True, float("inf"))):
            true = float(torch.linalg.matrix_norm(inverse, ord=norm))
            estimate = float(inverse_norm_estimate(LU, pivots, transposed))
            assert true / 3 <= estimate <= true * (1 + 1e-12)


def test_singular_and_ill_conditioned_matrices_get_the_exact_verdicts() -> None:
    A = random_matrix(80, 79) @ random_matrix(79, 80, seed=1)  # rank 79: the screen steps aside
    assert screen(A, False) is None
    with pytest.raises(SingularMatrixError, match=r"A: expected an invertible matrix, .*condition number"):
        InverseProblem(A)
    batch = InverseProblem.well_conditioned(4, batch=(300,), seed=2).A.clone()  # 4,800 entries: screened
    batch[123] = torch.tensor([[1.0, 2, 3, 4], [2, 4, 6, 8], [0, 1, 0, 1], [1, 0, 1, 0]], dtype=torch.float64)
    with pytest.raises(SingularMatrixError, match=r"batch index \(123,\)"):
        InverseProblem(batch)
    with pytest.raises(SingularMatrixError, match="float32"):  # κ = 1e6 > 8.4e5, float32's limit
        InverseProblem(with_condition(70, 1e6).float())
    assert InverseProblem(torch.cat([batch[:123], batch[124:]]))._facts.exact is False  # the others: screened


def test_an_answer_out_of_range_is_refused_with_the_exact_figures() -> None:
    """The screen's bounds straddle float32's range: the exact singular values decide, with their message."""
    A = InverseProblem.well_conditioned(64, dtype=torch.float32).A * 2.0**-125
    with pytest.raises(InputError, match="the inverse of A has entries of about 2\\^1(2|3)[0-9]"):
        InverseProblem(A).normalized()
