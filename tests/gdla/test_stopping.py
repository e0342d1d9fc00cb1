"""The stop rules and the packed loss history, on their own."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from gdla.stopping import (
    MAX_PATIENCE,
    SHORT_STRETCH,
    Losses,
    LossHistory,
    StopRules,
    default_patience,
    default_tol,
)


def test_default_tol_per_dtype() -> None:
    assert default_tol(torch.float64) == 1e-10 and default_tol(torch.float32) == 1e-5


def test_default_patience_is_a_tenth_of_the_budget_within_bounds() -> None:
    assert default_patience(10) == 100
    assert default_patience(50_000) == 5_000
    assert default_patience(10**12) == MAX_PATIENCE == 10_000


def test_divergence_on_non_finite_or_blown_up_loss() -> None:
    rules = StopRules(tol=1e-8, patience=5)
    assert rules.on_loss(1, 1.0) is None
    assert rules.on_loss(2, 1e11) is None
    assert rules.on_loss(3, 2e12) == "diverged"
    assert StopRules(1e-8, 5).on_loss(1, math.nan) == "diverged"


def test_convergence_and_stall() -> None:
    rules = StopRules(tol=1e-3, patience=3)
    assert rules.on_residual(1, 1.0, 0.5) is None
    assert rules.on_residual(2, 0.9999, 0.49999) is None  # less than 0.1% better: no new checkpoint
    assert rules.on_residual(3, 0.9999, 0.49999) is None
    assert rules.on_residual(4, 0.9999, 0.49999) == "stalled"
    assert StopRules(tol=1e-3, patience=3).on_residual(1, 1.0, 1e-3) == "converged"


def test_slow_steady_progress_is_not_a_stall() -> None:
    rules = StopRules(tol=1e-12, patience=2)
    residual = 1.0
    for step in range(1, 200):
        residual *= 0.999  # 0.1% per step: each checkpoint is beaten within the patience
        assert rules.on_residual(step, 1.0, residual) is None


def test_history_is_packed_doubles() -> None:
    history = LossHistory()
    for value in (3.0, 2.0, 1.0):
        history.append(value)
    assert len(history) == 3 and history.to_list() == [3.0, 2.0, 1.0]
    assert history._values.itemsize == 8


def test_on_residuals_replays_on_residual_step_by_step() -> None:
    """The bulk replay (one loop over floats) stops where the per-step rule stops, with the same state after."""
    g = torch.Generator().manual_seed(5)
    reasons = []
    for trial in range(40):
        n = 60
        # slow progress, plateaus, a NaN or two, and now and then a step under tol
        pace = 0.0005 + 0.001 * (trial % 4)  # mean improvement a step: below and above the 0.1% of a checkpoint
        losses = (1 - torch.rand(n, generator=g, dtype=torch.float64) * 2 * pace).cumprod(0).tolist()
        residuals = [value * 1e-3 for value in losses]
        if trial % 3 == 0:
            losses[17] = math.nan
        if trial % 5 == 0:
            residuals[30 + trial % 7] = 1e-9
        stepwise, bulk = StopRules(1e-8, 4 + trial % 6), StopRules(1e-8, 4 + trial % 6)
        expected = None
        for index, (loss, residual) in enumerate(zip(losses, residuals, strict=True)):
            reason = stepwise.on_residual(10 + index, loss, residual)
            if reason is not None:
                expected = (index, reason)
                break
        assert bulk.on_residuals(10, losses, residuals) == expected
        assert vars(bulk) == vars(stepwise)
        reasons.append(None if expected is None else expected[1])
    assert {"stalled", "converged", None} <= set(reasons)  # every outcome was replayed


def test_on_bulk_counts_blow_up_from_the_first_step_of_the_run_only() -> None:
    rules = StopRules(0, 10)
    assert rules.on_bulk(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)) is None
    # a later chunk: its first entry is not the run's first step, so it is tested against the first loss
    assert rules.on_bulk(torch.tensor([2e12, 1.0], dtype=torch.float64), first_step=4) == 1
    assert rules.on_bulk(torch.tensor([1.0, math.inf], dtype=torch.float64), first_step=6) == 2


def test_on_bulk_gives_the_same_verdict_on_short_and_long_stretches() -> None:
    """A stretch of at most SHORT_STRETCH losses is tested in a loop over floats, a longer one with numpy: the
    same position, whatever goes wrong where (NaN, ±inf, growth past the blow-up limit, or nothing)."""
    generator = np.random.default_rng(0)
    found = set()
    for trial in range(400):
        length = int(generator.integers(1, SHORT_STRETCH + 1))
        values = generator.uniform(0.5, 2.0, length)
        if trial % 4:
            at = int(generator.integers(0, length))
            values[at] = [math.nan, math.inf, -math.inf, 5e12][trial % 4]
        first_step = 1 + int(generator.integers(0, 2)) * 7
        short = StopRules(0, 10).on_bulk(values, first_step=first_step)
        padded = np.concatenate([values, np.ones(SHORT_STRETCH)])  # the same steps first, in a long stretch
        assert StopRules(0, 10).on_bulk(padded, first_step=first_step) == short, (trial, values, first_step)
        found.add(short is None)
    assert found == {True, False}


def _view(values: list[float]) -> Losses:
    history = LossHistory()
    history.extend(np.array(values, dtype=np.float64))
    return history.view()


def test_losses_read_as_the_list_they_replace() -> None:
    values = [4.0, 2.0, math.nan, 1.0, 0.5, 0.25, 0.125]
    losses = _view(values)
    assert len(losses) == 7 and losses[0] == 4.0 and losses[-1] == 0.125 and math.isnan(losses[2])
    assert type(losses[1]) is float and type(losses[np.int64(1)]) is float
    assert losses[3:] == [1.0, 0.5, 0.25, 0.125] and type(losses[3:]) is list and losses[::3] == [4.0, 1.0, 0.125]
    assert [x for x in losses if not math.isnan(x)] == [4.0, 2.0, 1.0, 0.5, 0.25, 0.125]
    assert list(reversed(losses))[0] == 0.125 and losses.index(0.5) == 4 and 0.25 in losses
    assert min(losses[3:]) == 0.125 and max(losses[:2]) == 4.0 and bool(losses) and not Losses()
    assert losses[3:] == losses.tolist()[3:] and str(losses.tolist()) == str(values)
    with pytest.raises(IndexError):
        losses[7]
    with pytest.raises(TypeError):
        losses[0] = 1.0  # type: ignore[index]


def test_losses_compare_as_lists() -> None:
    losses = _view([1.0, 0.5])
    assert losses == [1.0, 0.5] and [1.0, 0.5] == losses and losses == (1.0, 0.5) and losses == _view([1.0, 0.5])
    assert losses != [1.0, 0.25] and losses != [1.0] and losses != [1.0, 0.5, 0.0] and losses != _view([1.0])
    assert losses == losses and _view([math.nan]) != [math.nan]  # NaN is equal to nothing, as a float in a list
    assert losses == pytest.approx([1.0, 0.5 + 1e-15], rel=1e-12)
    assert (losses == np.array([1.0, 0.0])).tolist() == [True, False]  # numpy compares element-wise, as for a list
    with pytest.raises(TypeError, match="unhashable"):
        hash(losses)


def test_losses_repr_is_short() -> None:
    assert repr(_view([1.0, 0.5])) == "Losses([1.0, 0.5], len=2)"
    many = _view([float(i) for i in range(10**6)])
    assert repr(many) == "Losses([0.0, 1.0, 2.0, …, 999998.0, 999999.0], len=1000000)"


def test_losses_cost_eight_bytes_a_step_and_convert_without_copies() -> None:
    history = LossHistory()
    history.extend(torch.arange(100_000, dtype=torch.float32))
    losses = history.view()
    assert losses.nbytes == 8 * 100_000 == 8 * len(losses)
    array = losses.numpy()
    assert array.dtype == np.float64 and not array.flags.writeable and array[99_999] == 99_999.0
    assert np.shares_memory(array, np.asarray(losses)) and np.shares_memory(array, losses.numpy())
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 1.0
    assert np.asarray(losses, dtype=np.float32).dtype == np.float32
    copied = np.array(losses)  # np.array copies by default: a writable array of its own
    assert copied.flags.writeable and not np.shares_memory(copied, array)
    with pytest.raises(ValueError, match="copy"):
        np.asarray(losses, dtype=np.float32, copy=False)
    tensor = losses.tensor()
    assert tensor.dtype == torch.float64 and tensor.shape == (100_000,) and float(tensor[-1]) == 99_999.0
    tensor[0] = -1.0  # a copy: the history is untouched
    assert losses[0] == 0.0
    assert torch.tensor(losses[:2]).tolist() == [0.0, 1.0]
    assert Losses().numpy().shape == (0,) and Losses().nbytes == 0


def test_losses_pickle_as_packed_doubles() -> None:
    losses = _view([float(i) for i in range(10_000)])
    payload = pickle.dumps(losses)
    back = pickle.loads(payload)
    assert type(back) is Losses and back == losses and len(payload) < 8 * 10_000 + 200


def test_losses_copy_an_iterable_and_share_a_packed_array() -> None:
    assert Losses([1, 2.5]) == [1.0, 2.5] and type(Losses([1, 2.5])[0]) is float
    history = LossHistory()
    history.append(3.0)
    view = history.view()
    assert view._values is history._values  # shared, no copy
