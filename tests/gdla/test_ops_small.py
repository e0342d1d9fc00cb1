"""The batched tiny-matrix kernels (``gdla.ops_small``: Newton-Schulz and momentum on many small matrices, their
residuals) against torch. Every test runs on "cpu" and on "cuda" (skipped without a GPU or CUDA kernels)."""

from __future__ import annotations

import pytest
import torch

from gdla.errors import InputError, ShapeError

ops = pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")

CUDA_READY = torch.cuda.is_available() and ops.has_cuda_kernels()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA device")]),
]
DTYPES = [torch.float32, torch.float64]


def eye_like(P: torch.Tensor) -> torch.Tensor:
    return torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)


# -- batched tiny inverses ------------------------------------------------------------------------
def well_conditioned(batch: int, n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Random matrices with singular values in [0.5, 2] (condition number <= 4)."""
    Q1 = torch.linalg.qr(torch.randn(batch, n, n, dtype=torch.float64)).Q
    Q2 = torch.linalg.qr(torch.randn(batch, n, n, dtype=torch.float64)).Q
    sigma = torch.empty(batch, n, dtype=torch.float64).uniform_(0.5, 2.0)
    return ((Q1 * sigma.unsqueeze(-2)) @ Q2).to(dtype=dtype, device=device)


def residual(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``||A X - I||_F / sqrt(n)`` per problem, evaluated in float64."""
    R = A.double() @ X.double() - eye_like(A.double())
    return torch.linalg.matrix_norm(R) / A.shape[-1] ** 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 16])
def test_newton_schulz_inverts_every_problem(device, n) -> None:
    A = well_conditioned(37, n, torch.float64, device)  # 37: not a multiple of any SIMD group
    X, steps = ops.small_inverse_newton_schulz(A, None, 100, 1e-12)
    assert steps.shape == (37,) and steps.dtype == torch.int64
    assert float(residual(A, X).max()) <= 1e-12
    torch.testing.assert_close(X, torch.linalg.inv(A), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("n", [1, 3, 4, 8, 9, 16])
def test_small_inverse_residuals_are_the_norms_of_p_minus_i(device, dtype, side, n) -> None:
    g = torch.Generator().manual_seed(n)
    A = torch.randn(37, n, n, generator=g, dtype=torch.float64)  # 37: not a multiple of any SIMD group
    X = torch.randn(37, n, n, generator=g, dtype=torch.float64) * 0.3 + torch.linalg.inv(A)
    A, X = A.to(dtype=dtype, device=device), X.to(dtype=dtype, device=device)
    P = (A.double() @ X.double()) if side == "right" else (X.double() @ A.double())
    expected = torch.linalg.matrix_norm(P - eye_like(P))  # from the same entries, in float64
    got = ops.small_inverse_residuals(A, X, side)
    assert got.shape == (37,) and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=1e-7 if dtype == torch.float32 else 1e-12, atol=0)
    one = ops.small_inverse_residuals(A[5], X[5], side)  # one matrix: a 0-dim result, the same value
    assert one.shape == () and float(one) == float(got[5])
    # the same bits whether a matrix shares SIMD lanes with others (n = 4, 8) or goes alone (the batch's tail, one)
    alone = [float(ops.small_inverse_residuals(A[i], X[i], side)) for i in (0, 3, 4, 35, 36)]
    assert alone == got[[0, 3, 4, 35, 36]].tolist()


def test_small_inverse_residuals_bad_arguments_name_the_argument() -> None:
    A = well_conditioned(3, 4, torch.float32, "cpu")
    with pytest.raises(InputError, match="small_inverse_residuals: side must be 'right' or 'left'"):
        ops.small_inverse_residuals(A, A, "both")
    with pytest.raises(ShapeError, match="X"):
        ops.small_inverse_residuals(A, A[:2], "right")
    with pytest.raises(ShapeError, match="n <= 16"):
        ops.small_inverse_residuals(torch.rand(17, 17), torch.rand(17, 17), "right")


@pytest.mark.parametrize("simd_bytes", ["32", "64"])
def test_newton_schulz_cpu_simd_paths_agree(monkeypatch, simd_bytes) -> None:
    """The CPU kernel solves 2-16 problems per SIMD group; each width must give the same answers."""
    A = well_conditioned(53, 4, torch.float64, "cpu")
    monkeypatch.setenv("GDLA_CPU_SIMD_BYTES", "16")  # caps the vector width the kernel picks
    X16, steps16 = ops.small_inverse_newton_schulz(A, None, 50, 1e-10)
    monkeypatch.setenv("GDLA_CPU_SIMD_BYTES", simd_bytes)
    X, steps = ops.small_inverse_newton_schulz(A, None, 50, 1e-10)
    assert torch.equal(steps, steps16)
    torch.testing.assert_close(X, X16, rtol=1e-13, atol=1e-14)
    single = [ops.small_inverse_newton_schulz(A[i : i + 1], None, 50, 1e-10) for i in (0, 17, 52)]
    for i, (X_i, steps_i) in zip((0, 17, 52), single, strict=True):  # a lane does not depend on its neighbours
        assert int(steps_i) == int(steps[i])
        torch.testing.assert_close(X_i[0], X[i], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("simd_bytes", ["16", "64"])
def test_newton_schulz_float32_meets_tol_in_float64(monkeypatch, device, simd_bytes) -> None:
    """A float32 problem's pass is confirmed in double: the X returned meets tol exactly."""
    monkeypatch.setenv("GDLA_CPU_SIMD_BYTES", simd_bytes)
    A = well_conditioned(2000, 4, torch.float32, device)
    X, steps = ops.small_inverse_newton_schulz(A, None, 50, 1e-6)
    assert int(steps.max()) < 50 and float(residual(A, X).max()) <= 1e-6
    A9 = well_conditioned(200, 9, torch.float32, device)  # the one-problem-at-a-time path
    assert float(residual(A9, ops.small_inverse_newton_schulz(A9, None, 50, 1e-6)[0]).max()) <= 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_newton_schulz_stops_each_problem_on_its_own(device, dtype) -> None:
    diagonals = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [1.0, 10.0, 100.0]], dtype=dtype, device=device)
    A = torch.diag_embed(diagonals)
    X, steps = ops.small_inverse_newton_schulz(A.reshape(3, 1, 3, 3), None, 60, 1e-5)
    assert steps.shape == (3, 1)
    assert steps[0, 0] == 0  # A = I: the safe start X0 = I is already exact
    assert 0 < steps[1, 0] < steps[2, 0] < 60  # the ill-conditioned one needs the most updates
    assert float(residual(A, X.reshape(3, 3, 3)).max()) <= 1e-5 * (1.01 if dtype == torch.float64 else 1.5)


@pytest.mark.parametrize("device", DEVICES)
def test_newton_schulz_respects_max_steps_and_singular_input(device) -> None:
    A = torch.stack([torch.eye(2), torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [1.0, 1.0]])]).double().to(device)
    X0 = torch.full_like(A, 0.1)
    X, steps = ops.small_inverse_newton_schulz(A, X0, 0, 1e-8)
    assert steps.tolist() == [0, 0, 0] and torch.equal(X, X0)
    X, steps = ops.small_inverse_newton_schulz(A, None, 25, 1e-8)
    assert steps[0] == 0 and steps[2] == 25  # a singular problem runs out of steps, it does not hang
    # zero matrix: a zero safe start, on which it stays, reported like the singular one (not NaN after 0 steps)
    assert torch.equal(X[1], torch.zeros(2, 2, dtype=A.dtype, device=device)) and steps[1] == 25


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [3, 4, 11])
def test_momentum_matches_the_torch_iteration(device, n) -> None:
    A = well_conditioned(6, n, torch.float64, device)
    X0 = torch.zeros_like(A)
    X = ops.small_inverse_momentum(A, X0, 0.3, 0.8, 40)
    expected, buf, eye = X0.clone(), torch.zeros_like(A), eye_like(A)
    for _ in range(40):
        buf = 0.8 * buf + (2.0 / n**2) * A.mT @ (A @ expected - eye)
        expected = expected - 0.3 * buf
    torch.testing.assert_close(X, expected, rtol=1e-11, atol=1e-12)
