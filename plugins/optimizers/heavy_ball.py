r"""Polyak's heavy ball with its step and momentum taken from the Hessian's spectrum: no tuning.

For a quadratic loss with Hessian eigenvalues in ``[μ, L]`` the iteration

.. math::

    x_{k+1} = x_k - \alpha \nabla f(x_k) + \beta (x_k - x_{k-1}), \qquad
    \alpha = \frac{4}{(\sqrt L + \sqrt\mu)^2}, \qquad
    \beta = \Big(\frac{\sqrt\kappa - 1}{\sqrt\kappa + 1}\Big)^2, \quad \kappa = L / \mu

contracts every eigen-direction by ``√β ≈ 1 − 2/√κ`` per step: about ``√κ/2 · ln(1/tol)``
steps, against ``κ/2 · ln(1/tol)`` for gradient descent with its best fixed step.

``L`` and ``μ`` are estimated before the first step by Lanczos on Hessian-vector products
(:mod:`gdla_plugins.optimizers._spectral`). Lanczos approaches ``L`` from below, and a step
tuned to a too-small ``L`` slows the top eigen-direction (diverges once
``α λ > 2(1 + β)``), so ``L`` is inflated by a small ``margin``; ``μ`` is approached from above,
which only costs a factor ``√(μ_est / μ)`` in steps. Directions the loss ignores (a null space,
masked entries) are skipped: ``μ`` is the smallest nonzero eigenvalue.
"""

from __future__ import annotations

import math
from typing import Any

import torch

import gdla
from gdla.errors import InputError
from gdla.options import Option, integer, optional
from gdla.problem import Params, Problem
from gdla.validation import check_nonnegative, check_positive
from gdla_plugins.optimizers._quadratic import LeastSquaresView, QuadraticMethod, QuadraticView, view_reason
from gdla_plugins.optimizers._spectral import HESSIAN_STEPS, hessian_extremes

__all__ = ["HeavyBall", "heavy_ball_parameters", "heavy_ball_steps"]


def heavy_ball_parameters(L: float, mu: float) -> tuple[float, float]:
    """``(α, β)`` of Polyak's heavy ball for Hessian eigenvalues in ``[μ, L]``."""
    root_l, root_mu = math.sqrt(L), math.sqrt(mu)
    alpha = 4.0 / (root_l + root_mu) ** 2
    root_kappa = root_l / root_mu
    beta = ((root_kappa - 1) / (root_kappa + 1)) ** 2
    return alpha, beta


def heavy_ball_steps(kappa: float, tol: float) -> float:
    """Steps for a contraction ``√β = (√κ − 1)/(√κ + 1)`` per step to shrink the residual to ``tol``."""
    if not (0 < tol < 1) or not math.isfinite(kappa):
        return math.inf if not math.isfinite(kappa) else 1.0
    rate = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)
    if rate <= 0:
        return 1.0
    return float(math.ceil(math.log(tol) / math.log(rate)))


class HeavyBall(QuadraticMethod):
    """Polyak's heavy ball for quadratic losses, tuned from estimated extreme Hessian eigenvalues.

    Options:
        L, mu: the Hessian's largest and smallest (nonzero) eigenvalues, if known; each one
            given skips its estimate (and the margin, for ``L``).
        lanczos_steps: Lanczos iterations of the estimate (default 120, fewer for huge problems,
            whose basis would not fit in memory).
        margin: relative inflation of the estimated ``L`` (default 0.05).
    """

    name = "heavy-ball"
    summary = "Polyak heavy ball, step and momentum from Lanczos estimates of the Hessian's extreme eigenvalues"
    default_lr = None
    default_max_steps = 20_000
    options = {
        "L": Option(
            optional(check_positive), None, "largest Hessian eigenvalue, in the data's units (default: estimated)"
        ),
        "mu": Option(optional(check_positive), None, "smallest nonzero Hessian eigenvalue (default: estimated)"),
        "lanczos_steps": Option(integer(2), HESSIAN_STEPS, "Lanczos iterations of the estimate"),
        "margin": Option(check_nonnegative, 0.05, "relative inflation of the estimated L"),
    }
    state_attributes = ("_previous",)

    def __init__(self, problem: Problem, params: Params, **options: Any) -> None:
        super().__init__(problem, params, **options)
        given_l, given_mu = self.options["L"], self.options["mu"]
        view = self._view(prefer_loss=True)
        self.view: QuadraticView = view
        self.matvecs = 0
        if given_l is None or given_mu is None:
            if isinstance(view, LeastSquaresView):
                spectrum = view.spectrum()
            else:
                spectrum = hessian_extremes(problem, params, steps=self.options["lanczos_steps"])
            self.matvecs = spectrum.matvecs
            estimated_l = float(spectrum.largest.max()) * (1 + self.options["margin"])
            estimated_mu = float(spectrum.smallest.min())
        self.L = given_l if given_l is not None else estimated_l
        self.mu = given_mu if given_mu is not None else estimated_mu
        if not (self.L > 0 and math.isfinite(self.L)) or not (self.mu > 0):
            raise InputError(
                f"optimizer: 'heavy-ball' found no positive curvature in problem {problem.name!r} "
                f"(estimated L={self.L:.3g}, mu={self.mu:.3g}); its loss is flat in every direction it probed"
            )
        if self.mu > self.L:
            raise InputError(f"mu: expected a value <= L = {self.L:.6g}, received {self.mu:.6g}")
        self.alpha, self.beta = heavy_ball_parameters(self.L, self.mu)
        self.lr = self.alpha  # the step in use, so Result.settings["lr"] shows it
        self._previous = {key: value.detach().clone() for key, value in params.items()}

    @classmethod
    def in_normalized_units(
        cls, lr: float | None, options: dict[str, Any], param_exponent: int, loss_exponent: int
    ) -> tuple[float | None, dict[str, Any]]:
        """``L`` and ``mu`` are curvatures: they scale by ``2^(j − 2p)``."""
        shift = loss_exponent - 2 * param_exponent
        converted = dict(options)
        for key in ("L", "mu"):
            value = converted.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                converted[key] = math.ldexp(float(value), shift)
        return lr, converted

    @classmethod
    def unsupported_reason(cls, problem: Problem) -> str | None:
        return view_reason(problem, "heavy-ball (its step and momentum come from a constant Hessian)")

    def step(self) -> torch.Tensor:
        loss, grads = self.view.gradient(self.params)
        for key, x in self.params.items():
            moved = x - self.alpha * grads[key] + self.beta * (x - self._previous[key])
            self._previous[key].copy_(x)
            x.copy_(moved)
        return loss

    @property
    def condition(self) -> float:
        """``L / μ`` in use."""
        return self.L / self.mu

    def expected_steps(self, tol: float) -> float | None:
        return heavy_ball_steps(self.condition, tol)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lr": self.alpha,
            "momentum": self.beta,
            "L": self.L,
            "mu": self.mu,
            "lanczos_matvecs": self.matvecs,
        }


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(HeavyBall)
