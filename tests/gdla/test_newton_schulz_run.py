"""Newton-Schulz's whole run in one kernel (``gdla.ops.small_inverse_newton_schulz_run``) and the set-up it spares.

The kernel against float64 products, a whole run against the same kernel one step a call (bit for bit), the
solve's fused run against its step-by-step run and the PyTorch iteration; no random start drawn for a method that
computes its own; the loss at the answer computed only when ``Result.losses`` is read.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.library import opcheck

import gdla
from gdla_plugins.problems.inverse import InverseProblem

ops = pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")


def _batch(n: int, count: int, dtype: torch.dtype, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(count, n, n, generator=generator, dtype=torch.float64)
            / math.sqrt(n)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 3, 4, 8])
def test_a_whole_run_is_its_steps_one_call_each_and_measures_in_float64(n: int, dtype: torch.dtype) -> None:
    A = _batch(n, 37, dtype)  # 37: padding lanes in the last group
    X = torch.zeros_like(A)
    losses, residuals, final = ops.small_inverse_newton_schulz_run(A, X, 40, tol=1e-5, safe_start=True)
    assert 1 <= len(losses) < 40 and residuals[-1] <= 1e-5  # stopped where the residual passed, not before
    assert all(residual > 1e-5 for residual in residuals[:-1])
    stepped, first = torch.zeros_like(A), math.nan
    for step in range(len(losses)):
        loss, residual, _ = ops.small_inverse_newton_schulz_run(A, stepped, 1, tol=1e-5, first_loss=first,
                                                                safe_start=step == 0)
        first = float(losses[0])
        assert float(loss[0]) == float(losses[step]) and float(residual[0]) == float(residuals[step])
    assert torch.equal(stepped, X)
    eye = torch.eye(n, dtype=torch.float64)
    error = A.double() @ X.double() - eye
    assert float(torch.linalg.matrix_norm(error).max()) / math.sqrt(n) == pytest.approx(float(residuals[-1]),
                                                                                         rel=1e-6)
    assert final == pytest.approx(float(error.square().mean((-2, -1)).sum()), rel=1e-6)
    start = ops.small_inverse_newton_schulz(A, None, 0, 0.0)[0]  # the kernels' one safe start
    zero_steps = torch.zeros_like(A)
    ops.small_inverse_newton_schulz_run(A, zero_steps, 0, safe_start=True)
    assert torch.equal(zero_steps, start)
    first_loss = (A.double() @ start.double() - eye).square().mean((-2, -1)).sum()
    assert float(losses[0]) == pytest.approx(float(first_loss), rel=1e-6)


def test_float32_steps_equal_the_per_member_kernel_and_a_diverging_run_stops() -> None:
    A = _batch(4, 20, torch.float32)
    X = ops.small_inverse_newton_schulz(A, None, 0, 0.0)[0]
    stepped = X.clone()
    ops.small_inverse_newton_schulz_run(A, X, 5)  # tol = 0: all five steps
    for _ in range(5):
        stepped = ops.small_inverse_newton_schulz(A, stepped, 1, 0.0)[0]
    assert torch.equal(X, stepped)
    far = torch.full_like(A, 10.0)  # ‖I − A X₀‖ > 1: the iteration blows up
    losses, residuals, final = ops.small_inverse_newton_schulz_run(A, far, 100, tol=1e-6, blow_up=1e12)
    assert len(losses) < 10 and (not math.isfinite(losses[-1]) or losses[-1] > 1e12 * losses[0])
    assert len(residuals) == len(losses)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_zero_step_run_stores_x_back_unchanged_and_measures_it(dtype: torch.dtype) -> None:
    # 67 members: full groups of every lane count and a partial last one; n = 3, 5: groups read in overlapping tiles
    for n in range(1, 9):
        A = _batch(n, 67, dtype, seed=n)
        X = torch.randn(67, n, n, generator=torch.Generator().manual_seed(n), dtype=dtype)
        given = X.clone()
        losses, residuals, final = ops.small_inverse_newton_schulz_run(A, X, 0, safe_start=False)
        assert len(losses) == 0 and len(residuals) == 0
        assert torch.equal(X.view(-1).view(torch.int32 if dtype == torch.float32 else torch.int64),
                           given.view(-1).view(torch.int32 if dtype == torch.float32 else torch.int64))
        error = A.double() @ given.double() - torch.eye(n, dtype=torch.float64)
        assert final == pytest.approx(float(error.square().mean((-2, -1)).sum()), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_groups_that_pass_at_different_steps_stop_together_at_any_thread_count(dtype: torch.dtype) -> None:
    A = _batch(4, 403, dtype, seed=11)  # enough for both threads to run
    slow = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64))[0]
    for member, spread in ((0, -2), (200, -3), (402, -4)):  # the first group, one in the middle, the partial last one
        A[member] = (slow * torch.logspace(0, spread, 4, dtype=torch.float64)) @ slow.T
    runs = []
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            X = torch.zeros_like(A)
            runs.append((ops.small_inverse_newton_schulz_run(A, X, 200, tol=1e-4, safe_start=True), X))
        finally:
            torch.set_num_threads(previous)
    (losses, residuals, final), X = runs[0]
    assert torch.equal(losses, runs[1][0][0]) and torch.equal(residuals, runs[1][0][1]) and final == runs[1][0][2]
    assert torch.equal(X, runs[1][1])
    assert residuals[-1] <= 1e-4 and all(residual > 1e-4 for residual in residuals[:-1])
    stepped, first = torch.zeros_like(A), math.nan
    for step in range(len(losses)):  # one step a call: every group stands at the same step after each
        loss, residual, _ = ops.small_inverse_newton_schulz_run(A, stepped, 1, tol=1e-4, first_loss=first,
                                                                safe_start=step == 0)
        first = float(losses[0])
        assert float(loss[0]) == float(losses[step]) and float(residual[0]) == float(residuals[step])
    assert torch.equal(stepped, X)
    error = A.double() @ X.double() - torch.eye(4, dtype=torch.float64)
    assert float(torch.linalg.matrix_norm(error).max()) / 2 == pytest.approx(float(residuals[-1]), rel=1e-6)


def test_the_op_is_registered_as_a_custom_op() -> None:
    A = _batch(3, 5, torch.float64)
    opcheck(torch.ops.gdla.small_inverse_newton_schulz_run.default, (A, A.mT.contiguous(), 6, 1e-8, math.nan, 1e12,
                                                                      True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_solve_runs_in_bulk_as_step_by_step_and_as_pytorch(dtype: torch.dtype) -> None:
    problem = InverseProblem.well_conditioned(4, batch=(300,), seed=5, dtype=dtype)
    bulk = gdla.solve(problem)  # auto: newton-schulz, the whole-run kernel
    assert bulk.settings["optimizer.method"] == "newton-schulz" and bulk.settings["optimizer.fused_kernel"] is True
    assert bulk.converged and bulk.metrics["residual"] <= bulk.settings["tol"] * (1 + 1e-6)
    watched = gdla.solve(problem, callback=lambda step, loss, params: None)  # one step a call
    assert torch.equal(watched.solution, bulk.solution) and watched.losses == bulk.losses
    plain = gdla.solve(problem, optimizer="newton-schulz", backend="autograd")
    assert plain.steps == bulk.steps
    assert torch.allclose(plain.solution, bulk.solution, rtol=1e-4 if dtype == torch.float32 else 1e-10)
    assert bulk.losses[:-1] == pytest.approx(plain.losses[:-1], rel=1e-4 if dtype == torch.float32 else 1e-10)
    at_answer = float(problem.loss({"M": bulk.solution}).double())
    assert bulk.losses[-1] == pytest.approx(at_answer, rel=1e-3, abs=1e-12)


def test_newton_schulz_draws_no_start_it_would_overwrite(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = InverseProblem.well_conditioned(4, batch=(10,), dtype=torch.float64)
    drawn: list[int] = []
    original = InverseProblem.init_params
    monkeypatch.setattr(InverseProblem, "init_params", lambda self, g: drawn.append(1) or original(self, g))
    gdla.solve(problem, optimizer="newton-schulz")
    assert drawn == []
    gdla.solve(problem, optimizer="newton-schulz", start="init")  # it starts from the problem's start: drawn
    gdla.solve(problem, optimizer="momentum", max_steps=3, tol=0)
    assert drawn == [1, 1]


def test_the_loss_at_the_answer_is_computed_when_first_read(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = InverseProblem.well_conditioned(16, dtype=torch.float64)
    result = gdla.solve(problem, optimizer="sgd", max_steps=4, tol=0)
    calls: list[int] = []
    original = InverseProblem.loss
    monkeypatch.setattr(InverseProblem, "loss", lambda self, p: calls.append(1) or original(self, p))
    assert len(result.losses) == 5 and calls == []  # the length is known without it
    expected = float(original(problem, result.params))
    last = result.losses[-1]
    assert calls == [1] and last == pytest.approx(expected, rel=1e-12)
    assert result.losses[-1] == last and list(result.losses)[-1] == last and calls == [1]  # computed once
    unread = gdla.solve(InverseProblem(0.75 * torch.eye(4, dtype=torch.float64)), optimizer="sgd", max_steps=2, tol=0)
    unread.params["M"].add_(1.0)  # solved as given: the answer the loss would be computed at, changed
    with pytest.raises(gdla.InputError, match=r"losses: expected the data that was solved.*the answer's 'M' changed"):
        unread.losses[-1]
