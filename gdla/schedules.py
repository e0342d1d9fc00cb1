"""Learning-rate schedules, stepped once per iteration.

Learning rate at step ``t`` (``lr`` is the base rate):

- ``step``: ``lr * gamma ** (t // step_size)`` (defaults ``gamma=0.5``, ``step_size=max_steps // 4``).
- ``multistep``: ``lr * factors[i]`` once ``t >= milestones[i]``; the defaults reproduce seed 003,
  0.05 → 0.025 at step 10,000 → 0.01 at step 100,000 (``factors=(0.5, 0.2)``).
- ``exponential``: ``lr * gamma ** t`` (default ``gamma=0.999``).
- ``cosine``: cosine decay from ``lr`` to ``eta_min`` over ``T_max`` steps (default ``max_steps``),
  then ``eta_min``.

``gamma`` must lie in ``(0, 1]`` and ``eta_min`` must not exceed ``lr``: a schedule only decays.
"""

from __future__ import annotations

import bisect
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from gdla.errors import InputError
from gdla.validation import check_choice, check_int, check_nonnegative, check_positive

__all__ = ["SCHEDULES", "advance", "make_schedule", "upcoming_rates"]

SCHEDULES = ("step", "multistep", "exponential", "cosine")

#: The factor of each epoch, vectorised, for the ``LambdaLR`` schedules made here (not in their
#: state_dict, which must stay picklable).
_FACTORS: weakref.WeakKeyDictionary[Any, Callable[[np.ndarray], np.ndarray]] = weakref.WeakKeyDictionary()


def make_schedule(
    name: str | None, optimizer: torch.optim.Optimizer, *, max_steps: int | None = None, **options: Any
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Return the scheduler called ``name`` for ``optimizer`` (``None`` for no schedule)."""
    if name is None or name == "none":
        if options:
            raise InputError(f"schedule_options: given {sorted(options)} but no schedule was chosen")
        return None
    check_choice(name, "schedule", SCHEDULES)
    horizon = max_steps or 10_000
    allowed = {
        "step": {"step_size", "gamma"},
        "multistep": {"milestones", "factors"},
        "exponential": {"gamma"},
        "cosine": {"T_max", "eta_min"},
    }[name]
    unknown = set(options) - allowed
    if unknown:
        raise InputError(
            f"schedule_options: schedule {name!r} accepts {sorted(allowed)}, received unknown {sorted(unknown)}"
        )
    if name == "step":
        step_size = check_int(options.get("step_size", max(1, horizon // 4)), "step_size", minimum=1)
        gamma = _check_decay(options.get("gamma", 0.5))
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "multistep":
        milestones = _sequence(options.get("milestones", (10_000, 100_000)), "milestones")
        factors = _sequence(options.get("factors", (0.5, 0.2)), "factors")
        return _piecewise(optimizer, milestones, factors)
    if name == "exponential":
        gamma = _check_decay(options.get("gamma", 0.999))
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    t_max = check_int(options.get("T_max", horizon), "T_max", minimum=1)
    eta_min = check_nonnegative(options.get("eta_min", 0.0), "eta_min")
    base = min(group["lr"] for group in optimizer.param_groups)
    if eta_min > base:
        raise InputError(f"eta_min: expected a rate <= lr ({base:g}), received {eta_min!r}")
    return _cosine(optimizer, t_max, eta_min)


def _check_decay(value: Any) -> float:
    gamma = check_positive(value, "gamma")
    if gamma > 1:
        raise InputError(f"gamma: expected a decay factor in (0, 1], received {value!r}")
    return gamma


def _sequence(value: Any, name: str) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InputError(f"{name}: expected a list of numbers, received {value!r}")
    return list(value)


def _cosine(optimizer: torch.optim.Optimizer, t_max: int, eta_min: float) -> torch.optim.lr_scheduler.LambdaLR:
    # torch's CosineAnnealingLR is periodic and climbs back after T_max; this one stays at eta_min.
    def factor(t: int, base: float) -> float:
        progress = min(t, t_max) / t_max
        return (eta_min + (base - eta_min) * (1 + math.cos(math.pi * progress)) / 2) / base

    bases = [group["lr"] for group in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda t, b=b: factor(t, b) for b in bases])
    # math.cos, one step at a time: numpy's vector cosine may round differently
    _FACTORS[scheduler] = lambda epochs: np.array([factor(int(t), bases[0]) for t in epochs])
    return scheduler


def _piecewise(
    optimizer: torch.optim.Optimizer, milestones: Sequence[Any], factors: Sequence[Any]
) -> torch.optim.lr_scheduler.LambdaLR:
    if len(milestones) != len(factors):
        raise InputError(f"factors: expected one factor per milestone ({len(milestones)}), received {len(factors)}")
    steps = [check_int(m, "milestones", minimum=1) for m in milestones]
    if any(a >= b for a, b in zip(steps, steps[1:], strict=False)):
        raise InputError(f"milestones: expected increasing steps, received {list(milestones)}")
    scales = [1.0] + [check_positive(f, "factors") for f in factors]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: scales[bisect.bisect_right(steps, t)])
    table = np.array(scales, dtype=np.float64)
    _FACTORS[scheduler] = lambda epochs: table[np.searchsorted(steps, epochs, side="right")]
    return scheduler


# -- many steps at once -------------------------------------------------------------------------
def upcoming_rates(scheduler: torch.optim.lr_scheduler.LRScheduler | None, lr: float, count: int) -> np.ndarray:
    """The learning rate of each of the next ``count`` steps, then the one after them (``count + 1`` values).

    ``lr`` is the rate of the next step (the first parameter group's ``"lr"``). The values are
    the bits that stepping ``scheduler`` once per step would put in the group (each schedule's own
    recursion, replayed in float64 in the same order), so a whole-run kernel fed these rates takes
    the same steps as the step-by-step loop. :func:`advance` then moves the scheduler past them.

    Raises:
        TypeError: for a scheduler :func:`make_schedule` did not make.
    """
    if scheduler is None:
        return np.full(count + 1, lr, dtype=np.float64)
    epochs = np.arange(scheduler.last_epoch, scheduler.last_epoch + count + 1)
    factors = _FACTORS.get(scheduler)
    if factors is not None:  # LambdaLR: base rate × factor(epoch)
        rates = scheduler.base_lrs[0] * factors(epochs)
        rates[0] = lr  # the group's rate as it stands
        return rates
    if isinstance(scheduler, torch.optim.lr_scheduler.ExponentialLR):  # lr ← lr γ, every step
        steps = np.full(count + 1, scheduler.gamma, dtype=np.float64)
        steps[0] = lr
        return np.cumprod(steps)  # left to right: the same products, in the same order
    if isinstance(scheduler, torch.optim.lr_scheduler.StepLR):  # lr ← lr γ at every multiple of step_size
        rates = np.empty(count + 1, dtype=np.float64)
        current = lr
        for i, epoch in enumerate(epochs):
            if i > 0 and epoch % scheduler.step_size == 0:
                current = current * scheduler.gamma
            rates[i] = current
        return rates
    raise TypeError(f"upcoming_rates: no replay for scheduler {type(scheduler).__name__}")


def advance(scheduler: torch.optim.lr_scheduler.LRScheduler | None, rates: np.ndarray, taken: int) -> None:
    """Leave ``scheduler`` and its optimizer's groups as ``taken`` calls of ``step()`` would.

    ``rates`` is what :func:`upcoming_rates` returned for at least ``taken`` steps.
    """
    if scheduler is None or taken == 0:
        return
    value = float(rates[taken])
    scheduler.last_epoch += taken
    scheduler._step_count += taken  # type: ignore[attr-defined]
    for group in scheduler.optimizer.param_groups:
        group["lr"] = value
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]  # type: ignore[attr-defined]
