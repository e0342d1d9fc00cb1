r"""Conjugate gradients on the least-squares form of a problem: converges in tens of steps.

A problem whose loss is a linear least-squares objective ``‖J x − b‖²`` is solved by CG on its
normal equations ``JᵀJ x = Jᵀb`` applied as products (CGLS), never forming ``JᵀJ``:

.. math::

    g_k = J^T(Jx_k - b),\quad d_k = -g_k + \frac{\|g_k\|^2}{\|g_{k-1}\|^2} d_{k-1},\quad
    x_{k+1} = x_k + \alpha_k d_k,\quad \alpha_k = -\frac{g_k^T d_k}{\|J d_k\|^2}.

It reaches a residual ``tol`` in about ``√κ(JᵀJ)/2 · ln(2/tol)`` steps and, in exact arithmetic,
in at most as many steps as a block has unknowns. Blocks: the independent least-squares
problems a problem splits into (a column of ``M`` for ``A M = I``, a row of ``U`` for the masked
operator, a batch member); each gets its own CG scalars (``blocks="independent"``, default) or
all share one (``blocks="global"``).

The least-squares structure comes from the problem's declared capabilities (see
:mod:`gdla_plugins.optimizers._quadratic`): a :class:`~gdla.LinearLeastSquares` (CGLS on its
operator, blockwise) or a loss declared ``quadratic`` in one parameter tensor (its gradient and
Hessian-vector products).
"""

from __future__ import annotations

import math
from typing import Any

import torch

import gdla
from gdla.optimizer import Suitability
from gdla.options import Option, choice, optional_count
from gdla.problem import Params, Problem
from gdla_plugins.optimizers._quadratic import HessianView, QuadraticMethod, QuadraticView, view_reason
from gdla_plugins.optimizers._spectral import Spectrum, settled_condition

__all__ = ["ConjugateGradient"]

BLOCKS = ("independent", "global")
#: The share of a run's operator products its step estimate may cost where it runs Lanczos on the Hessian itself
#: (a CG step costs about two: the gradient and one Hessian product).
ESTIMATE_SHARE = 0.2


class ConjugateGradient(QuadraticMethod):
    r"""Conjugate gradients (CGLS) on a problem's least-squares form; no learning rate.

    One :meth:`step` evaluates the loss and the normal-equations gradient at the current point,
    builds the conjugate direction and moves along it by the exact minimising step (one Gram
    product). The gradient is recomputed every step rather than updated by recurrence, so
    rounding does not accumulate in it.

    Options:
        blocks: ``"independent"`` (default): every independent least-squares problem (column,
            row or batch member) runs its own CG; ``"global"``: one CG over all unknowns.
        restart: restart with the steepest-descent direction every ``restart`` steps
            (default: never; CG on a quadratic needs none).
    """

    name = "cg"
    summary = "conjugate gradients (CGLS) on a declared least-squares form (or a quadratic loss in one tensor)"
    default_lr = None
    default_max_steps = 1000
    state_attributes = ("_direction", "_gg", "_count")
    options = {
        "blocks": Option(
            choice(*BLOCKS), "independent", "'independent' (one CG per column, row or member) or 'global'"
        ),
        "restart": Option(optional_count, None, "restart with steepest descent every N steps (default: never)"),
    }

    def __init__(self, problem: Problem, params: Params, **options: Any) -> None:
        super().__init__(problem, params, **options)
        form = self._view(one_tensor=True)
        self.form: QuadraticView = form
        self.blocks = blocks = self.options["blocks"]
        self.restart = self.options["restart"]
        self._dims = None if blocks == "global" else form.block_dims
        self._index = None if blocks == "global" else form.block_index
        self._blocks = int(self._index.max()) + 1 if self._index is not None and self._index.numel() else 0
        self._direction: torch.Tensor | None = None
        self._gg: torch.Tensor | None = None
        self._count = 0
        self._spectrum: Spectrum | None = None

    @classmethod
    def unsupported_reason(cls, problem: Problem) -> str | None:
        return view_reason(problem, "conjugate gradients")

    @classmethod
    def suitability(cls, problem: Problem) -> Suitability | None:
        """Rank 20 for a declared ``least_squares()``; 25 for a loss declared ``quadratic = True`` in one parameter
        tensor (what this method runs on: its Hessian by double backward); otherwise not suitable."""
        from gdla_plugins.optimizers._spectral import is_quadratic

        if problem.least_squares() is not None:
            return Suitability(
                20, "least-squares problem: conjugate gradients with exact steps, at most one step per unknown"
            )
        if not is_quadratic(problem):
            return None
        try:  # one tensor or several: only the parameters tell (a problem declares no shapes)
            tensors = len(problem.init_params(torch.Generator().manual_seed(0)))
        except Exception:  # noqa: BLE001 - the run's own init_params call reports a broken one, naming the problem
            return None
        if tensors != 1:
            return None
        return Suitability(
            25, "loss declared quadratic: conjugate gradients with exact steps, at most one step per unknown"
        )

    def _dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self._index is not None:  # one sum per block, handed back to each of its entries
            sums = torch.zeros(self._blocks, dtype=a.dtype, device=a.device).index_add_(0, self._index, a * b)
            return sums[self._index]
        if self._dims is None:
            return (a * b).sum()
        return (a * b).sum(dim=self._dims, keepdim=True)

    def step(self) -> torch.Tensor:
        key = self.form.key
        x = self.params[key]
        loss, grads = self.form.gradient(self.params)
        g = grads[key]
        gg = self._dot(g, g)
        fresh = self._direction is None or (self.restart is not None and self._count % self.restart == 0)
        if fresh:
            d = -g
        else:
            previous = self._gg
            beta = torch.where(previous > 0, gg / torch.where(previous > 0, previous, 1), 0)
            d = -g + beta * self._direction
        curvature = self._dot(d, self.form.hvp({key: d})[key])
        # a converged block has g = 0 and d = 0: it takes no step instead of 0/0
        alpha = torch.where(curvature > 0, -self._dot(g, d) / torch.where(curvature > 0, curvature, 1), 0)
        x.add_(alpha * d)
        self._direction, self._gg = d, gg
        self._count += 1
        return loss

    def spectrum(self) -> Spectrum:
        """Extreme eigenvalues of a block's ``JᵀJ`` (computed once)."""
        if self._spectrum is None:
            self._spectrum = self.form.spectrum()
        return self._spectrum

    def expected_steps(self, tol: float) -> float | None:
        """``min(√κ/2 · ln(2/tol), 2 × block size)``: the CG bound, or finite termination with slack for rounding.

        ``κ`` from :meth:`spectrum` where the problem declares a Gram factor (Lanczos on the factor: cheap). Without
        one, Lanczos runs on the Hessian itself (each product about half a CG step), in runs of growing length
        (:func:`~gdla_plugins.optimizers._spectral.settled_condition`) until one predicts a run whose products
        would be fewer than ``1 / ESTIMATE_SHARE`` times those spent, or one already exceeds the budget
        (``max_steps``): a well-conditioned problem pays 6 products before its run, not 120. The figure is then a
        lower estimate: it may miss small eigenvalues the short runs do not see (the run then stops at
        ``max_steps`` and says so), never warn of a budget the run would not need.
        """
        if not 0 < tol < 1:
            return None
        x = self.params[self.form.key]  # type: ignore[index]
        independent = self._dims is not None or self._index is not None
        size = self.form.block_size(x) * (1 if independent else self.form.distinct_blocks(x))

        def steps(kappa: float) -> float:
            bound = math.sqrt(kappa) / 2 * math.log(2 / tol) if math.isfinite(kappa) else math.inf
            return float(math.ceil(min(bound, 2 * size)))

        if self._spectrum is not None or self.form.declared_spectrum():
            return steps(self.spectrum().worst_condition())
        budget = math.inf if self.max_steps is None else self.max_steps
        return steps(
            settled_condition(
                self.form.spectrum_run(),
                x.numel(),
                enough=lambda kappa: steps(kappa) > budget,
                affordable=lambda kappa: 2 * ESTIMATE_SHARE * steps(kappa),
            )
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lr": None,
            "form": "hessian" if isinstance(self.form, HessianView) else "least-squares",
            "blocks": self.form.block_name if self._dims is not None or self._index is not None else "global",
            "restart": self.restart,
        }


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(ConjugateGradient)
