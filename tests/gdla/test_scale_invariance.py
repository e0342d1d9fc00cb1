"""Scale invariance: every method behaves identically on data and on ``2^k`` times the data.

Each built-in problem is solved in normalised units (its data scaled by an exact power of two,
undone on the answer), so a solve of ``2^k · A`` must take the same steps with the same
normalised losses, bit for bit, as the solve of ``A``, and its answer must be the unscaled answer
scaled exactly. A few scales per decade group: float64 ``2^±100, 2^±300, 2^±480`` (about
``1e±30 … 1e±144``), float32 ``2^±20, 2^±44`` (about ``1e±6 … 1e±13``).
"""

from __future__ import annotations

import functools

import pytest
import torch

import gdla
from gdla.scaling import Normalization, power_of_two_scale, scale_by_power_of_two
from gdla.testing_units import same_up_to_a_power_of_two
from gdla_plugins.problems.inverse import InverseProblem
from gdla_plugins.problems.sparse import SparseProblem
from gdla_plugins.problems.svd import SVDProblem
from gdla_plugins.problems.toeplitz import ToeplitzProblem
from gdla_plugins.problems.toeplitz_net import ToeplitzNetProblem

FLOAT64_SCALES = [-480, -300, -100, 100, 300, 480]
FLOAT32_SCALES = [-44, -20, 20, 44]  # even: svd restores s = √σ with 2^(k/2)
SWEEP = [(torch.float64, k) for k in FLOAT64_SCALES] + [(torch.float32, k) for k in FLOAT32_SCALES]
STEPS = {torch.float64: 400, torch.float32: 200}


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def _matrix(dtype: torch.dtype) -> torch.Tensor:
    """A 6 × 6 matrix with singular values 1 … 3 (condition 3) whose largest entry is not a power of two."""
    return (_orthogonal(6, 1) @ torch.diag(torch.linspace(1.0, 3.0, 6, dtype=torch.float64)) @ _orthogonal(6, 2).T).to(
        dtype
    )


def _pow2(t: torch.Tensor, k: int) -> torch.Tensor:
    """``t · 2^k`` computed independently of gdla (float64 powers, exact for the scales used here)."""
    return t * torch.tensor(2.0**k, dtype=torch.float64).to(t.dtype)


def _same_run(base: gdla.Result, scaled: gdla.Result) -> None:
    assert scaled.stop_reason == base.stop_reason
    assert scaled.steps == base.steps
    # in the caller's units: the same losses bit for bit up to one exact power of two (the loss's units)
    assert same_up_to_a_power_of_two(list(scaled.losses), list(base.losses))
    assert scaled.metrics.keys() == base.metrics.keys()
    for key, value in base.metrics.items():
        assert scaled.metrics[key] == value or (value != value and scaled.metrics[key] != scaled.metrics[key])


@functools.cache
def _inverse_base(method: str, dtype: torch.dtype) -> gdla.Result:
    return gdla.solve(InverseProblem(_matrix(dtype)), optimizer=method, max_steps=STEPS[dtype], seed=3)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["newton-schulz", "cg", "lbfgs", "momentum"])
@pytest.mark.parametrize(("dtype", "k"), SWEEP)
def test_inverse_is_scale_invariant(method: str, dtype: torch.dtype, k: int) -> None:
    base = _inverse_base(method, dtype)
    scaled = gdla.solve(InverseProblem(_pow2(_matrix(dtype), k)), optimizer=method, max_steps=STEPS[dtype], seed=3)
    _same_run(base, scaled)
    assert torch.equal(scaled.solution, _pow2(base.solution, -k))  # (2^k A)⁻¹ = 2^-k A⁻¹, exactly


@functools.cache
def _svd_matrix(dtype: torch.dtype) -> torch.Tensor:
    return torch.rand(5, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64).mul(3.0).to(dtype)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("dtype", "k"), SWEEP)
def test_svd_is_scale_invariant(dtype: torch.dtype, k: int) -> None:
    M = _svd_matrix(dtype)
    base = gdla.solve(SVDProblem(M), max_steps=STEPS[dtype], seed=1)
    scaled = gdla.solve(SVDProblem(_pow2(M, k)), max_steps=STEPS[dtype], seed=1)
    _same_run(base, scaled)
    (u0, s0, v0), (u1, s1, v1) = base.solution, scaled.solution
    assert torch.equal(u1, u0) and torch.equal(v1, v0)
    assert torch.equal(s1, _pow2(s0, k))  # σ(2^k M) = 2^k σ(M)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("dtype", "k"), SWEEP)
def test_toeplitz_is_scale_invariant(dtype: torch.dtype, k: int) -> None:
    target = torch.randn(8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    base = gdla.solve(ToeplitzProblem(target, bandwidth=2), max_steps=STEPS[dtype], seed=0)
    scaled = gdla.solve(ToeplitzProblem(_pow2(target, k), bandwidth=2), max_steps=STEPS[dtype], seed=0)
    _same_run(base, scaled)
    assert torch.equal(scaled.solution, _pow2(base.solution, k))  # the best band is linear in the target


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("dtype", "k"), SWEEP)
@pytest.mark.parametrize("scaled_data", ["Y", "X"])
def test_sparse_is_scale_invariant(dtype: torch.dtype, k: int, scaled_data: str) -> None:
    """``(Y, Init) → 2^k (Y, Init)`` scales ``S`` by ``2^k``; ``X → 2^k X`` scales it by ``2^-k``."""
    example = SparseProblem.example(size=8).to(dtype=dtype)
    X, Y, init = example.X, example.Y, example.init
    base = gdla.solve(SparseProblem(X, Y, omega=example.omega, init=init), max_steps=STEPS[dtype], seed=0)
    if scaled_data == "Y":
        problem = SparseProblem(X, _pow2(Y, k), omega=example.omega, init=_pow2(init, k))
        expected = _pow2(base.solution, k)
    else:
        problem = SparseProblem(_pow2(X, k), Y, omega=example.omega, init=_pow2(init, -k))
        expected = _pow2(base.solution, -k)
    scaled = gdla.solve(problem, max_steps=STEPS[dtype], seed=0)
    _same_run(base, scaled)
    assert torch.equal(scaled.solution, expected)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [-300, 200])
def test_toeplitz_net_is_scale_invariant(normalize: bool, k: int) -> None:
    """Rows ``2^k r``: the same network steps, and the predicted bands scale by ``2^k`` exactly."""
    rows = ToeplitzNetProblem.example().rows[:32]
    base = gdla.solve(ToeplitzNetProblem(rows, hidden=8, normalize=normalize), max_steps=30, seed=0)
    scaled = gdla.solve(ToeplitzNetProblem(_pow2(rows, k), hidden=8, normalize=normalize), max_steps=30, seed=0)
    _same_run(base, scaled)
    assert torch.equal(scaled.solution, _pow2(base.solution, k))


@pytest.mark.parametrize(
    "problem",
    [
        InverseProblem(_pow2(_matrix(torch.float64), 200)),
        SVDProblem(_pow2(_svd_matrix(torch.float64), -301)),
        ToeplitzProblem(_pow2(torch.rand(6, 6, dtype=torch.float64), 77), bandwidth=1),
        SparseProblem.example(size=6),
    ],
    ids=["inverse", "svd", "toeplitz", "sparse"],
)
def test_normalization_restores_the_reference(problem: gdla.Problem) -> None:
    """Solving nothing but the normalised problem's exact reference and restoring it gives the original's."""
    norm = problem.normalized()
    assert isinstance(norm, Normalization)
    work = norm.problem
    restored = norm.restore(work.reference_params())
    for key, value in problem.reference_params().items():
        torch.testing.assert_close(restored[key].abs(), value.abs(), rtol=1e-12, atol=0.0)
    assert problem.residual(restored) < 1e-12


def test_power_of_two_helpers() -> None:
    t = torch.tensor([[3.0, -0.1], [0.0, 2.5]], dtype=torch.float64)
    assert power_of_two_scale(t) == 2  # 3 = 0.75 · 2^2
    assert power_of_two_scale(torch.zeros(3)) == 0
    assert power_of_two_scale(_pow2(t, -1000)) == -998
    for k in (-1070, -500, 0, 17, 1020):
        scaled = scale_by_power_of_two(_pow2(t, -2), k)
        assert torch.equal(scale_by_power_of_two(scaled, -k), _pow2(t, -2)) or k < -1000
    assert torch.equal(scale_by_power_of_two(torch.tensor([1.0]), 100), torch.tensor([2.0**100]))  # float32
