"""``auto``: the default optimizer of :func:`gdla.solve`; picks the best-suited method and says why.

Every registered optimizer states how well it fits a problem through its
:meth:`~gdla.Optimizer.suitability` (read from the problem's declared capabilities, never its
name); ``auto`` takes the lowest rank, ties broken by name, among those whose
``unsupported_reason`` accepts the problem. With the built-ins:

==============================================  ===============  ====  ==========================================
declared capability                             method           rank  why
==============================================  ===============  ====  ==========================================
``matrix_inverse()``                            newton-schulz    10    quadratic convergence: ~log₂(κ²) + 6 steps
``least_squares()``                             cg               20    exact steps, at most one per unknown
any differentiable loss                         lbfgs            60    measured best on the nonlinear built-ins
any differentiable loss                         adam             90    fallback where lbfgs is missing
==============================================  ===============  ====  ==========================================

A third-party optimizer joins the ranking by implementing ``suitability``. ``describe()`` (hence
``Result.settings``) reports ``method``, ``reason`` and the delegate's settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

import gdla
from gdla.errors import GdlaError, InputError, PluginError
from gdla.optimizer import Optimizer, Suitability, TestedRun
from gdla.problem import Params, Problem

__all__ = ["Auto", "choose", "ranking"]


def ranking(problem: Problem) -> list[tuple[type[Optimizer], Suitability]]:
    """Every registered optimizer that declares itself suitable for ``problem`` and accepts it, best first."""
    found: list[tuple[int, str, type[Optimizer], Suitability]] = []
    for name in gdla.optimizers():
        if name == Auto.name:
            continue
        try:
            cls = gdla.get_optimizer(name)
        except GdlaError:  # registered twice, or failed to load: it cannot be picked by name either
            continue
        try:
            fit = cls.suitability(problem)
        except GdlaError:
            raise
        except Exception as exc:
            raise PluginError(
                f"optimizer {name!r} ({cls.__module__}.{cls.__qualname__}): suitability() raised "
                f"{type(exc).__name__}: {exc}; it must return a gdla.Suitability or None"
            ) from exc
        if fit is None:
            continue
        if not isinstance(fit, Suitability):
            raise PluginError(
                f"optimizer {name!r} ({cls.__module__}.{cls.__qualname__}): suitability() returned {fit!r}; "
                "it must return a gdla.Suitability or None"
            )
        if cls.unsupported_reason(problem) is None:
            found.append((fit.rank, name, cls, fit))
    found.sort(key=lambda item: (item[0], item[1]))
    return [(cls, fit) for _, _, cls, fit in found]


def choose(problem: Problem) -> tuple[type[Optimizer], str]:
    """The optimizer class ``auto`` uses for ``problem`` and the reason, as a sentence."""
    cls, fit = _best(problem)
    return cls, fit.reason


def _best(problem: Problem) -> tuple[type[Optimizer], Suitability]:
    ranked = ranking(problem)
    if not ranked:
        raise InputError(
            f"optimizer: 'auto' found no method for problem {problem.name!r}: no registered optimizer declares "
            f"itself suitable (registered: {', '.join(gdla.optimizers())})"
        )
    return ranked[0]


class Auto(Optimizer):
    """Delegates to the method :func:`choose` picks; options and ``lr`` go to that method.

    A learning rate given for a method that has none (Newton-Schulz, CG) is dropped, and the
    reason says so.
    """

    name = "auto"
    summary = "picks the fastest reliable method for the problem (newton-schulz, cg, lbfgs...) and reports why"
    default_lr = None
    default_max_steps = 10_000

    def __init__(
        self, problem: Problem, params: Params, *, lr: float | None = None, backend: str = "autograd", **options: Any
    ) -> None:
        max_steps = options.pop("max_steps", None)
        super().__init__(problem, params, lr=None, backend=backend, max_steps=max_steps)
        cls, fit = _best(problem)
        reason = fit.reason
        if lr is not None and cls.default_lr is None:
            reason += f"; lr={lr!r} ignored, {cls.name} has no learning rate"
            lr = None
        merged = {**fit.options, **options}
        try:
            self.delegate = cls(problem, params, lr=lr, backend=backend, max_steps=max_steps, **merged)
        except InputError as exc:  # say which method the options went to: the caller asked for 'auto'
            raise InputError(
                f"optimizer 'auto' picked {cls.name!r} ({reason}), which refused the options: {exc}"
            ) from exc
        self.method = cls.name
        self.reason = reason
        self.lr = self.delegate.lr

    @classmethod
    def method_class(cls, problem: Problem) -> type[Optimizer]:
        return _best(problem)[0]

    @classmethod
    def method_for(cls, problem: Problem) -> str:
        """The name of the method ``auto`` would run on ``problem`` (for advice such as "try auto")."""
        return choose(problem)[0].name

    @classmethod
    def suitability(cls, problem: Problem) -> Suitability | None:
        return None  # auto is never its own delegate

    @classmethod
    def fused_reason(cls, problem: Problem, options: Mapping[str, Any]) -> str | None:
        chosen, fit = _best(problem)
        return chosen.fused_reason(problem, {**fit.options, **options})

    def step(self) -> torch.Tensor:
        return self.delegate.step()

    def expected_steps(self, tol: float) -> float | None:
        return self.delegate.expected_steps(tol)

    def state_dict(self) -> dict[str, Any]:
        return self.delegate.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.delegate.load_state_dict(state)

    def steps_bound(self, tol: float) -> float | None:
        return self.delegate.steps_bound(tol)

    def run(self, steps: int) -> torch.Tensor | None:
        return self.delegate.run(steps)

    def run_tested(self, steps: int, tol: float) -> TestedRun | None:
        return self.delegate.run_tested(steps, tol)

    def describe(self) -> dict[str, Any]:
        inner = {key: value for key, value in self.delegate.describe().items() if key not in ("name", "lr")}
        return {"name": self.name, "lr": self.lr, "method": self.method, "reason": self.reason, **inner}


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(Auto)
