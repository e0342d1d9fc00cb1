r"""The quadratic objective that ``cg``, ``heavy-ball`` and ``line-search`` work on, read from capabilities.

Two ways a problem can offer one, checked in this order:

* it declares :meth:`~gdla.Problem.least_squares` (a :class:`~gdla.LinearLeastSquares` ``r = J x − b``):
  the methods minimise ``½‖J x − b‖²`` with gradient ``Jᵀr`` and Hessian ``JᵀJ``, applied as
  products; the loss they report is the problem's own, ``loss_of(r)``;
* it declares ``quadratic = True``: the gradient comes from ``problem.loss_and_grad`` and the
  Hessian from double backward through ``problem.loss``.

Both give a gradient and a Hessian of one and the same quadratic objective (up to a constant
factor), so a method's iterates do not depend on which one it works on; methods whose options are
in the loss's units (``heavy-ball``'s ``L`` and ``mu``) prefer the loss where it is declared quadratic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from gdla.capabilities import LinearLeastSquares
from gdla.errors import InputError
from gdla.optimizer import Optimizer
from gdla.problem import Params, Problem
from gdla_plugins.optimizers._spectral import (
    HESSIAN_STEPS,
    Lanczos,
    Spectrum,
    declares_gram,
    flatten,
    gram_extremes,
    hessian_extremes,
    hessian_lanczos,
    hessian_operator,
    hessian_steps,
    is_quadratic,
    problem_options,
    unflatten,
)

__all__ = ["HessianView", "LeastSquaresView", "QuadraticMethod", "QuadraticView", "quadratic_view", "view_reason"]


class QuadraticView:
    """A quadratic objective over ``params``: gradient, Hessian products and the Hessian's spectrum."""

    #: The single parameter tensor a least-squares view acts on (``None``: all of them).
    key: str | None = None
    #: Dimensions of that tensor forming one independent problem (``None``: all).
    block_dims: tuple[int, ...] | None = None
    #: What a block is, for reports.
    block_name: str = "global"
    #: The block of every entry of a 1-D parameter, where blocks are not a tensor dimension.
    block_index: torch.Tensor | None = None

    def gradient(self, params: Params) -> tuple[torch.Tensor, Params]:
        """``(loss, g)``: the problem's loss and the quadratic's gradient at ``params``."""
        raise NotImplementedError

    def hvp(self, d: Params) -> Params:
        """The quadratic's Hessian applied to ``d``."""
        raise NotImplementedError

    def spectrum(self, steps: int | None = None) -> Spectrum:
        """Extreme eigenvalues of the Hessian (per independent operator where known).

        ``steps``: the Lanczos steps on the Hessian itself where no Gram factor is declared (default
        :data:`~gdla_plugins.optimizers._spectral.HESSIAN_STEPS`); a declared factor's estimate ignores it.
        """
        raise NotImplementedError

    def spectrum_run(self) -> Callable[[int], Spectrum]:
        """``steps ↦`` :meth:`spectrum` of that many Lanczos steps, as one run that a longer ask goes on with
        (:class:`~gdla_plugins.optimizers._spectral.Lanczos`: it pays only the new steps, and gives the bits of a
        fresh run); its basis lives as long as the caller keeps the function. A declared spectrum: :meth:`spectrum`."""
        raise NotImplementedError

    def declared_spectrum(self) -> bool:
        """Whether :meth:`spectrum` reads a declared Gram factor (cheap) rather than running Lanczos on the Hessian."""
        raise NotImplementedError

    def block_size(self, x: torch.Tensor) -> int:
        """Unknowns in one block of ``x``."""
        return x.numel()

    def distinct_blocks(self, x: torch.Tensor) -> int:
        """How many different block operators ``x`` meets."""
        return 1


class LeastSquaresView(QuadraticView):
    """``½‖J x − b‖²`` from a declared :class:`~gdla.LinearLeastSquares`."""

    def __init__(self, form: LinearLeastSquares, params: Params) -> None:
        self.form = form
        self.key = form.key
        self.block_dims = form.block_dims
        self.block_name = form.block_name
        self.block_index = form.block_index
        self._template = params[form.key]

    def gradient(self, params: Params) -> tuple[torch.Tensor, Params]:
        loss, g = self.form.gradient(params[self.form.key])
        return loss, {self.form.key: g}

    def hvp(self, d: Params) -> Params:
        return {self.form.key: self.form.gram(d[self.form.key])}

    def spectrum(self, steps: int | None = None) -> Spectrum:
        if self.form.gram_factor is not None:
            return gram_extremes(self.form.gram_factor)
        return self._lanczos().extremes(HESSIAN_STEPS if steps is None else steps)

    def spectrum_run(self) -> Callable[[int], Spectrum]:
        return self.spectrum if self.form.gram_factor is not None else self._lanczos().extremes

    def _lanczos(self) -> Lanczos:
        """Lanczos on ``JᵀJ`` from a fixed seeded start, not started (its operator holds the form, not the view)."""
        x, form = self._template, self.form
        generator = torch.Generator(device="cpu").manual_seed(0)
        start = torch.randn(x.numel(), generator=generator, dtype=torch.float64).to(x)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return form.gram(v.view_as(x)).reshape(-1)

        return Lanczos(matvec, start)

    def declared_spectrum(self) -> bool:
        return self.form.gram_factor is not None

    def block_size(self, x: torch.Tensor) -> int:
        return self.form.block_size(x)

    def distinct_blocks(self, x: torch.Tensor) -> int:
        if self.form.distinct_blocks is not None:
            return self.form.distinct_blocks
        return x.numel() // max(self.block_size(x), 1)


class HessianView(QuadraticView):
    """A loss declared ``quadratic = True``: its own gradient and its Hessian by double backward."""

    def __init__(self, problem: Problem, params: Params, backend: str) -> None:
        self.problem = problem
        self.params = params
        self.backend = backend
        if len(params) == 1:
            self.key = next(iter(params))
        self._hvp = hessian_operator(problem, params)
        self._spectrum: Spectrum | None = None

    def gradient(self, params: Params) -> tuple[torch.Tensor, Params]:
        return self.problem.loss_and_grad(params, self.backend)

    def hvp(self, d: Params) -> Params:
        return unflatten(self._hvp(flatten(d)), d)

    def spectrum(self, steps: int | None = None) -> Spectrum:
        if steps is None or self.declared_spectrum():
            return hessian_extremes(self.problem, self.params)
        return hessian_extremes(self.problem, self.params, steps=steps, operator=self._hvp)

    def spectrum_run(self) -> Callable[[int], Spectrum]:
        if self.declared_spectrum():
            return self.spectrum
        run = hessian_lanczos(self.problem, self.params, operator=self._hvp)
        return lambda steps: run.extremes(hessian_steps(steps, run.d))

    def declared_spectrum(self) -> bool:
        return declares_gram(self.problem)


def quadratic_view(
    problem: Problem, params: Params, backend: str = "autograd", *, prefer_loss: bool = False
) -> QuadraticView | None:
    """The quadratic objective ``problem`` declares, or ``None``.

    ``prefer_loss``: when the problem declares both, work on its own loss (``quadratic = True``)
    rather than on ``½‖J x − b‖²``, so step sizes and Hessian eigenvalues are in the loss's units.
    """
    form = problem.least_squares()
    if prefer_loss and is_quadratic(problem):
        return HessianView(problem, params, backend)
    if form is not None and form.key in params:
        return LeastSquaresView(form, params)
    if is_quadratic(problem):
        return HessianView(problem, params, backend)
    return None


def view_reason(problem: Problem, method: str) -> str | None:
    """Why ``method`` (which needs a quadratic objective) cannot run on ``problem``; ``None`` if it can."""
    if problem.least_squares() is not None or is_quadratic(problem):
        return None
    return (
        f"{method} needs a linear least-squares (or quadratic) loss, and problem {problem.name!r} "
        f"({problem_options(problem)}) declares neither: a problem offers one through least_squares() "
        "or 'quadratic = True'; use 'lbfgs' or 'adam'"
    )


class QuadraticMethod(Optimizer):
    """Base of the methods that work on a problem's quadratic objective (``cg``, ``line-search``, ``heavy-ball``).

    On a declared least-squares form they compute with its operator in plain tensor algebra (no fused
    kernel); on a loss declared ``quadratic`` they evaluate ``problem.loss_and_grad``, fused exactly when
    the problem is.
    """

    kernel_free = "computes with the problem's least-squares operator in plain tensor algebra (no fused kernel)"

    @classmethod
    def fused_reason(cls, problem: Problem, options: Mapping[str, Any]) -> str | None:
        if problem.least_squares() is None:
            return problem.fused_reason()
        return super().fused_reason(problem, options)

    def _view(self, *, prefer_loss: bool = False, one_tensor: bool = False) -> QuadraticView:
        """The problem's quadratic objective (:func:`quadratic_view`); an :class:`InputError` where there is none
        on these parameters (or, with ``one_tensor``, none on a single parameter tensor)."""
        view = quadratic_view(self.problem, self.params, self.backend, prefer_loss=prefer_loss)
        if view is None or (one_tensor and view.key is None):
            tensor = "one parameter tensor and " if one_tensor else ""
            raise InputError(
                f"optimizer: {self.name!r} cannot solve problem {self.problem.name!r}: it needs {tensor}a "
                "least-squares loss on its parameters; use 'adam' or 'lbfgs'"
            )
        return view
