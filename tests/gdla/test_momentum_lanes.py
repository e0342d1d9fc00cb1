"""The AVX2 momentum lane kernel (``csrc/cpu_momentum_lanes.h``) through ``gdla.ops.inverse_momentum_run``: a batch
of 2 or more problems runs one problem a SIMD lane. Its roundings are written out, so the guarantees are these: a run
of n steps in one call gives the bits of n calls of one step at any thread count, and each problem agrees with the
one-problem kernel to a few units in the last place."""

from __future__ import annotations

import math

import pytest
import torch

from tests.gdla.test_ops_threads import at_threads

ops = pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")


LANE_SIZES = [1, 2, 3, 4, 5, 8]
LANE_BATCHES = [3, 13, 300]  # no multiple of 8: every run has padding lanes; 300 runs as two tasks, on two threads


def lane_state(batch: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Problems near the identity (some far from it), a start short of the inverse and a nonzero buf."""
    g = torch.Generator().manual_seed(batch * 10 + n)
    A = torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    A[::5] *= 1.7  # a few problems further from the identity
    X = 0.8 * A.mT / (torch.linalg.matrix_norm(A, 1) * torch.linalg.matrix_norm(A, math.inf))[..., None, None]
    buf = 0.01 * torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype).contiguous() for t in (A, X, buf))  # type: ignore[return-value]


def lane_rate(side: str, n: int) -> float:
    """A rate at which every problem of lane_state converges (n = 1: the loss's curvature is 2 a^2, up to ~12)."""
    return 0.1 if n == 1 else (0.3 if side == "both" else 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", ["right", "left", "both"])
@pytest.mark.parametrize("n", LANE_SIZES)
@pytest.mark.parametrize("batch", LANE_BATCHES)
def test_lane_run_equals_one_step_calls_bitwise_at_any_thread_count(dtype, side, n, batch) -> None:
    # gdla.solve's step-by-step path calls the op with steps=1: a run of 12 steps in one call must give the same
    # bits (losses, X, buf) as 12 calls of one step, whether buf has started or not, and at 1 and 2 threads
    A, X0, buf0 = lane_state(batch, n, dtype)
    lr = lane_rate(side, n)
    steps = 12
    results = {}
    for started in (False, True):
        for threads in (1, 2):
            def whole(started=started):
                X, buf = X0.clone(), buf0.clone()
                return ops.inverse_momentum_run(A, X, buf, side, lr, 0.9, steps, started=started), X, buf

            def one_at_a_time(started=started):
                X, buf = X0.clone(), buf0.clone()
                losses = [ops.inverse_momentum_run(A, X, buf, side, lr, 0.9, 1, started=started or step > 0)
                          for step in range(steps)]
                return torch.cat(losses), X, buf

            results[started, threads] = at_threads(threads, whole)
            stepped = at_threads(threads, one_at_a_time)
            for got, expected in zip(stepped, results[started, threads], strict=True):
                assert torch.equal(got, expected), (started, threads)
        for got, expected in zip(results[started, 1], results[started, 2], strict=True):
            assert torch.equal(got, expected), started
    # started=True on a zero buf is the same rule as started=False (momentum 0 buf + g = g exactly)
    zero = torch.zeros_like(buf0)
    cold = ops.inverse_momentum_run(A, X_cold := X0.clone(), buf_cold := zero.clone(), side, lr, 0.9, 3,
                                    started=False)
    warm = ops.inverse_momentum_run(A, X_warm := X0.clone(), buf_warm := zero.clone(), side, lr, 0.9, 3,
                                    started=True)
    assert torch.equal(cold, warm) and torch.equal(X_cold, X_warm) and torch.equal(buf_cold, buf_warm)


# The lane kernel against one problem at a time (batch 1: small::MomentumProblem, or the 4x4 float32 two-vector
# kernel), over a few steps: they differ only in how each sum of products is rounded (a few units in the last place
# a step), so a tight tolerance.
LANE_TOL = {torch.float32: {"rtol": 2e-6, "atol": 2e-7}, torch.float64: {"rtol": 4e-15, "atol": 2e-15}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", ["right", "left", "both"])
@pytest.mark.parametrize("n", LANE_SIZES)
@pytest.mark.parametrize("started", [False, True])
def test_lane_kernel_matches_one_problem_at_a_time(dtype, side, n, started) -> None:
    A, X0, buf0 = lane_state(13, n, dtype)
    lr, steps = lane_rate(side, n), 4
    X, buf = X0.clone(), buf0.clone()
    losses = ops.inverse_momentum_run(A, X, buf, side, lr, 0.9, steps, started=started)
    single_losses = torch.zeros(steps, dtype=torch.float64)
    for p in range(A.shape[0]):
        Xp, bufp = X0[p].clone(), buf0[p].clone()
        single_losses += ops.inverse_momentum_run(A[p], Xp, bufp, side, lr, 0.9, steps, started=started)
        torch.testing.assert_close(X[p], Xp, **LANE_TOL[dtype])
        torch.testing.assert_close(buf[p], bufp, **LANE_TOL[dtype])
    torch.testing.assert_close(losses, single_losses, rtol=LANE_TOL[dtype]["rtol"], atol=0.0)
    assert float(losses[-1]) < float(losses[0])  # a run that went somewhere
