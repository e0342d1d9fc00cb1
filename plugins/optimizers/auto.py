"""``auto``: the default optimizer of :func:`gdla.solve`; picks the fastest reliable method and says why.

The choice depends on the problem's structure, read through its name and documented attributes
(no problem module is imported):

=============================================  ===============  ==========================================
problem                                        method           why
=============================================  ===============  ==========================================
``inverse`` (any side, batch, pseudo)          newton-schulz    quadratic convergence: ~log₂(κ²) + 6 steps
least squares: ``toeplitz``, ``sparse`` with   cg               exact steps, at most one step per unknown
one linear hop, any problem declared quadratic                  of an independent block
``svd``                                        lbfgs (200 pairs) measured best: the factors' coupling defeats
                                                                first-order methods
anything else (``toeplitz-net``, nonlinear     lbfgs            measured best on the built-in nonlinear
``sparse``...)                                                  problems; adam where lbfgs is missing
=============================================  ===============  ==========================================

Each candidate is checked with its own ``unsupported_reason``; the first that accepts the
problem is built through :func:`gdla.get_optimizer` and every step is delegated to it.
``describe()`` (hence ``Result.settings``) reports ``method``, ``reason`` and the delegate's settings.
"""

from __future__ import annotations

from typing import Any

import torch

import gdla
from gdla.errors import InputError
from gdla.optimizer import Optimizer
from gdla.problem import Params, Problem

__all__ = ["Auto", "choose"]

#: Options auto adds for a delegate unless the caller set them (measured on the svd example).
#: On the svd example (float64) L-BFGS needs about 640 steps with 100 or more pairs, about 4000 with
#: torch's 20: the penalised loss is ill-conditioned, and only a memory that is not recycled resolves it.
DELEGATE_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {("svd", "lbfgs"): {"history_size": 200}}


def _candidates(problem: Problem) -> list[tuple[str, str]]:
    """``(method, reason)`` pairs in order of preference for ``problem``."""
    from gdla_plugins.optimizers.cg import form_reason

    name = getattr(problem, "name", "")
    out: list[tuple[str, str]] = []
    if name == "inverse":
        out.append(
            ("newton-schulz", "matrix inverse: Newton-Schulz converges quadratically, in about log2(cond^2) + 6 steps")
        )
    if form_reason(problem) is None:
        out.append(("cg", "least-squares problem: conjugate gradients with exact steps, at most one step per unknown"))
    if name == "svd":
        out.append(("lbfgs", "svd: L-BFGS with 200 curvature pairs converged fastest in measurements (adam stalls)"))
    out.append(("lbfgs", "nonlinear loss: L-BFGS with a strong-Wolfe line search converged fastest in measurements"))
    out.append(("adam", "nonlinear loss: adam (L-BFGS is not available)"))
    return out


def choose(problem: Problem) -> tuple[type[Optimizer], str]:
    """The optimizer class ``auto`` uses for ``problem`` and the reason, as a sentence."""
    tried: list[str] = []
    for method, reason in _candidates(problem):
        try:
            cls = gdla.get_optimizer(method)
        except gdla.PluginError:  # not installed (or registered twice): try the next one
            tried.append(f"{method} (not available)")
            continue
        refusal = cls.unsupported_reason(problem)
        if refusal is None:
            return cls, reason
        tried.append(f"{method} ({refusal})")
    raise InputError(f"optimizer: 'auto' found no method for problem {problem.name!r}; tried " + "; ".join(tried))


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
        cls, reason = choose(problem)
        if lr is not None and cls.default_lr is None:
            reason += f"; lr={lr!r} ignored, {cls.name} has no learning rate"
            lr = None
        merged = {**DELEGATE_DEFAULTS.get((problem.name, cls.name), {}), **options}
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
    def method_for(cls, problem: Problem) -> str:
        """The name of the method ``auto`` would run on ``problem`` (for advice such as "try auto")."""
        return choose(problem)[0].name

    def step(self) -> torch.Tensor:
        return self.delegate.step()

    def expected_steps(self, tol: float) -> float | None:
        return self.delegate.expected_steps(tol)

    @property
    def ran_backend(self) -> str:
        return self.delegate.ran_backend

    def describe(self) -> dict[str, Any]:
        inner = {key: value for key, value in self.delegate.describe().items() if key not in ("name", "lr")}
        return {"name": self.name, "lr": self.lr, "method": self.method, "reason": self.reason, **inner}


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(Auto)
