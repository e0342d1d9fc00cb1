"""No wrong answer labelled right: the false successes of issue 12 as regression tests.

Every error here is computed independently of gdla: ``torch.linalg`` references, compared after
dividing both sides by the reference's largest entry (so no norm under- or overflows). The rule
checked throughout: a run that says ``converged`` has an error within the tolerance's reach,
``error ≤ cond · tol · 10``; an all-zero answer to a nonzero problem is never ``converged``.
"""

from __future__ import annotations

import math

import pytest
import torch

import gdla
from gdla.errors import InputError
from gdla.stopping import default_tol
from gdla_plugins.problems._common import relative_frobenius, relative_norm
from gdla_plugins.problems.inverse import InverseProblem
from gdla_plugins.problems.sparse import SparseProblem
from gdla_plugins.problems.svd import SVDProblem
from gdla_plugins.problems.toeplitz import ToeplitzProblem

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def _with_singular_values(values: torch.Tensor, seed: int) -> torch.Tensor:
    n = values.numel()
    return _orthogonal(n, seed) @ torch.diag(values) @ _orthogonal(n, seed + 1).T


WELL = _with_singular_values(torch.linspace(1.0, 3.0, 6, dtype=torch.float64), 10)  # 6 × 6, condition 3
COND20 = _with_singular_values(torch.linspace(1.0, 20.0, 5, dtype=torch.float64), 20)  # 5 × 5, condition 20


def _error(answer: torch.Tensor, reference: torch.Tensor) -> float:
    """``‖answer − ref‖ / ‖ref‖`` in float64 after dividing both by ``max |ref|`` (independent of gdla)."""
    answer, reference = answer.double(), reference.double()
    peak = reference.abs().max()
    difference = torch.linalg.vector_norm(answer / peak - reference / peak)
    return float(difference / torch.linalg.vector_norm(reference / peak))


def _assert_honest_inverse(result: gdla.Result, A: torch.Tensor, cond: float) -> None:
    error = _error(result.solution, torch.linalg.inv(A.double()))
    tol = default_tol(A.dtype)
    assert result.stop_reason == "converged", (result.stop_reason, result.metrics)
    assert error <= cond * tol * 10, error
    assert result.metrics["error"] == pytest.approx(error, rel=0.1, abs=10 * torch.finfo(A.dtype).eps)
    assert bool((result.solution != 0).any())


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e150, 1e-150])
@pytest.mark.parametrize("method", ["auto", "newton-schulz"])
def test_inverse_of_huge_and_tiny_matrices(scale: float, method: str) -> None:
    """Was: ``stalled, error 0`` with an all-zero inverse (×1e200), residual 1 and error NaN (×1e-200)."""
    A = WELL * scale
    _assert_honest_inverse(gdla.solve(InverseProblem(A), optimizer=method), A, 3.0)


def test_inverse_float32_times_1e25() -> None:
    """Was: every float32 scale ≥ 1e25 ended with an all-zero inverse."""
    A = (WELL * 1e25).float()
    _assert_honest_inverse(gdla.solve(InverseProblem(A)), A, 3.0)


@pytest.mark.parametrize(
    ("method", "scale", "dtype"),
    [
        ("cg", 1e-10, torch.float64),
        ("cg", 1e-14, torch.float64),
        ("auto", 1e-5, torch.float32),
        ("momentum", 1e-5, torch.float32),
    ],
)
def test_answers_do_not_depend_on_units(method: str, scale: float, dtype: torch.dtype) -> None:
    """Was: ``cg`` stalled at ×1e-10 (error 3.0) and diverged at ×1e-14; float32 ×1e-5 ended at error 0.14."""
    A = (COND20 * scale).to(dtype)
    _assert_honest_inverse(gdla.solve(InverseProblem(A), optimizer=method), A, 20.0)


def test_lbfgs_at_1e8() -> None:
    """Was: 1.2 % error at ×1e8; now it ends where the unscaled run ends (residual about the tolerance)."""
    A = COND20 * 1e8
    result = gdla.solve(InverseProblem(A), optimizer="lbfgs")
    assert _error(result.solution, torch.linalg.inv(A)) <= 20 * 1e-10 * 10
    unscaled = gdla.solve(InverseProblem(COND20 * (2.0 ** round(math.log2(1e8)))), optimizer="lbfgs")
    assert abs(result.steps - unscaled.steps) <= unscaled.steps  # same order of work, not 10× more


def test_toeplitz_target_times_1e_minus_200() -> None:
    """Was: ``converged, error 0`` with an all-zero band."""
    target = torch.randn(8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reference = ToeplitzProblem(target, bandwidth=2).reference() * 1e-200
    result = gdla.solve(ToeplitzProblem(target * 1e-200, bandwidth=2))
    assert result.stop_reason == "converged"
    assert bool((result.solution != 0).all())
    assert _error(result.solution, reference) <= 1e-8
    assert result.metrics["error"] <= 1e-8


def test_svd_times_1e_minus_200() -> None:
    """Was: error 2e-8 reported with singular values off by 1e192."""
    M = torch.rand(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 1e-200
    result = gdla.solve(SVDProblem(M))
    assert result.stop_reason == "converged"
    sigma = torch.linalg.svdvals(M)
    assert _error(result.solution[1], sigma) <= 1e-8
    assert result.metrics["error"] == pytest.approx(_error(result.solution[1], sigma), rel=0.5, abs=1e-15)


def test_sparse_tiny_data() -> None:
    example = SparseProblem.example(size=8)
    problem = SparseProblem(example.X, example.Y * 1e-200, omega=example.omega, init=example.init * 1e-200)
    result = gdla.solve(problem)
    assert result.stop_reason == "converged"
    assert _error(result.solution, example.reference() * 1e-200) <= 1e-8


def _sparse_without_init() -> SparseProblem:
    example = SparseProblem.example(size=6)
    return SparseProblem(example.X * 1e-100, example.Y * 1e-100, omega=example.omega)


@pytest.mark.parametrize(
    ("problem", "zero"),
    [
        (InverseProblem(WELL * 1e-200), lambda p: {"M": torch.zeros(6, 6, dtype=torch.float64)}),
        (
            ToeplitzProblem(torch.ones(6, 6, dtype=torch.float64) * 1e-250, bandwidth=1),
            lambda p: {"band": torch.zeros(3, dtype=torch.float64)},
        ),
        (_sparse_without_init(), lambda p: {"U": torch.zeros(6, 6, dtype=torch.float64)}),
    ],
    ids=["inverse", "toeplitz", "sparse"],
)
def test_an_all_zero_answer_is_never_converged(problem: gdla.Problem, zero) -> None:  # noqa: ANN001
    params = zero(problem)
    assert float(problem.residual(params)) >= 1.0 - 1e-12


def test_svd_zero_singular_values_give_residual_one() -> None:
    M = torch.rand(5, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 1e-250
    problem = SVDProblem(M)
    params = problem.reference_params()
    params["s"] = torch.zeros_like(params["s"])
    assert float(problem.residual(params)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("A", "dtype"), [(WELL * 1e-300, torch.float64), (WELL * 1e300, torch.float64), (WELL * 1e-36, torch.float32)]
)
def test_unrepresentable_inverse_is_refused_before_work(A: torch.Tensor, dtype: torch.dtype) -> None:
    with pytest.raises(InputError, match=r"^A: the inverse of A has entries of about 2\^-?\d+ .*(over|under)flows"):
        gdla.solve(InverseProblem(A.to(dtype)), max_steps=1)


def test_relative_norms_are_scaled_and_honest() -> None:
    reference = torch.tensor([[3e-200, 4e-200]], dtype=torch.float64)
    assert float(relative_frobenius(reference * 0.5, reference)) == pytest.approx(0.5)
    assert float(relative_frobenius(reference * 2.0**-1000, reference * 2.0**900)) == pytest.approx(2.0**-1900)
    huge = torch.tensor([3e300, 4e300], dtype=torch.float64)
    assert float(relative_norm(huge * 0.5, huge, dim=(-1,))) == pytest.approx(0.5)
    zero = torch.zeros(2, dtype=torch.float64)
    assert math.isnan(float(relative_norm(huge, zero, dim=(-1,))))  # undefined, never 0 or absolute
    assert float(relative_norm(zero, zero, dim=(-1,))) == 0.0
