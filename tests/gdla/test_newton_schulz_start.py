"""The Newton-Schulz safe start ``Aᵀ / (‖A‖₁‖A‖_∞)``: one rule per language, scaled and zero-safe.

Float32 matrices of size 1e19 and 1e-19 (whose ``‖A‖₁‖A‖_∞`` overflows or underflows in float32)
and a zero member go through every entry point: :func:`batched_inverse` (kernel and PyTorch
paths), the op ``small_inverse_newton_schulz`` (its own start and a given one) and
:func:`gdla.solve` (fused and autograd backends).
"""

from __future__ import annotations

import pytest
import torch

import gdla
from gdla.capabilities import MatrixInverse
from gdla.errors import SingularMatrixError
from gdla_plugins.optimizers.newton_schulz import _ops_function, batched_inverse, safe_start

KERNEL = _ops_function("small_inverse_newton_schulz") is not None
needs_kernel = pytest.mark.skipif(not KERNEL, reason="needs the compiled extension gdla._C")
SCALES = [1e19, 1e-19]
SIZES = [4, 12]  # 4: the CPU's SIMD-lane solver; 12: the per-problem solver with a runtime bound


def benign(n: int, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """A batch of well-conditioned n x n float64 matrices."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, n, generator=generator, dtype=torch.float64) + 2 * n**0.5 * torch.eye(n)


def inverse_error(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``‖X − A⁻¹‖_F / ‖A⁻¹‖_F`` per matrix, the reference computed in float64."""
    reference = torch.linalg.inv(A.double())
    return torch.linalg.matrix_norm(X.double() - reference) / torch.linalg.matrix_norm(reference)


def dyadic(n: int, batch: int = 5, seed: int = 1) -> torch.Tensor:
    """Matrices of quarters in [-2, 2): every norm sums exactly, in any order and either dtype."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 8, (batch, n, n), generator=generator).double() / 4 + 3 * torch.eye(n)


def product_start(A: torch.Tensor) -> torch.Tensor:
    """The start as the kernels computed it before: ``Aᵀ · (1 / (‖A‖₁‖A‖_∞))`` in ``A``'s dtype."""
    magnitude = A.abs()
    norms = magnitude.sum(-2).amax(-1) * magnitude.sum(-1).amax(-1)
    return A.mT * (1 / norms)[..., None, None]


# -- the rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", SCALES)
def test_python_start_scales_without_overflow(scale: float) -> None:
    A = benign(4).float()
    start = MatrixInverse(A * scale).safe_start()
    assert bool(torch.isfinite(start).all())
    assert torch.allclose(start * scale, MatrixInverse(A).safe_start(), rtol=1e-5)


def test_python_start_of_a_zero_member_is_zero() -> None:
    A = benign(4).float()
    A[1] = 0
    start = safe_start(A)
    assert bool((start[1] == 0).all()) and bool(torch.isfinite(start).all())
    assert torch.equal(start[0], MatrixInverse(A[0]).safe_start())


@needs_kernel
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_start_has_the_bits_of_the_product_rule_where_it_did_not_overflow(n: int, dtype: torch.dtype) -> None:
    A = dyadic(n).to(dtype)
    X, steps = gdla.ops.small_inverse_newton_schulz(A, None, 0, 0.0)  # no update: X is the start
    assert torch.equal(steps, torch.zeros(5, dtype=torch.long))
    assert torch.equal(X, product_start(A))


@needs_kernel
@pytest.mark.parametrize("n", SIZES)
# 2^63 ≈ 1e19: ‖A‖₁‖A‖_∞ overflows float32; 2^-63: it fits; 2^-70: it underflows
@pytest.mark.parametrize("power", [63, -63, -70])
def test_kernel_start_scales_exactly_by_a_power_of_two(n: int, power: int) -> None:
    A = dyadic(n).float()
    X, _ = gdla.ops.small_inverse_newton_schulz(A * 2.0**power, None, 0, 0.0)
    assert bool(torch.isfinite(X).all())
    assert torch.equal(X, product_start(A) * 2.0**-power)


@needs_kernel
@pytest.mark.parametrize("n", SIZES)
def test_kernel_start_agrees_with_the_python_rule(n: int) -> None:
    A = benign(n)
    X, _ = gdla.ops.small_inverse_newton_schulz(A, None, 0, 0.0)
    assert torch.allclose(X, safe_start(A), rtol=1e-14, atol=0)


# -- every entry point ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["fused", "autograd"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("scale", SCALES)
def test_batched_inverse_of_scaled_float32(backend: str, n: int, scale: float) -> None:
    if backend == "fused" and not KERNEL:
        pytest.skip("needs the compiled extension gdla._C")
    A = (benign(n) * scale).float()
    X, steps = batched_inverse(A, tol=1e-5, backend=backend)
    assert bool((steps < 100).all()), steps
    assert float(inverse_error(A, X).max()) <= 1e-4


@pytest.mark.parametrize("backend", ["fused", "autograd"])
@pytest.mark.parametrize("n", SIZES)
def test_batched_inverse_reports_a_zero_member_not_converged(backend: str, n: int) -> None:
    if backend == "fused" and not KERNEL:
        pytest.skip("needs the compiled extension gdla._C")
    A = benign(n).float()
    A[1] = 0
    X, steps = batched_inverse(A, tol=1e-5, max_steps=40, backend=backend)
    assert bool(torch.isfinite(X).all())
    assert int(steps[1]) == 40 and bool((X[1] == 0).all())  # never converged, stayed at its zero start
    assert bool((steps[[0, 2]] < 40).all())
    assert float(inverse_error(A[[0, 2]], X[[0, 2]]).max()) <= 1e-4


@needs_kernel
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("given", [False, True], ids=["kernel-start", "python-start"])
def test_small_inverse_newton_schulz_of_scaled_float32(n: int, scale: float, given: bool) -> None:
    A = (benign(n) * scale).float()
    X0 = safe_start(A) if given else None
    X, steps = gdla.ops.small_inverse_newton_schulz(A, X0, 100, 1e-5)
    assert bool((steps < 100).all()), steps
    assert float(inverse_error(A, X).max()) <= 1e-4


@needs_kernel
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("given", [False, True], ids=["kernel-start", "python-start"])
def test_small_inverse_newton_schulz_zero_member(n: int, given: bool) -> None:
    A = benign(n).float()
    A[0] = 0
    X, steps = gdla.ops.small_inverse_newton_schulz(A, safe_start(A) if given else None, 30, 1e-5)
    assert bool(torch.isfinite(X).all())
    assert int(steps[0]) == 30 and bool((X[0] == 0).all())
    assert float(inverse_error(A[1:], X[1:]).max()) <= 1e-4


@pytest.mark.parametrize("backend", ["fused", "autograd"])
@pytest.mark.parametrize("scale", SCALES)
def test_solve_of_scaled_float32(backend: str, scale: float) -> None:
    if backend == "fused" and not KERNEL:
        pytest.skip("needs the compiled extension gdla._C")
    A = (benign(4) * scale).float()
    result = gdla.solve(gdla.get_problem("inverse")(A), optimizer="newton-schulz", backend=backend)
    assert result.converged, result.summary()
    assert float(inverse_error(A, result.solution).max()) <= 1e-4


def test_solve_refuses_a_zero_member_naming_it() -> None:
    A = benign(4).float()
    A[1] = 0
    with pytest.raises(SingularMatrixError, match=r"at batch index \(1,\)"):
        gdla.get_problem("inverse")(A)
