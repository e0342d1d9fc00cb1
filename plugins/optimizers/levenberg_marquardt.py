r"""Levenberg-Marquardt (damped Gauss-Newton) for any problem that declares a sum of squares.

A problem whose loss is ``loss_of(r(θ))``, increasing in ``‖r‖²``, declares
:class:`~gdla.SumOfSquares` (``Problem.sum_of_squares()``). Each outer iteration linearises the
residual at ``θ`` (``J = ∂r/∂θ`` over all parameters flattened into one vector) and solves the
damped Gauss-Newton system

.. math::

    (J^T J + \lambda D)\,\delta = -J^T r,

then accepts ``θ + δ`` if the gain ratio ``ρ = (‖r‖² − ‖r(θ+δ)‖²) / (‖r‖² − ‖r + Jδ‖²)`` is
positive and otherwise raises ``λ`` and tries again. ``λ`` follows Nielsen's update (as in
Madsen, Nielsen and Tingleff, *Methods for non-linear least squares problems*, and Ceres):
``λ ← λ · max(1/3, 1 − (2ρ − 1)³)`` after a success, ``λ ← λ ν, ν ← 2ν`` after a failure. ``D``
is Moré's scaling, the running maximum of ``diag(JᵀJ)`` (``scipy.optimize.least_squares``'s
``lm``), on the dense path and the identity on the matrix-free one.

Three paths:

* dense (``≤ 2000`` unknowns or residuals on the smaller side and at most ``4·10¹⁰``
  multiply-adds to form the smaller Gram matrix, seconds per step on two cores): ``J`` by reverse
  mode, one batched backward over the rows of the identity (:func:`jacobian`: what
  :func:`torch.func.jacrev` computes), then a Cholesky solve of ``JᵀJ + λD`` (or, with
  fewer residuals than unknowns, of ``JJᵀ + λI``, whose solution ``δ = −Jᵀ(JJᵀ + λI)⁻¹ r`` is the
  same damped step with ``D = I``). A problem holding sparse tensors (``-p storage=sparse``) gets
  ``J`` a pass per row or column instead (vmap has no batching rules for sparse ops), and ``auto``
  takes the matrix-free path for it;
* matrix-free: conjugate gradients on ``JᵀJ + λI`` with ``J v`` from :func:`torch.func.jvp` and
  ``Jᵀ u`` by reverse mode (:func:`pullback`), truncated at a relative residual ``min(0.1, √(‖g‖/‖g₀‖))``
  (inexact Newton: superlinear near the answer);
* gram (a declared ``SumOfSquares.gram``, ``J Jᵀ`` without ``J``, and fewer residuals than unknowns, at most
  ``4000``): the wide dense system, ``δ = −Jᵀ(JJᵀ + λI)⁻¹ r``, with ``Jᵀ`` by one backward (:func:`pullback`):
  the dense path's steps to rounding for an ``m × m`` Cholesky factor per solve, no ``m × unknowns`` Jacobian
  (the toeplitz-net example: 1,792 residuals, 12,007 unknowns).

Both reverse-mode products go through :func:`torch.autograd.grad`, not ``torch.func``: the same
numbers, without the ``torch._dynamo`` import that ``torch.func``'s reverse mode makes on its first
call (2 s in a fresh process), and without the ``sympy`` import of autograd's check of a tensor seed's
shape (:func:`batched_vjp`, :func:`pullback`).

Anchors: ``scipy.optimize.least_squares`` (``method="lm"``), Ceres Solver's trust-region
strategy, pytorch-minimize.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.func import jvp

import gdla
from gdla.capabilities import SumOfSquares
from gdla.errors import InputError
from gdla.optimizer import Optimizer, Suitability
from gdla.options import Option, choice, count, optional_count
from gdla.problem import Params, Problem
from gdla.validation import check_positive

__all__ = ["LevenbergMarquardt", "batched_vjp", "holds_sparse", "jacobian", "pullback"]

METHODS = ("auto", "dense", "gram", "cg")
#: The dense path's limits: the smaller side of ``J`` and the multiply-adds of its smaller Gram matrix.
DENSE_SIDE, DENSE_WORK = 2000, 40_000_000_000
#: The gram path's limit on the residuals (its Cholesky factor: m³/3 = 2·10¹⁰ multiply-adds at 4000).
GRAM_SIDE = 4000


class LevenbergMarquardt(Optimizer):
    r"""Levenberg-Marquardt on a declared :class:`~gdla.SumOfSquares`; no learning rate.

    One :meth:`step` is one outer iteration: it evaluates ``r`` and the Jacobian at the current
    point, then solves damped systems until a step lowers ``‖r‖²`` (at most ``max_retries``
    tries), and returns the problem's loss at the point it started from.

    Options:
        method: ``"auto"`` (gram where declared, else dense when small enough, see the module), ``"dense"``,
            ``"gram"`` (needs the problem's ``SumOfSquares.gram``) or ``"cg"``.
        damping: initial ``λ`` relative to ``max diag(JᵀJ)`` (Nielsen's τ; default ``1e-6``: a wide first trust region,
            which rejected steps narrow at the cost of a solve each; on the toeplitz-net example ``1e-3``
            needs 52 steps, ``1e-9`` 13).
        cg_iterations: CG iterations per solve on the matrix-free path (default ``min(unknowns, 500)``).
        max_retries: damped solves per step before giving up on it (default 20).
    """

    name = "levenberg-marquardt"
    summary = "Levenberg-Marquardt (damped Gauss-Newton, dense or matrix-free CG) on a declared sum of squares"
    default_lr = None
    default_max_steps = 200
    options = {
        "method": Option(choice(*METHODS), "auto", "'dense' (J), 'gram' (declared J Jᵀ), 'cg' (matrix-free) or 'auto'"),
        "damping": Option(check_positive, 1e-6, "initial damping relative to max diag(JᵀJ)"),
        "cg_iterations": Option(optional_count, None, "CG iterations per solve on the matrix-free path"),
        "max_retries": Option(count, 20, "damped solves per step before giving up on it"),
    }
    kernel_free = "evaluates the declared residuals and their Jacobian products with autograd (no fused kernel)"
    state_attributes = ("_lambda", "_nu", "_scale", "_count", "_first_gradient")

    def __init__(self, problem: Problem, params: Params, **options: Any) -> None:
        super().__init__(problem, params, **options)
        self.tau = self.options["damping"]
        self.max_retries = self.options["max_retries"]
        form = problem.sum_of_squares()
        assert form is not None  # unsupported_reason() refused the problem otherwise
        self.form: SumOfSquares = form
        self._keys = [key for key, value in params.items() if value.is_floating_point()]
        self._shapes = [params[key].shape for key in self._keys]
        self._sizes = [params[key].numel() for key in self._keys]
        unknowns = sum(self._sizes)
        with torch.no_grad():
            residuals = int(self.form.residuals(params).numel())
        self.unknowns, self.residual_count = unknowns, residuals
        #: Whether the Jacobian's rows come from one vmapped backward (not through sparse operands: no batching rules).
        self._batched = not holds_sparse(problem)
        self.method = _path(
            self.options["method"], unknowns, residuals, sparse=not self._batched, gram=form.gram is not None
        )
        if self.method == "gram" and form.gram is None:
            raise InputError(
                f"method: 'gram' needs problem {problem.name!r} to declare its residuals' Gram matrix "
                "(SumOfSquares.gram), and it declares none; use 'dense', 'cg' or 'auto'"
            )
        cg_iterations = self.options["cg_iterations"]
        self.cg_iterations = min(unknowns, 500) if cg_iterations is None else cg_iterations
        self._lambda: float | None = None  # set from the first Jacobian (Nielsen's τ · max diag(JᵀJ))
        self._nu = 2.0
        self._scale: torch.Tensor | None = None  # Moré's D (dense path)
        self._count = 0
        self._first_gradient: float | None = None

    # -- capability ---------------------------------------------------------------------------
    @classmethod
    def unsupported_reason(cls, problem: Problem) -> str | None:
        if problem.sum_of_squares() is None:
            return (
                "it needs the problem to declare its loss as a sum of squared residuals "
                "(Problem.sum_of_squares() or least_squares() returning a description); use 'lbfgs' or 'adam'"
            )
        return None

    @classmethod
    def estimated_bytes(cls, problem: Problem, params: Params, options: Mapping[str, Any]) -> int | None:
        """The dense path's ``J`` (residuals × unknowns, twice: :func:`jacobian` builds it from a batch of
        rows) and its smaller Gram matrix with its Cholesky factor; the gram path's declared ``J Jᵀ``, its
        damped copy and their factor (three residuals × residuals matrices); ``None`` on the matrix-free path.

        ``method="auto"`` picks the dense path only for small systems, so this matters for
        ``method="dense"`` on a large problem (a sparse operator's Jacobian is never formed otherwise).
        """
        method = options.get("method", "auto")
        form = problem.sum_of_squares()
        if method not in ("auto", "dense", "gram") or form is None:
            return None
        unknowns = sum(value.numel() for value in params.values() if value.is_floating_point())
        with torch.no_grad():
            residuals = int(form.residuals(params).numel())
        path = _path(method, unknowns, residuals, sparse=holds_sparse(problem), gram=form.gram is not None)
        itemsize = max((value.element_size() for value in params.values() if value.is_floating_point()), default=8)
        if path == "gram":
            return 3 * residuals * residuals * itemsize
        if path != "dense":
            return None
        side = min(unknowns, residuals)
        return (2 * unknowns * residuals + 2 * side * side) * itemsize

    @classmethod
    def suitability(cls, problem: Problem) -> Suitability | None:
        if problem.sum_of_squares() is None:
            return None
        return Suitability(
            45, "sum of squared residuals: Levenberg-Marquardt (Gauss-Newton steps with trust-region damping)"
        )

    # -- flat parameter vector ----------------------------------------------------------------
    def _flat(self) -> torch.Tensor:
        return torch.cat([self.params[key].detach().reshape(-1) for key in self._keys])

    def _unflatten(self, x: torch.Tensor) -> Params:
        out = dict(self.params)
        for key, piece, shape in zip(self._keys, x.split(self._sizes), self._shapes, strict=True):
            out[key] = piece.view(shape)
        return out

    def _residual_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        def residual(x: torch.Tensor) -> torch.Tensor:
            return self.form.residuals(self._unflatten(x)).reshape(-1)

        return residual

    def _loss(self, r: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return self.form.loss_of(r.view(shape))

    # -- the step -----------------------------------------------------------------------------
    def step(self) -> torch.Tensor:
        x = self._flat()
        f = self._residual_fn()
        r_full = self.form.residuals(self._unflatten(x)).detach()
        shape = r_full.shape
        r = r_full.reshape(-1)
        loss = self._loss(r, shape).detach()
        if not bool(torch.isfinite(r).all()):
            return loss
        cost = float(r @ r)
        if self.method == "dense":
            J = jacobian(f, x, batched=self._batched)  # shape: (residuals, unknowns)
            dense, g, top = self._dense_solver(J, r)
            solve = _with_image(dense, lambda d: J @ d)
        elif self.method == "gram":
            K = self.form.gram(self._unflatten(x)).detach()  # J Jᵀ, shape: (residuals, residuals)
            transpose = pullback(f, x)
            g = transpose(r)
            top = float(torch.diagonal(K).max())

            def solve(lam: float) -> tuple[torch.Tensor, torch.Tensor]:
                z = _residual_side(K, r, lam)
                return -transpose(z), -(K @ z)

        else:
            transpose = pullback(f, x)

            def linear(d: torch.Tensor) -> torch.Tensor:
                return jvp(f, (x,), (d,))[1].detach()

            g = transpose(r)
            top = float(linear(g).square().sum()) / max(float(g @ g), 1e-300)  # Rayleigh quotient of JᵀJ at g
            solve = _with_image(self._cg_solver(linear, transpose, g), linear)
        gnorm = float(g.abs().max()) if g.numel() else 0.0
        if gnorm == 0.0 or cost == 0.0:
            self._count += 1
            return loss
        if self._lambda is None:
            self._lambda = self.tau * max(top, 1e-300)
        for _ in range(self.max_retries):
            delta, moved = solve(self._lambda)  # the step and J δ
            predicted = -(2 * float(g @ delta) + float(moved.square().sum()))
            trial = x + delta
            r_new = f(trial).detach()
            actual = cost - float(r_new @ r_new) if bool(torch.isfinite(r_new).all()) else -math.inf
            if predicted > 0 and actual > 0:
                rho = actual / predicted
                self._lambda *= max(1 / 3, 1 - (2 * rho - 1) ** 3)
                self._nu = 2.0
                for key, piece in self._unflatten(trial).items():
                    if key in self._keys:
                        self.params[key].copy_(piece)
                break
            # a failed step: raise λ, but keep it finite (at the answer rounding makes every step fail)
            ceiling = 1e16 * max(top, 1e-300)
            if self._lambda >= ceiling:
                break
            self._lambda = min(self._lambda * self._nu, ceiling)
            self._nu *= 2
        self._count += 1
        return loss

    def _dense_solver(
        self, J: torch.Tensor, r: torch.Tensor
    ) -> tuple[Callable[[float], torch.Tensor], torch.Tensor, float]:
        g = J.mT @ r
        m, n = J.shape
        if n <= m:
            A = J.mT @ J
            diagonal = torch.diagonal(A)
            self._scale = diagonal.clone() if self._scale is None else torch.maximum(self._scale, diagonal)
            scale = self._scale.clamp(min=float(diagonal.max()) * 1e-12 + 1e-300)

            def solve(lam: float) -> torch.Tensor:
                return -_spd_solve(A + torch.diag(lam * scale), g)

            return solve, g, float(diagonal.max())
        # fewer residuals than unknowns: the same step through the m × m system (D = I)
        K = J @ J.mT

        def solve_wide(lam: float) -> torch.Tensor:
            return -(J.mT @ _residual_side(K, r, lam))

        return solve_wide, g, float(torch.diagonal(K).max())

    def _cg_solver(
        self,
        linear: Callable[[torch.Tensor], torch.Tensor],
        transpose: Callable[[torch.Tensor], torch.Tensor],
        g: torch.Tensor,
    ) -> Callable[[float], torch.Tensor]:
        gnorm = float(g.norm())
        if self._first_gradient is None:
            self._first_gradient = gnorm
        # inexact-Newton forcing term (Eisenstat-Walker style): tighter as the gradient falls, for superlinear steps
        target = min(0.1, math.sqrt(gnorm / self._first_gradient)) * gnorm

        def solve(lam: float) -> torch.Tensor:
            d = torch.zeros_like(g)
            residual = -g.clone()
            p = residual.clone()
            rr = float(residual @ residual)
            for _ in range(self.cg_iterations):
                Ap = transpose(linear(p)) + lam * p
                curvature = float(p @ Ap)
                if curvature <= 0:
                    break
                alpha = rr / curvature
                d = d + alpha * p
                residual = residual - alpha * Ap
                new = float(residual @ residual)
                if math.sqrt(new) <= target:
                    break
                p = residual + (new / rr) * p
                rr = new
            return d

        return solve

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lr": None,
            "path": self.method,
            "unknowns": self.unknowns,
            "residuals": self.residual_count,
        }


def _path(method: str, unknowns: int, residuals: int, sparse: bool = False, gram: bool = False) -> str:
    """``"dense"``, ``"gram"`` or ``"cg"``: ``method`` itself, or for ``"auto"`` gram where ``J Jᵀ`` is declared
    (``gram``) and there are fewer residuals than unknowns, at most :data:`GRAM_SIDE`; else dense when small (see the
    module) and the problem holds no sparse tensors (``sparse``: a pass per row or column for its Jacobian)."""
    if method != "auto":
        return method
    if gram and residuals < unknowns and residuals <= GRAM_SIDE:
        return "gram"
    if sparse:
        return "cg"
    side = min(unknowns, residuals)
    small = side <= DENSE_SIDE and side * side * max(unknowns, residuals) <= DENSE_WORK
    return "dense" if small else "cg"


def holds_sparse(problem: Problem) -> bool:
    """Whether ``problem`` holds a sparse tensor (``-p storage=sparse``): its residuals then run sparse ops, which
    torch's vmap (the batched Jacobian of :func:`jacobian`) cannot batch."""
    return any(
        isinstance(value, torch.Tensor) and value.layout != torch.strided
        for value in getattr(problem, "__dict__", {}).values()
    )


def jacobian(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batched: bool = True) -> torch.Tensor:
    """``∂f/∂x`` at ``x`` (``f``: vector to vector), rows by one batched backward over the identity's rows.

    The computation of :func:`torch.func.jacrev` (a vectorised ``vjp`` of each basis row), bit for
    bit, through :func:`batched_vjp`; an output that does not depend on ``x`` gives zeros. ``batched=False``:
    one pass per row (a backward, :func:`_vjp`) or per column (a forward-mode ``jvp``), whichever side is
    smaller, the same numbers up to rounding: for an ``f`` through sparse tensors, whose ops have no batching
    rules.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        r = f(x)
    if not r.requires_grad:
        return torch.zeros(r.numel(), x.numel(), dtype=r.dtype, device=r.device)
    basis = torch.eye(r.numel(), dtype=r.dtype, device=r.device)
    if not batched and r.numel() <= x.numel():
        return torch.stack([_vjp(r, x, row) for row in basis])
    if not batched:
        columns = torch.eye(x.numel(), dtype=x.dtype, device=x.device)
        return torch.stack([jvp(f, (x.detach(),), (column,))[1].detach() for column in columns], dim=-1)
    J = batched_vjp(r, x, basis)
    return torch.zeros(r.numel(), x.numel(), dtype=r.dtype, device=r.device) if J is None else J.detach()


def batched_vjp(r: torch.Tensor, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor | None:
    """``seeds[i] · ∂r/∂x`` for every row ``i`` of ``seeds`` (shape ``(k, *r.shape)``), one vmapped backward; ``None``
    where ``r`` does not depend on ``x``.

    What ``torch.autograd.grad(r, x, seeds, is_grads_batched=True, allow_unused=True)`` computes, through the same
    two calls it makes after checking its arguments (:func:`torch._vmap_internals._vmap` over the autograd
    engine's backward), without that check: its comparison of a tensor seed's shape imports ``sympy``, 0.6–2 s
    in a fresh process. The seeds here are built to ``r``'s shape and dtype. Where a torch release lacks those
    private entry points, the public call (and its import).
    """
    try:
        from torch._vmap_internals import _vmap
        from torch.autograd.graph import _engine_run_backward
    except ImportError:  # pragma: no cover - another torch release
        return torch.autograd.grad(r, x, seeds, is_grads_batched=True, allow_unused=True)[0]

    def vjp(seed: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor | None, ...]:
        return _engine_run_backward((r,), seed, False, False, (x,), True, accumulate_grad=False)

    return _vmap(vjp, 0, 0, allow_none_pass_through=True)((seeds,))[0]


def pullback(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``u ↦ Jᵀu`` with ``J = ∂f/∂x`` at ``x``, ``f`` evaluated once: what :func:`torch.func.vjp`'s pullback gives,
    bit for bit.

    Each call differentiates the scalar ``f(x) · u``, whose backward hands ``1 · u = u`` exactly to
    ``f``'s graph: the numbers of a backward seeded with ``u``, without :func:`torch.autograd.grad`'s
    check of a tensor seed's shape (which imports ``sympy``, 0.6 s in a fresh process).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        r = f(x)

    def transpose(u: torch.Tensor) -> torch.Tensor:
        return _vjp(r, x, u) if r.requires_grad else torch.zeros_like(x)

    return transpose


def _vjp(r: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``Jᵀu`` for ``r = f(x)`` (a graph that reaches ``x``, kept for the next call): the backward of ``r · u``."""
    with torch.enable_grad():
        (g,) = torch.autograd.grad(torch.dot(r, u), x, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g.detach()


def _with_image(
    solve: Callable[[float], torch.Tensor], linear: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[float], tuple[torch.Tensor, torch.Tensor]]:
    """A damped solve ``λ ↦ δ`` turned into ``λ ↦ (δ, J δ)`` with ``linear`` the map ``d ↦ J d``."""

    def both(lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        delta = solve(lam)
        return delta, linear(delta)

    return both


def _residual_side(K: torch.Tensor, r: torch.Tensor, lam: float) -> torch.Tensor:
    """``z = (K + λI)⁻¹ r`` for ``K = J Jᵀ``: the wide damped system, whose step is ``δ = −Jᵀ z``."""
    damped = K.clone()
    damped.diagonal().add_(lam)  # K + λI bit for bit (off the diagonal K + λ·0), without an m × m identity
    return _spd_solve(damped, r)


def _spd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``A x = b`` for symmetric positive (semi-)definite ``A``: Cholesky, or least squares if it fails."""
    factor, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(b.unsqueeze(-1), factor).squeeze(-1)
    return torch.linalg.lstsq(A, b.unsqueeze(-1)).solution.squeeze(-1)


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(LevenbergMarquardt)
