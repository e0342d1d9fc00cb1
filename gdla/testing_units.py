"""The contract's units sweep: a problem rebuilt with its data times ``2^±k`` must take the same normalised steps.

"Units do not matter" holds for a problem whose units gdla can remove: one that implements
:meth:`~gdla.Problem.normalized`, or declares :meth:`~gdla.Problem.least_squares` (solved in normalised
units by :mod:`gdla.declared_units`). The sweep rebuilds the contract's problem from its recorded
constructor arguments with every floating tensor argument times ``2^k`` (or those the contract names,
each to its power), solves both for a few ``adam`` steps (a method whose steps show any scale left in
the data) from the same seed and compares the losses: ``Result.losses`` are in the caller's units, so
the same bits up to one exact power of two (the loss's units) mean the units were removed exactly.
Otherwise it names what the plugin must declare. ``k`` is a multiple of 16 (the steps of
:data:`gdla.declared_units.UNIT_STEP`), about ``1e±96`` in float64 and ``1e±14`` in float32: far
from 1, with room for a loss that squares the data to stay a normal number in the caller's units.
A problem with its own ``normalized()`` is swept only where the
contract names the arguments that carry units (``units_powers``): its author decided how they act,
and its tensors need not all share them (``sparse``: ``X`` and ``Y`` do, ``Init`` does not).

:class:`UnitsSweep` is mixed into :class:`gdla.testing.ProblemContract`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch

from gdla.errors import GdlaError
from gdla.loop import solve
from gdla.problem import Problem
from gdla.scaling import scale_by_power_of_two

__all__ = ["SWEEP_EXPONENTS", "UnitsSweep", "same_up_to_a_power_of_two", "scaled_data", "units_sweep_failure"]

#: ``k`` of the sweep per dtype: data times ``2^k``, far from 1 but with room for products and squares.
SWEEP_EXPONENTS: dict[torch.dtype, tuple[int, ...]] = {torch.float64: (-320, 320), torch.float32: (-48, 48)}
#: Steps compared: enough for a method to show its scale (a learning rate, a start), cheap.
SWEEP_STEPS = 8


def same_up_to_a_power_of_two(a: list[float], b: list[float]) -> bool:
    """Whether ``a[i] == b[i] · 2^j`` exactly, for one ``j`` and every ``i`` (zeros, infinities and NaNs alike)."""
    shifts = set()
    for x, y in zip(a, b, strict=True):
        (mx, ex), (my, ey) = math.frexp(x), math.frexp(y)
        if mx != my and not (mx != mx and my != my):  # NaN's mantissa is NaN in both
            return False
        if x != 0 and math.isfinite(x):
            shifts.add(ex - ey)
    return len(shifts) <= 1


def scaled_data(problem: Problem, exponent: int, powers: dict[str, int] | None = None) -> Problem | None:
    """``problem`` rebuilt with its constructor's floating tensor arguments times ``2^(exponent · power)``.

    ``powers`` names the arguments that carry units and each one's power (default: every floating
    tensor argument, power 1: they all share the data's units). ``None`` where the constructor's
    arguments were not recorded (``*args``) or none carries units.
    """
    arguments = problem.__dict__.get("_constructor_arguments")
    if arguments is None:
        return None
    if powers is None:
        powers = {
            key: 1 for key, value in arguments.items() if isinstance(value, torch.Tensor) and value.is_floating_point()
        }
    if not powers:
        return None
    scaled = {key: scale_by_power_of_two(arguments[key], exponent * power) for key, power in powers.items()}
    return problem.rebuild(**scaled)


def units_sweep_failure(
    problem: Problem, exponents: tuple[int, ...], options: dict[str, Any], powers: dict[str, int] | None = None
) -> str | None:
    """Why ``problem`` fails the units sweep (its steps change with the data's units), or ``None``.

    A scaled problem that gdla refuses (an answer not representable, a constructor's check) is not a
    failure: that is the honest answer at those units.
    """
    settings = {"optimizer": "adam", **options, "max_steps": SWEEP_STEPS, "tol": 0}
    base = solve(problem, seed=0, **settings)
    for exponent in exponents:
        try:
            scaled = scaled_data(problem, exponent, powers)
            if scaled is None:
                return None
            run = solve(scaled, seed=0, **settings)
        except GdlaError:
            continue
        if same_up_to_a_power_of_two(list(run.losses), list(base.losses)):
            continue
        return (
            f"problem {problem.name!r}: with its data times 2^{exponent} it took other steps than in its own units "
            f"(losses {list(base.losses)[:3]} became {list(run.losses)[:3]}), so gdla cannot tell how its units "
            "act and 'units do not matter' does not hold. Declare least_squares() (gdla then solves the form in "
            "normalised units) or implement normalized(); compute residual() and error() with gdla.relative_norm; "
            "if its constructor's tensors do not all share units, set units_powers = {argument: power} in the contract"
        )
    return None


class UnitsSweep:
    """The units check of :class:`gdla.testing.ProblemContract` (see the module)."""

    #: Constructor arguments that carry the data's units, each with its power (``{"X": 1, "Y": 1}``); ``None``:
    #: every floating tensor argument, power 1.
    units_powers: ClassVar[dict[str, int] | None] = None
    solve_options: ClassVar[dict[str, Any]] = {}

    def make_problem(self, dtype: torch.dtype) -> Problem:  # provided by ProblemContract
        raise NotImplementedError

    def test_units_do_not_change_the_steps(self) -> None:
        """The same ``adam`` steps (losses bit for bit up to their units) with the data times ``2^±320`` (float64)."""
        problem = self.make_problem(torch.float64)
        if problem.__dict__.get("_constructor_arguments") is None:
            pytest.skip("the constructor records no arguments (*args): the data cannot be rebuilt at other units")
        if self.units_powers is None and type(problem).normalized is not Problem.normalized:
            pytest.skip("the problem normalises itself (its own normalized()): set units_powers to sweep it")
        failure = units_sweep_failure(problem, SWEEP_EXPONENTS[torch.float64], self.solve_options, self.units_powers)
        assert failure is None, failure
