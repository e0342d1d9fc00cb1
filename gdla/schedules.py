"""Learning-rate schedules, stepped once per iteration.

=============  ===========================================================================
name           learning rate at step t (``lr`` is the base rate)
=============  ===========================================================================
``step``       ``lr * gamma ** (t // step_size)`` (defaults: ``gamma=0.5``, ``step_size=max_steps//4``)
``multistep``  ``lr * factors[i]`` once ``t >= milestones[i]``; defaults reproduce seed 003:
               0.05 → 0.025 at 10,000 → 0.01 at 100,000 (``factors=(0.5, 0.2)``)
``exponential````lr * gamma ** t`` (default ``gamma=0.999``)
``cosine``     cosine decay from ``lr`` to ``eta_min`` over ``T_max`` steps (default ``max_steps``)
=============  ===========================================================================
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch

from gdla.errors import InputError
from gdla.validation import check_choice, check_int, check_nonnegative, check_positive

__all__ = ["SCHEDULES", "make_schedule"]

SCHEDULES = ("step", "multistep", "exponential", "cosine")


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
        gamma = check_positive(options.get("gamma", 0.5), "gamma")
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "multistep":
        milestones = list(options.get("milestones", (10_000, 100_000)))
        factors = list(options.get("factors", (0.5, 0.2)))
        return _piecewise(optimizer, milestones, factors)
    if name == "exponential":
        gamma = check_positive(options.get("gamma", 0.999), "gamma")
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    t_max = check_int(options.get("T_max", horizon), "T_max", minimum=1)
    eta_min = check_nonnegative(options.get("eta_min", 0.0), "eta_min")
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=eta_min)


def _piecewise(
    optimizer: torch.optim.Optimizer, milestones: Sequence[Any], factors: Sequence[Any]
) -> torch.optim.lr_scheduler.LambdaLR:
    if len(milestones) != len(factors):
        raise InputError(
            f"factors: expected one factor per milestone ({len(milestones)}), received {len(factors)}"
        )
    steps = [check_int(m, "milestones", minimum=1) for m in milestones]
    if steps != sorted(steps):
        raise InputError(f"milestones: expected increasing steps, received {list(milestones)}")
    scales = [1.0] + [check_positive(f, "factors") for f in factors]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: scales[bisect.bisect_right(steps, t)])
