"""The shortcuts that keep a small solve's Python overhead low give what the long way gives.

Covered: the inverse problem's kept normalisation (reused only while ``A`` is unchanged) and kept residuals,
the summary's finiteness checks by extremes, the loss history fed a converted array, step-by-step
residuals that follow the in-place kernel steps, and a solve that frees its tensors by reference counting.
"""

from __future__ import annotations

import gc
import math
import pickle

import numpy as np
import pytest
import torch

import gdla
from gdla.report import _all_finite, _batch_status, _finite_rows
from gdla.stopping import LossHistory, StopRules, loss_array
from gdla_plugins.problems.inverse import InverseProblem


def batch(count: int = 6, seed: int = 0) -> InverseProblem:
    return InverseProblem.well_conditioned(3, batch=(count,), seed=seed, dtype=torch.float64)


# -- the inverse problem's kept answers -------------------------------------------------------------
def test_normalized_is_kept_while_A_is_unchanged_and_redone_after_an_in_place_change() -> None:
    problem = InverseProblem(torch.rand(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 24)
    first = problem.normalized()
    assert first is not None and first.exponent == 5
    assert problem.normalized() is first  # kept
    problem.A.mul_(4)  # in place: a new version of A, so the answer is computed again
    again = problem.normalized()
    assert again is not first and again.exponent == 7
    assert torch.equal(again.problem.A, torch.ldexp(problem.A, torch.tensor(-7)))


def test_a_kept_normalization_gives_the_same_solve_twice_and_still_pickles() -> None:
    problem = InverseProblem.example(side="left", dtype=torch.float32)
    problem = InverseProblem(problem.A * 3, side="left")  # a scale to remove: exponent 2
    runs = [gdla.solve(problem, optimizer="momentum", lr=0.5, max_steps=200, tol=0) for _ in range(2)]
    assert runs[0].losses == runs[1].losses and torch.equal(runs[0].solution, runs[1].solution)
    copy = pickle.loads(pickle.dumps(problem))  # the kept normalisation (its restore is a closure) is left out
    assert copy._normalization is None
    assert copy.normalized().exponent == problem.normalized().exponent == 2


# -- the summary's finiteness ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None])
def test_finiteness_by_extremes_agrees_with_isfinite(bad: float | None) -> None:
    values = torch.randn(7, 3, 3, dtype=torch.float32, generator=torch.Generator().manual_seed(2))
    if bad is not None:
        values[4, 1, 2] = bad
    assert _all_finite(values) is bool(torch.isfinite(values).all())
    assert torch.equal(_finite_rows(values.flatten(1)), torch.isfinite(values).flatten(1).all(-1))
    assert _all_finite(torch.empty(0)) is True
    assert _all_finite(torch.tensor([1, 2])) is True  # not floating: isfinite itself


def test_batch_status_marks_each_member_and_says_whether_all_is_finite() -> None:
    problem = batch()
    M = problem.reference_params()["M"].clone()
    M[1] += 1.0  # far off
    M[3, 0, 0] = math.nan  # not finite
    with torch.no_grad():
        members, status, finite = _batch_status(problem, {"M": M}, tol=1e-6)
    assert status.dtype == torch.int8 and status.tolist() == [0, 1, 0, 2, 0, 0]
    assert finite is False and members.shape == (6,)
    with torch.no_grad():
        assert _batch_status(problem, {"M": problem.reference_params()["M"]}, tol=1e-6)[2] is True
    one = InverseProblem.example()
    assert _batch_status(one, {"M": torch.full((4, 4), math.inf)}, tol=1e-6) == (None, None, False)
    # finite parameters whose residual is not finite (an overflowing product) are marked too
    problem.member_residuals = lambda params: torch.tensor([0.0, math.nan, 1e-9, math.inf, 2.0, 0.0])
    members, status, finite = _batch_status(problem, problem.reference_params(), tol=1e-6)
    assert status.tolist() == [0, 2, 0, 2, 1, 0] and finite is True


# -- the loss history -------------------------------------------------------------------------------
def test_losses_converted_once_give_the_same_history_and_stop() -> None:
    losses = torch.tensor([2.0, 1.0, 0.5, math.inf, 3.0], dtype=torch.float64)
    values = loss_array(losses)
    assert isinstance(values, np.ndarray) and values.dtype == np.float64 and loss_array(values) is values
    assert StopRules(0, 10).on_bulk(values) == StopRules(0, 10).on_bulk(losses) == 4
    from_tensor, from_array = LossHistory(), LossHistory()
    from_tensor.extend(losses.float())
    from_array.extend(loss_array(losses.float())[:3])
    assert from_tensor.to_list()[:3] == from_array.to_list() == [2.0, 1.0, 0.5]


def test_step_by_step_residuals_follow_the_kernel_steps() -> None:
    """The seed notebook's diagonal matrix converges under a tolerance (each step's residual is fresh)."""
    problem = InverseProblem.example(kind="diagonal", side="left")
    result = gdla.solve(problem, optimizer="momentum", lr=0.9, momentum=0.9, max_steps=1000)
    assert result.stop_reason == "converged" and result.metrics["residual"] <= 1e-10


def test_a_deferred_metric_refuses_data_changed_in_place_after_the_solve() -> None:
    """The error against the reference belongs to the data solved: a caller's in-place change is refused."""
    A = torch.eye(4, dtype=torch.float64) * 0.75 + 0.01 * torch.arange(16, dtype=torch.float64).reshape(4, 4) / 16
    result = gdla.solve(gdla.get_problem("inverse")(A), optimizer="newton-schulz")
    kept = gdla.solve(gdla.get_problem("inverse")(A.clone()), optimizer="newton-schulz")
    assert "error" in result.metrics.pending
    A.copy_(torch.zeros(4, 4, dtype=torch.float64))  # now singular: the old answer's "error" would be nonsense
    with pytest.raises(gdla.InputError, match="changed in place since the solve"):
        result.metrics["error"]
    assert kept.metrics["error"] <= 1e-12  # untouched data reads as before


def test_data_changed_in_place_before_the_solve_is_solved_as_it_is_now() -> None:
    """What the constructor derived (condition, scale) would describe the old data: the plan rebuilds, and says so."""
    A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    problem = gdla.get_problem("inverse")(A)
    untouched = gdla.solve(problem, optimizer="newton-schulz")
    assert untouched.warnings == [] and untouched.condition == pytest.approx(2.618033988749895)
    A.copy_(torch.tensor([[4.0, 0.0], [0.0, 1e-6]], dtype=torch.float64))  # the caller's tensor, changed in place
    result = gdla.solve(problem, optimizer="newton-schulz")
    assert result.warnings == [
        "A changed in place since problem 'inverse' was built: solved as rebuilt from the current data"
    ]
    assert result.condition == pytest.approx(4e6) and result.stop_reason == "converged"
    torch.testing.assert_close(result.solution, torch.linalg.inv(A), rtol=1e-12, atol=0)


def test_the_callback_and_the_losses_are_in_the_callers_units() -> None:
    """gdla solves in normalised units; what the caller sees (callback, Result.losses) is in the data's units."""
    base = gdla.get_problem("toeplitz").example()
    target = base._constructor_arguments["target"]
    runs = []
    for k in (0, 40):
        seen: list[tuple[float, torch.Tensor]] = []
        problem = base.rebuild(target=target * 2.0**k)

        def record(step: int, loss: float, params: dict[str, torch.Tensor], seen: list = seen) -> None:
            seen.append((loss, next(iter(params.values())).clone()))

        result = gdla.solve(problem, optimizer="adam", max_steps=5, tol=0, callback=record)
        assert [loss for loss, _ in seen] == result.losses[:-1]
        assert result.losses[-1] == float(problem.loss(result.params))  # the last entry: the loss at the answer
        runs.append((seen, result))
    (seen0, result0), (seen40, result40) = runs
    # the band parameters scale with the data and the loss with its square: exactly, by powers of two
    assert [loss * 2.0**80 for loss in result0.losses] == result40.losses
    for (_, p0), (_, p40) in zip(seen0, seen40, strict=True):
        assert torch.equal(p0 * 2.0**40, p40)


# -- memory freed as soon as it is no longer used ---------------------------------------------------
def test_a_solve_leaves_no_tensor_or_gdla_object_to_the_cyclic_collector() -> None:
    # a reference cycle (an optimizer keeping a closure over itself) would hold the iterate until Python's
    # collector ran: fresh memory, and page faults, for the next solve of a large batch
    problem = batch(count=40)
    methods = ["auto", "newton-schulz", "sgd", "momentum", "adam", "lbfgs", "cg"]
    for optimizer in methods:  # first-call caches are not what is looked for
        gdla.solve(problem, optimizer=optimizer, max_steps=5, tol=0)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for optimizer in methods:  # one collection for all: each walks torch's whole heap
            result = gdla.solve(problem, optimizer=optimizer, max_steps=5, tol=0)
            assert math.isfinite(result.metrics["residual"]) and len(result.losses) == result.steps + 1
            del result
        gc.collect()
        cyclic = [
            type(obj).__name__ for obj in gc.garbage
            if isinstance(obj, torch.Tensor) or type(obj).__module__.split(".")[0] in ("gdla", "gdla_plugins")
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert cyclic == []


def test_kept_residuals_follow_the_answer_and_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")
    calls = []
    kernel = ops.small_inverse_residuals
    monkeypatch.setattr(ops, "small_inverse_residuals", lambda *args: calls.append(1) or kernel(*args))
    problem = batch()
    M = torch.linalg.inv(problem.A) * 1.001
    first = problem.member_residuals({"M": M})
    torch.testing.assert_close(problem.residual({"M": M}), first.max())  # the same answer: the figures kept
    assert torch.equal(problem.member_residuals({"M": M}), first) and len(calls) == 1
    M.mul_(1.001)  # the answer changed in place: computed again
    again = problem.member_residuals({"M": M})
    assert len(calls) == 2 and bool((again > first).all())
    problem.member_residuals({"M": M.clone()})  # another tensor, even with the same values: computed
    assert len(calls) == 3
    problem.A.mul_(2.0)  # the data changed in place: computed again, for the data as it is now
    changed = problem.member_residuals({"M": M})
    assert len(calls) == 4 and not torch.equal(changed, again)
    pickle.loads(pickle.dumps(problem)).member_residuals({"M": M})  # a copy keeps nothing
    assert len(calls) == 5
