r"""Steepest descent (or nonlinear CG) with the exact step along each direction, for quadratic losses.

Along a direction ``d`` a quadratic loss is a parabola,

.. math::

    f(x + t d) = f(x) + t\, g^T d + \tfrac12 t^2\, d^T H d, \qquad
    t^\star = -\frac{g^T d}{d^T H d},

and its curvature ``dᵀHd`` is read off one extra gradient, at a trial point ``x + τ d``:
``dᵀHd = dᵀ(∇f(x + τd) − ∇f(x)) / τ``, exact for any ``τ`` on a quadratic. Only
``problem.loss_and_grad`` is used, so this works for every problem declared quadratic, with
either backend. ``τ`` is the previous exact step, which keeps the difference well above rounding.

With ``d = −g`` (``direction="steepest"``, the default) the residual shrinks by about
``(κ − 1)/(κ + 1)`` per step (``κ`` the Hessian's condition number): fine for well-conditioned
problems, hopeless for ill-conditioned ones, which ``expected_steps`` reports. With
``direction="cg"`` (Fletcher-Reeves directions) exact steps make it linear conjugate gradients.
"""

from __future__ import annotations

import math
from typing import Any

import torch

import gdla
from gdla.options import Option, choice
from gdla.problem import Params, Problem
from gdla_plugins.optimizers._quadratic import QuadraticMethod, QuadraticView, view_reason
from gdla_plugins.optimizers._spectral import Spectrum

__all__ = ["ExactLineSearch", "steepest_descent_steps"]

DIRECTIONS = ("steepest", "cg")


def steepest_descent_steps(kappa: float, tol: float) -> float:
    """Steps of exact-line-search steepest descent, contracting by ``(κ − 1)/(κ + 1)``, to reach ``tol``."""
    if not (0 < tol < 1):
        return 1.0
    if not math.isfinite(kappa):
        return math.inf
    rate = (kappa - 1) / (kappa + 1)
    return 1.0 if rate <= 0 else float(math.ceil(math.log(tol) / math.log(rate)))


def _dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[key] * b[key]).sum() for key in a)  # type: ignore[return-value]


class ExactLineSearch(QuadraticMethod):
    """Exact line search along the steepest-descent (or conjugate) direction; no learning rate.

    One :meth:`step` costs two gradient evaluations: at the current point (its loss is
    returned) and at the trial point that measures the curvature.

    Options:
        direction: ``"steepest"`` (default, ``d = −g``) or ``"cg"`` (Fletcher-Reeves).
    """

    name = "line-search"
    summary = "steepest descent with the exact step t = g'g / g'Hg, for losses quadratic in the parameters"
    default_lr = None
    default_max_steps = 10_000
    options = {"direction": Option(choice(*DIRECTIONS), "steepest", "'steepest' or 'cg' (Fletcher-Reeves)")}
    state_attributes = ("_trial", "_previous", "_gg", "last_step")

    def __init__(self, problem: Problem, params: Params, **options: Any) -> None:
        super().__init__(problem, params, **options)
        self.direction = self.options["direction"]
        self.view: QuadraticView = self._view(prefer_loss=True)
        self._trial: float | None = None
        self._previous: Params | None = None
        self._gg: torch.Tensor | None = None
        self._spectrum: Spectrum | None = None
        self.last_step: float = 0.0

    @classmethod
    def unsupported_reason(cls, problem: Problem) -> str | None:
        return view_reason(problem, "the exact line search (it fits a parabola along each direction)")

    def step(self) -> torch.Tensor:
        loss, g = self.view.gradient(self.params)
        gg = _dot(g, g)
        if self.direction == "cg" and self._previous is not None and float(self._gg) > 0:
            beta = gg / self._gg
            d = {key: -g[key] + beta * self._previous[key] for key in g}
        else:
            d = {key: -value for key, value in g.items()}
        slope = _dot(g, d)  # < 0 for a descent direction
        if not float(slope) < 0:  # g = 0 (converged), or a CG direction spoiled by rounding
            if float(gg) == 0:
                return loss
            d = {key: -value for key, value in g.items()}
            slope = -gg
        tau = self._trial if self._trial is not None else self._first_trial(loss, gg)
        trial = {key: value + tau * d[key] for key, value in self.params.items()}
        _, g_trial = self.view.gradient(trial)
        curvature = (_dot(g_trial, d) - slope) / tau  # dᵀ H d
        if float(curvature) > 0:
            t = float(-slope / curvature)
            for key, value in self.params.items():
                value.add_(d[key], alpha=t)
            self._trial, self.last_step = t, t
        else:  # no positive curvature measured (rounding at convergence): take no step
            self.last_step = 0.0
        self._previous, self._gg = d, gg
        return loss

    @staticmethod
    def _first_trial(loss: torch.Tensor, gg: torch.Tensor) -> float:
        # for f = ½ eᵀHe (minimum 0), 2f/‖g‖² is a step of the right order, 1/λ for an eigenvector
        value = 2 * float(loss) / float(gg)
        return value if math.isfinite(value) and value > 0 else 1.0

    def spectrum(self) -> Spectrum:
        if self._spectrum is None:
            self._spectrum = self.view.spectrum()
        return self._spectrum

    def expected_steps(self, tol: float) -> float | None:
        spectrum = self.spectrum()  # one step length for every block: the whole Hessian's condition
        smallest = float(spectrum.smallest.min())
        kappa = float(spectrum.largest.max()) / smallest if smallest > 0 else math.inf
        if self.direction == "steepest":
            return steepest_descent_steps(kappa, tol)
        if not (0 < tol < 1):
            return 1.0
        size = sum(value.numel() for value in self.params.values())
        bound = math.sqrt(kappa) / 2 * math.log(2 / tol) if math.isfinite(kappa) else math.inf
        return float(math.ceil(min(bound, 2 * size)))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lr": None, "direction": self.direction}


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(ExactLineSearch)
