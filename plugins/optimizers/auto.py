"""``auto``: the default optimizer of :func:`gdla.solve`; picks the best-suited method and says why.

``auto`` is a way of planning, not a method of its own: the run plan (:mod:`gdla.plan`) asks
every registered optimizer once how well it fits the problem (:meth:`~gdla.Optimizer.suitability`,
read from the problem's declared capabilities, never its name) and runs the lowest rank, ties
broken by name, among those whose ``unsupported_reason`` accepts the problem. With the built-ins:

==============================================  ===============  ====  ==========================================
declared capability                             method           rank  why
==============================================  ===============  ====  ==========================================
``matrix_inverse()``                            newton-schulz    10    quadratic convergence: ~log₂(κ²) + 6 steps
``least_squares()``                             cg               20    exact steps, at most one per unknown
``quadratic = True`` (one parameter tensor)     cg               25    the same, on the loss's Hessian
any differentiable loss                         lbfgs            60    measured best on the nonlinear built-ins
any differentiable loss                         adam             90    fallback where lbfgs is missing
==============================================  ===============  ====  ==========================================

A third-party optimizer joins the ranking by implementing ``suitability``. ``Result.settings``
reports ``optimizer.method`` and ``optimizer.reason``. This module registers the name (so
``gdla plugins`` lists it and ``gdla.get_optimizer("auto")`` finds it); building the class
directly builds the method it picks.
"""

from __future__ import annotations

from typing import Any

import torch

import gdla
from gdla.optimizer import Optimizer, Suitability
from gdla.plan import AUTO, Ranking
from gdla.problem import Params, Problem

__all__ = ["Auto", "choose", "ranking"]


def ranking(problem: Problem) -> list[tuple[type[Optimizer], Suitability]]:
    """Every registered optimizer that declares itself suitable for ``problem`` and accepts it, best first."""
    ranked = Ranking(problem)
    ranked.warn_failures()  # a broken plugin's suitability is reported and left out, as auto does
    return [(candidate.cls, candidate.fit) for candidate in ranked.suitable]  # type: ignore[misc]


def choose(problem: Problem) -> tuple[type[Optimizer], str]:
    """The optimizer class ``auto`` uses for ``problem`` and the reason, as a sentence."""
    pick = Ranking(problem).best()
    return pick.cls, pick.fit.reason  # type: ignore[union-attr]


class Auto(Optimizer):
    """The name ``auto``. ``Auto(problem, params, **options)`` builds the method :func:`choose` picks.

    Options the pick declares in its :class:`~gdla.Suitability` are passed unless the caller set
    them; a learning rate given for a method that has none (Newton-Schulz, CG) is dropped.
    """

    name = AUTO
    summary = "picks the fastest reliable method for the problem (newton-schulz, cg, lbfgs...) and reports why"
    default_lr = None
    default_max_steps = 10_000

    def __new__(  # type: ignore[misc]
        cls, problem: Problem, params: Params, *, lr: float | None = None, **options: Any
    ) -> Optimizer:
        pick = Ranking(problem).best()
        if lr is not None and pick.cls.default_lr is None:
            lr = None
        return pick.cls(problem, params, lr=lr, **{**pick.fit.options, **options})  # type: ignore[union-attr]

    @classmethod
    def method_for(cls, problem: Problem) -> str:
        """The name of the method ``auto`` would run on ``problem`` (for advice such as "try auto")."""
        return choose(problem)[0].name

    def step(self) -> torch.Tensor:  # pragma: no cover - never built: __new__ returns the picked method
        raise NotImplementedError


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(Auto)
