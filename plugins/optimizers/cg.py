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

A *form* exposes a problem's least-squares structure through ``gradient(x) -> (loss, g)`` (the
loss read off the residual the gradient needs) and ``gram(d) = JᵀJ d`` on one parameter
tensor. Problems are recognised by ``name`` and documented attributes, never by importing their
modules: ``inverse`` (CGLS for all right-hand sides at once), ``sparse`` with one linear hop
(masked least squares, row-wise), ``toeplitz`` (band least squares from ``design()``); any
other problem declared ``quadratic`` goes through its gradient and Hessian-vector products.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import torch

import gdla
from gdla.errors import InputError
from gdla.optimizer import Optimizer
from gdla.problem import Params, Problem
from gdla.validation import check_choice
from gdla_plugins.optimizers._spectral import (
    Spectrum,
    gram_extremes,
    hessian_extremes,
    hessian_operator,
    is_quadratic,
    quadratic_reason,
)

__all__ = ["ConjugateGradient", "Form", "form_reason", "make_form"]

LossFn = Callable[[torch.Tensor], torch.Tensor]


class Form(abc.ABC):
    """Base of the least-squares views; see the module docstring."""

    #: Name of the parameter tensor the form updates.
    key: str = ""
    #: Dimensions of that tensor that belong to one independent problem (``None``: all of them).
    block_dims: tuple[int, ...] | None = None
    #: What a block is, for ``describe()``.
    block_name: str = "global"

    @abc.abstractmethod
    def gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, g)`` at ``x``: the problem's loss and the normal-equations residual ``Jᵀ(Jx − b)`` (scaled)."""

    @abc.abstractmethod
    def gram(self, d: torch.Tensor) -> torch.Tensor:
        """``JᵀJ d`` with the scale of :meth:`gradient`, so ``g(x + d) = g(x) + gram(d)``."""

    @abc.abstractmethod
    def spectrum(self) -> Spectrum:
        """Extreme eigenvalues of one block's ``JᵀJ`` (worst over blocks), for step estimates."""

    def block_size(self, x: torch.Tensor) -> int:
        """Unknowns in one block (CG's finite-termination bound)."""
        if self.block_dims is None:
            return x.numel()
        size = 1
        for dim in self.block_dims:
            size *= x.shape[dim]
        return size

    def distinct_blocks(self, x: torch.Tensor) -> int:
        """How many different block operators there are: a global CG terminates after at most
        this many times the block size steps (one block operator repeated adds no eigenvalues)."""
        return x.numel() // self.block_size(x)


def _checked_loss(problem: Problem, params: Params, key: str, x: torch.Tensor, candidate: LossFn) -> LossFn | None:
    """``candidate`` if it reproduces ``problem.loss`` at ``x``, else ``None`` (then the problem's own is used)."""
    with torch.no_grad():
        mine = candidate(x)
        theirs = problem.loss({**params, key: x})
    rtol = 100 * torch.finfo(x.dtype).eps
    return candidate if bool(torch.isclose(mine, theirs, rtol=rtol, atol=1e-300)) else None


class InverseForm(Form):
    r"""``A M = I`` (right), ``M A = I`` (left) or ``(AM + MA)/2 = I`` (both), batched.

    Right: ``g = Aᵀ(AM − I)``, columns of ``M`` are independent. Left: ``g = (MA − I)Aᵀ``,
    rows are. Both: ``g = (AᵀR + RAᵀ)/2`` with ``R = (AM + MA)/2 − I``, one block per matrix.
    """

    key = "M"

    def __init__(self, problem: Problem, params: Params) -> None:
        self.problem = problem
        self.A: torch.Tensor = problem.A  # type: ignore[attr-defined]
        self.side: str = problem.side  # type: ignore[attr-defined]
        k = self.A.shape[-1] if self.side == "left" else self.A.shape[-2]
        self.eye = torch.eye(k, dtype=self.A.dtype, device=self.A.device)
        self.block_dims, self.block_name = {
            "right": ((-2,), "column"),
            "left": ((-1,), "row"),
            "both": ((-2, -1), "matrix"),
        }[self.side]
        self._loss = _checked_loss(problem, params, self.key, params[self.key], lambda x: self._mse(self._r(x)))
        self.params = params

    def _r(self, x: torch.Tensor) -> torch.Tensor:
        if self.side == "right":
            return self.A @ x - self.eye
        if self.side == "left":
            return x @ self.A - self.eye
        return (self.A @ x + x @ self.A) / 2 - self.eye

    @staticmethod
    def _mse(r: torch.Tensor) -> torch.Tensor:
        return r.square().mean(dim=(-2, -1)).sum()

    def _adjoint(self, r: torch.Tensor) -> torch.Tensor:
        if self.side == "right":
            return self.A.mT @ r
        if self.side == "left":
            return r @ self.A.mT
        return (self.A.mT @ r + r @ self.A.mT) / 2

    def gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self._r(x)
        loss = self._mse(r) if self._loss is not None else self.problem.loss({**self.params, self.key: x})
        return loss, self._adjoint(r)

    def gram(self, d: torch.Tensor) -> torch.Tensor:
        return self._adjoint(self._r(d) + self.eye)  # the linear part of the residual map

    def spectrum(self) -> Spectrum:
        if self.side != "both":
            return gram_extremes(self.A)
        return hessian_extremes(self.problem, self.params)

    def distinct_blocks(self, x: torch.Tensor) -> int:
        return self.A[..., 0, 0].numel()  # every column (row) of one matrix meets the same A


class SparseForm(Form):
    r"""One linear hop of the masked operator: ``min_U ‖(Init + Ω ⊙ U) X − Y‖_F``.

    ``g = Ω ⊙ ((S X − Y) Xᵀ)`` and ``JᵀJ d = Ω ⊙ ((Ω ⊙ d) X Xᵀ)``: row ``i`` of ``U`` only
    meets row ``i`` of ``S X``, so every row (its free entries) is its own small problem. The
    minimiser is the same for the ``"frobenius"`` (``‖·‖_F``) and ``"mse"`` losses.
    """

    key = "U"
    block_dims = (-1,)
    block_name = "row"

    def __init__(self, problem: Problem, params: Params) -> None:
        self.problem = problem
        self.X: torch.Tensor = problem.X  # type: ignore[attr-defined]
        self.Y: torch.Tensor = problem.Y  # type: ignore[attr-defined]
        self.omega: torch.Tensor = problem.omega  # type: ignore[attr-defined]
        self.init: torch.Tensor = problem.init  # type: ignore[attr-defined]
        self.xxt = self.X @ self.X.mT
        kind = getattr(problem, "loss_kind", "frobenius")
        self._of_residual: LossFn = (
            (lambda r: r.square().mean()) if kind == "mse" else (lambda r: torch.linalg.matrix_norm(r))
        )
        self.params = params
        self._loss = _checked_loss(problem, params, self.key, params[self.key], lambda u: self._of_residual(self._r(u)))

    def _r(self, u: torch.Tensor) -> torch.Tensor:
        return (self.init + self.omega * u) @ self.X - self.Y

    def gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self._r(x)
        loss = self._of_residual(r) if self._loss is not None else self.problem.loss({**self.params, self.key: x})
        return loss, self.omega * (r @ self.X.mT)

    def gram(self, d: torch.Tensor) -> torch.Tensor:
        return self.omega * ((self.omega * d) @ self.xxt)

    def spectrum(self) -> Spectrum:
        # a row's Gram is a principal submatrix of X Xᵀ: its spectrum lies inside X Xᵀ's
        return gram_extremes(self.X.mT)


class ToeplitzForm(Form):
    r"""Band least squares from ``problem.design()``: ``loss(c) = Σ_batch ‖D c − t‖²``.

    ``g = Dᵀ(D c − t)``, ``JᵀJ d = Dᵀ D d``; every batch member is its own ``2b + 1``-unknown problem.
    """

    key = "band"
    block_dims = (-1,)
    block_name = "matrix"

    def __init__(self, problem: Problem, params: Params) -> None:
        self.problem = problem
        self.D, self.t = problem.design()  # type: ignore[attr-defined]  # (nK, 2b+1), (..., nK)
        self.params = params
        self._loss = _checked_loss(problem, params, self.key, params[self.key], lambda c: self._r(c).square().sum())

    def _r(self, c: torch.Tensor) -> torch.Tensor:
        return c @ self.D.mT - self.t

    def gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self._r(x)
        loss = r.square().sum() if self._loss is not None else self.problem.loss({**self.params, self.key: x})
        return loss, r @ self.D

    def gram(self, d: torch.Tensor) -> torch.Tensor:
        return (d @ self.D.mT) @ self.D

    def spectrum(self) -> Spectrum:
        return gram_extremes(self.D)

    def distinct_blocks(self, x: torch.Tensor) -> int:
        return 1  # one design matrix for the whole batch


class GenericForm(Form):
    """Any problem with a quadratic loss and one parameter tensor: its gradient and Hessian.

    The Hessian of a quadratic is constant, so the autograd graph for Hessian-vector products is
    built once, at the start.
    """

    def __init__(self, problem: Problem, params: Params, backend: str) -> None:
        self.problem = problem
        self.params = params
        self.backend = backend
        self.key = next(iter(params))
        self._hvp = hessian_operator(problem, params)

    def gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, grads = self.problem.loss_and_grad({**self.params, self.key: x}, self.backend)
        return loss, grads[self.key]

    def gram(self, d: torch.Tensor) -> torch.Tensor:
        return self._hvp(d.reshape(-1)).view_as(d)

    def spectrum(self) -> Spectrum:
        return hessian_extremes(self.problem, self.params)


def make_form(problem: Problem, params: Params, backend: str = "autograd") -> Form | None:
    """The least-squares view of ``problem``, or ``None`` if it has none."""
    name = getattr(problem, "name", "")
    if name == "inverse" and hasattr(problem, "A") and hasattr(problem, "side") and "M" in params:
        return InverseForm(problem, params)
    if name == "sparse" and all(hasattr(problem, a) for a in ("X", "Y", "omega", "init")) and "U" in params:
        if getattr(problem, "hops", None) == 1 and getattr(problem, "activation", None) in (None, "identity"):
            return SparseForm(problem, params)
        return None
    if name == "toeplitz" and callable(getattr(problem, "design", None)) and "band" in params:
        return ToeplitzForm(problem, params)
    if len(params) == 1:
        if is_quadratic(problem):
            return GenericForm(problem, params, backend)
    return None


def form_reason(problem: Problem) -> str | None:
    """Why ``problem`` has no least-squares view (``None`` if it has one); no parameters needed."""
    name = getattr(problem, "name", "")
    if name in ("inverse", "toeplitz"):
        return None
    if name == "sparse":
        hops, activation = getattr(problem, "hops", None), getattr(problem, "activation", None)
        if hops == 1 and activation in (None, "identity"):
            return None
        return (
            f"it is a least-squares method and problem 'sparse' with hops={hops!r}, activation={activation!r} "
            "is not a least-squares problem (only one hop without activation is); use 'adam' or 'lbfgs'"
        )
    return quadratic_reason(problem, "it")


BLOCKS = ("independent", "global")
OPTIONS = ("blocks", "restart")


class ConjugateGradient(Optimizer):
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
    summary = "conjugate gradients (CGLS) on the least-squares form: inverse, sparse (1 linear hop), toeplitz"
    default_lr = None
    default_max_steps = 1000

    def __init__(
        self, problem: Problem, params: Params, *, lr: float | None = None, backend: str = "autograd", **options: Any
    ) -> None:
        if lr is not None:
            raise InputError(
                f"lr: optimizer 'cg' has no learning rate (its steps are exact), received {lr!r}; leave it out"
            )
        unknown = sorted(set(options) - set(OPTIONS) - {"max_steps"})
        if unknown:
            raise InputError(
                f"options: optimizer 'cg' accepts {', '.join(repr(o) for o in OPTIONS)}, "
                f"received unknown {', '.join(repr(o) for o in unknown)}"
            )
        blocks = check_choice(options.pop("blocks", "independent"), "blocks", BLOCKS)
        restart = options.pop("restart", None)
        if restart is not None and (isinstance(restart, bool) or not isinstance(restart, int) or restart < 1):
            raise InputError(f"restart: expected None or an integer >= 1, received {restart!r}")
        super().__init__(problem, params, lr=None, backend=backend, **options)
        form = make_form(problem, params, backend)
        if form is None:
            raise InputError(
                f"optimizer: 'cg' cannot solve problem {problem.name!r}: it needs one parameter tensor and a "
                "least-squares loss; use 'adam' or 'lbfgs'"
            )
        self.form = form
        self.blocks = blocks
        self.restart = restart
        self._dims = None if blocks == "global" else form.block_dims
        self._direction: torch.Tensor | None = None
        self._gg: torch.Tensor | None = None
        self._count = 0
        self._spectrum: Spectrum | None = None

    @classmethod
    def unsupported_reason(cls, problem: Problem) -> str | None:
        return form_reason(problem)

    def _dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self._dims is None:
            return (a * b).sum()
        return (a * b).sum(dim=self._dims, keepdim=True)

    def step(self) -> torch.Tensor:
        x = self.params[self.form.key]
        loss, g = self.form.gradient(x)
        gg = self._dot(g, g)
        fresh = self._direction is None or (self.restart is not None and self._count % self.restart == 0)
        if fresh:
            d = -g
        else:
            previous = self._gg
            beta = torch.where(previous > 0, gg / torch.where(previous > 0, previous, 1), 0)
            d = -g + beta * self._direction
        curvature = self._dot(d, self.form.gram(d))
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
        """``min(√κ/2 · ln(2/tol), 2 × block size)``: the CG bound, or finite termination with slack for rounding."""
        if not 0 < tol < 1:
            return None
        kappa = self.spectrum().worst_condition()
        bound = math.sqrt(kappa) / 2 * math.log(2 / tol) if math.isfinite(kappa) else math.inf
        x = self.params[self.form.key]
        size = self.form.block_size(x) * (1 if self._dims is not None else self.form.distinct_blocks(x))
        return float(math.ceil(min(bound, 2 * size)))

    @property
    def ran_backend(self) -> str:
        # only the generic form goes through problem.loss_and_grad; the others are plain tensor algebra
        return self.backend if isinstance(self.form, GenericForm) else "autograd"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lr": None,
            "form": type(self.form).__name__.removesuffix("Form").lower(),
            "blocks": self.form.block_name if self._dims is not None else "global",
            "restart": self.restart,
        }


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(ConjugateGradient)
