r"""Newton-Schulz: the inverse (or pseudo-inverse) of a matrix in tens of steps.

For ``A`` of shape ``(..., m, n)`` the iteration

.. math::

    X_{k+1} = X_k (2I - A X_k) = 2X_k - X_k A X_k, \qquad
    X_0 = \frac{A^T}{\|A\|_1 \|A\|_\infty}

converges to the Moore-Penrose pseudo-inverse ``A⁺`` (``A⁻¹`` when ``A`` is invertible). Each
singular value ``σ`` of ``A`` carries ``t_k = σ² x_k`` (``x_k`` the matching singular value of
``X_k``) with ``1 − t_{k+1} = (1 − t_k)²``, so after a doubling phase of ``log₂(1/t₀)`` steps the
error squares every step. The start makes ``0 < t₀ ≤ 1`` for every nonzero ``σ`` because
``σ_max² ≤ ‖A‖₁‖A‖_∞``; zero singular values keep ``t = 0``, so a rank-deficient ``A`` lands on
``A⁺``. Steps to a residual ``tol``: about ``log₂(ln(1/tol) / t₀)`` with ``t₀ = σ_min² / (‖A‖₁‖A‖_∞)``.

The module also offers :func:`polar_newton_schulz` (from :mod:`gdla_plugins.optimizers._polar`), the same idea for
the orthonormal (polar) factor of a matrix.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

import gdla
from gdla.backend import extension_status
from gdla.capabilities import MatrixInverse
from gdla.errors import ConvergenceWarning, InputError, UsageError
from gdla.limits import RUN_MAX_N, SMALL_MAX_N
from gdla.mesh import full_tensor, identity_like, is_dtensor, replicated
from gdla.optimizer import Optimizer, Stretch, Suitability
from gdla.options import Option, choice
from gdla.problem import Params, Problem
from gdla.stopping import BLOW_UP
from gdla.validation import check_choice, check_finite, check_int, check_matrix, check_nonnegative
from gdla.warm_start import is_given
from gdla_plugins.optimizers._polar import polar_newton_schulz
from gdla_plugins.optimizers._spectral import gram_extremes

__all__ = ["NewtonSchulz", "batched_inverse", "newton_schulz_steps", "polar_newton_schulz", "safe_start"]

STARTS = ("safe", "init")
SIDES = ("right", "left", "both")
#: Largest matrix side the extension's small-matrix kernel accepts (its own limit, :mod:`gdla.limits`).
FUSED_MAX_SIDE = SMALL_MAX_N


def safe_start(A: torch.Tensor) -> torch.Tensor:
    """``Aᵀ / (‖A‖₁ ‖A‖_∞)`` per matrix: :meth:`gdla.MatrixInverse.safe_start` (the one rule), contiguous.

    Args:
        A: shape ``(..., m, n)``. Returns shape ``(..., n, m)``; a zero matrix gives zeros (no
        inverse: the iteration stays there, and :func:`batched_inverse` reports it not converged).
    """
    return MatrixInverse(A).safe_start().contiguous()


def newton_schulz_steps(A: torch.Tensor, tol: float, *, lanczos_steps: int = 100) -> float:
    """Iterations the safe-start Newton-Schulz needs for every matrix of ``A`` to reach ``tol``.

    Each singular value's error is ``(1 − t₀)^(2^k)`` after ``k`` steps, so
    ``k = log₂(ln(1/tol) / −ln(1 − t₀))`` with the smallest ``t₀ = σ_min² / (‖A‖₁‖A‖_∞)`` over
    the batch (``σ_min``: smallest nonzero singular value, estimated by Lanczos). One step is
    added for the residual check that follows the last update.
    """
    if tol <= 0 or tol >= 1:
        return 1.0
    A = full_tensor(A)  # a set-up estimate: on the gathered matrix where A is a DTensor
    spectrum = gram_extremes(A, steps=lanczos_steps)
    A64 = A.detach().to(torch.float64)
    scale = torch.linalg.matrix_norm(A64, ord=1) * torch.linalg.matrix_norm(A64, ord=math.inf)
    t0 = (spectrum.smallest / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(1e-300, 1.0)
    t0 = float(t0.min())
    if t0 >= 1.0:
        return 1.0
    return max(1.0, math.ceil(math.log2(math.log(1 / tol) / -math.log1p(-t0))) + 1.0)


class NewtonSchulz(Optimizer):
    r"""Newton-Schulz for any problem declaring :meth:`~gdla.Problem.matrix_inverse` (square, rectangular, batched).

    One :meth:`step` is one iteration ``X ← X(2I − AX)`` (computed through the problem's own
    product, ``A X`` for ``side="right"``, ``X A`` for ``"left"``) and returns the loss at the
    iterate it started from, read off the residual the update needs anyway.

    Options:
        start: ``"safe"`` (default) overwrites the problem's starting point with
            ``Aᵀ / (‖A‖₁‖A‖_∞)``, from which convergence is guaranteed; ``"init"`` keeps the
            problem's start, which converges only if ``‖I − A X₀‖₂ < 1``. Not given, with a start
            the caller gave (``gdla.solve(..., init=...)``): that start where ``‖I − A X₀‖₂ < 1``,
            else the safe one, with a :class:`~gdla.errors.ConvergenceWarning` saying so.

    With ``backend="fused"`` and a batch of small square matrices, :meth:`advance` runs as many steps as the loop
    asks in one call of the extension's ``small_inverse_newton_schulz_run`` (``n <= 8`` on the CPU, the problem
    declaring ``MatrixInverse.measured``: the loss and the residual after every step computed in the kernel, which
    stops where the residual passes ``tol``), else one step a call of ``small_inverse_newton_schulz``.

    Where the declared ``A`` is a DTensor (:mod:`gdla.mesh`), the iterate is one too (placed like
    ``A``), every product is a DTensor op on the mesh and the loss an all-reduced plain scalar.
    """

    name = "newton-schulz"
    summary = "Newton-Schulz X <- X(2I - AX) for the (pseudo-)inverse: quadratic convergence, tens of steps"
    default_lr = None
    default_max_steps = 200
    options = {
        "start": Option(
            choice(*STARTS), "safe", "'safe': Aᵀ/(‖A‖₁‖A‖∞), always converges; 'init': the problem's start"
        )
    }
    state_attributes = ("_done", "_last_change", "_count", "_first")

    def __init__(self, problem: Problem, params: Params, **options: Any) -> None:
        super().__init__(problem, params, **options)
        self.start = self.options["start"]
        self.inverse: MatrixInverse = problem.matrix_inverse()  # type: ignore[assignment]  # checked above
        self.key = self.inverse.key
        self.A = self.inverse.A  # shape: (..., m, n)
        self.side = self.inverse.side
        k = self.inverse.identity_size  # the size of P = I_k
        self._eye = identity_like(self.A, k)  # placed like A's products where A is a DTensor
        if "start" not in options and is_given(params):  # the caller's start, where the iteration converges from it
            self.start = self._warm_start(params[self.key])
        self._count = 0  # the safe start is written by the first step (so a restored state continues)
        # rank-deficient input is allowed only in pseudo mode, and only there needs the cleaning
        self._pseudo = self.inverse.pseudo
        self._run = self._run_kernel()
        self._first = math.nan  # the run's first loss (the divergence test's reference), once a whole-run call took it
        #: The loss where the last whole-run call left the iterate (work units), or ``None``: not known.
        self.final_loss: float | None = None
        self._fused = self._fused_kernel()  # (kernel, fused loss) or None
        batch = self.A.shape[:-2]
        self._done = torch.zeros(batch, dtype=torch.bool, device=self.A.device)
        self._last_change = torch.full(batch, math.inf, dtype=self.A.dtype, device=self.A.device)
        self._settle = math.sqrt(torch.finfo(self.A.dtype).eps)

    # -- what it can do ---------------------------------------------------------------------------
    @classmethod
    def starting_point(cls, problem: Problem, options: Mapping[str, Any]) -> Params | None:
        """Zeros, which the first step overwrites with the safe start, where the method starts there (``start="safe"``,
        the default) and the problem declares ``MatrixInverse.measured`` (its parameters are the inverse alone): the
        plan then draws no start of the problem's, which that step would overwrite too. ``None`` otherwise."""
        inverse = problem.matrix_inverse()
        if options.get("start", "safe") != "safe" or inverse is None or not inverse.measured or is_dtensor(inverse.A):
            return None
        shape = (*inverse.A.shape[:-2], inverse.A.shape[-1], inverse.A.shape[-2])
        return {inverse.key: torch.zeros(shape, dtype=inverse.A.dtype, device=inverse.A.device)}

    @classmethod
    def unsupported_reason(cls, problem: Problem) -> str | None:
        inverse = problem.matrix_inverse()
        if inverse is None:
            return (
                f"Newton-Schulz computes a matrix inverse, and problem {problem.name!r} does not declare one "
                "(Problem.matrix_inverse() returns None); for least-squares problems use 'cg', for the others 'auto'"
            )
        if inverse.side not in SIDES:
            return f"it knows sides 'right', 'left' and 'both', the problem declares side={inverse.side!r}"
        return None

    @classmethod
    def suitability(cls, problem: Problem) -> Suitability | None:
        if cls.unsupported_reason(problem) is not None:
            return None
        return Suitability(10, "matrix inverse: Newton-Schulz converges quadratically, in about log2(cond^2) + 6 steps")

    @classmethod
    def fused_reason(cls, problem: Problem, options: Any) -> str | None:
        return cls._kernel_reason(problem)

    @classmethod
    def _kernel_reason(cls, problem: Problem) -> str | None:
        """Why the fused kernel cannot take ``problem`` (``None``: it can); the constructor's own check too, for an
        optimizer built directly with ``backend="fused"``."""
        inverse = problem.matrix_inverse()
        if inverse is None:
            return cls.unsupported_reason(problem)
        if is_dtensor(inverse.A):
            return "'newton-schulz' runs DTensor products on the mesh; its fused kernel takes plain tensors"
        m, n = inverse.A.shape[-2], inverse.A.shape[-1]
        if m != n or n > FUSED_MAX_SIDE:
            limit = f"{FUSED_MAX_SIDE}×{FUSED_MAX_SIDE}"
            return f"'newton-schulz' has a fused kernel for square matrices up to {limit}, not {m}×{n}"
        if inverse.pseudo:
            return "'newton-schulz' keeps the PyTorch iteration for pseudo=True (its rank cleaning has no fused kernel)"
        if _ops_function("small_inverse_newton_schulz") is None:
            return "'newton-schulz' needs the extension's small_inverse_newton_schulz kernel, which did not load"
        return None

    def expected_steps(self, tol: float) -> float | None:
        """Steps of the safe start to reach ``tol``: the cheap bound where it fits the budget, else the estimate.

        The bound is ``log₂(ln(1/tol) · n κ²) + 2`` from the problem's condition estimate (the safe
        start has ``t₀ = σ_min² / (‖A‖₁‖A‖_∞) ≥ 1 / (n κ²)``); where it exceeds ``max_steps`` (or
        is unknown), the costlier :func:`newton_schulz_steps` estimates the count from ``A``'s spectrum.
        """
        if self.start != "safe":
            return None
        bound = self._steps_bound(tol)
        if bound is not None and self.max_steps is not None and bound <= self.max_steps:
            return bound
        return newton_schulz_steps(self.A, tol)

    def _steps_bound(self, tol: float) -> float | None:
        if not 0 < tol < 1:
            return None
        kappa = self.problem.condition_estimate()
        if kappa is None or not math.isfinite(kappa) or kappa < 1:
            return None
        n = max(self.A.shape[-2], self.A.shape[-1])
        return math.ceil(math.log2(math.log(1 / tol) * n * kappa * kappa)) + 2.0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lr": None, "start": self.start, "fused_kernel": self._fused is not None}


    def _warm_start(self, X: torch.Tensor) -> str:
        """``"init"`` where the given ``X₀`` has ``‖I − A X₀‖₂ < 1`` for every matrix (the iteration converges from
        it), else ``"safe"``, with a warning naming the distance."""
        with torch.no_grad():
            product = self.A @ replicated(X) if self.side == "both" else self.inverse.product(X)
            distance = float(full_tensor(torch.linalg.matrix_norm(full_tensor(product - self._eye), ord=2)).max())
        if distance < 1:
            return "init"
        warnings.warn(
            f"init: Newton-Schulz converges from a start X₀ with ‖I − A X₀‖₂ < 1, received one at {distance:.3g}; "
            "it started from its safe start Aᵀ/(‖A‖₁‖A‖∞) instead",
            ConvergenceWarning,
            stacklevel=2,
        )
        return "safe"

    def unrolled(self, problem: Problem, params: Params, steps: int) -> Params:
        """``steps`` iterations from ``params`` (or the safe start) on ``problem``, out of place: what autograd
        differentiates for ``gdla.solve(..., backward="unroll")`` (``problem``'s matrix may carry a graph)."""
        if self._pseudo:
            raise UsageError(
                "backward: optimizer 'newton-schulz' cannot unroll pseudo=True (its rank cleaning decides per step "
                "in place); use backward='implicit'"
            )
        inverse: MatrixInverse = problem.matrix_inverse()  # type: ignore[assignment]  # the same problem, with a graph
        X = inverse.safe_start() if self.start == "safe" else params[self.key]
        eye = identity_like(inverse.A, inverse.identity_size)
        for _ in range(steps):
            residual = None if self.side == "both" else inverse.product(X) - eye
            X = X - self._update(X, residual, inverse.A, eye)
        return {self.key: X}

    def _update(
        self, X: torch.Tensor, residual: torch.Tensor | None, A: torch.Tensor, eye: torch.Tensor
    ) -> torch.Tensor:
        """One iteration's correction, ``X_next = X − update``: ``X (P(X) − I)`` on the right, ``(P(X) − I) X`` on
        the left (``residual`` is ``P(X) − I``), ``X (A X − I)`` for ``"both"``, where ``A`` is square and invertible.

        ``replicated()``: a DTensor right factor is gathered whole, so each rank updates its own rows of ``X``.
        """
        if self.side == "right":
            return X @ replicated(residual)  # X (2I − A X) = X − update
        if self.side == "left":
            return residual @ replicated(X)
        return X @ replicated(A @ replicated(X) - eye)

    # -- the iteration ----------------------------------------------------------------------------
    @functools.cached_property
    def _loss_of(self) -> Any:
        """The declared least-squares form's ``loss_of``, where it provably gives the problem's loss from the residual
        the update needs anyway (checked once, at the current iterate, when first needed); else ``None``."""
        form = self.problem.least_squares()
        loss_of = form.loss_of if form is not None and form.key == self.key else None
        if loss_of is not None:
            with torch.no_grad():
                cheap = loss_of(self._residual(self.params[self.key]))
                exact = self.problem.loss(self.params)
            if not bool(torch.isclose(cheap, exact, rtol=1e-4, atol=1e-12)):
                return None
        return loss_of

    def _run_kernel(self) -> Any:
        """The extension's whole-run ``small_inverse_newton_schulz_run``, where it computes this problem's own loss and
        residual (``MatrixInverse.measured`` declared, the right side, ``n <= RUN_MAX_N``, a plain CPU tensor, the
        fused backend, no projection); else ``None``."""
        if self.backend != "fused" or not self.inverse.measured or self.side != "right" or self._pseudo:
            return None
        A = self.A
        if is_dtensor(A) or A.device.type != "cpu" or A.shape[-1] != A.shape[-2] or A.shape[-1] > RUN_MAX_N:
            return None
        if not A.is_contiguous() or not self.params[self.key].is_contiguous() or self.problem.needs_projection():
            return None
        return _ops_function("small_inverse_newton_schulz_run")

    def advance(self, steps: int, tol: float = 0.0) -> Stretch:
        """Up to ``steps`` iterations in one call of the whole-run kernel where it applies (the residual tested after
        every step, inside the kernel), else one :meth:`step`."""
        if self._run is None:
            return super().advance(steps, tol)
        # the first step starts from the kernel's own safe start (csrc/small_safe_start.h, the rule's C++ twin)
        safe = self._count == 0 and self.start == "safe"
        losses, residuals, self.final_loss = self._run(
            self.A, self.params[self.key], steps, tol=tol, first_loss=self._first, blow_up=BLOW_UP, safe_start=safe
        )
        if self._count == 0:
            self._first = float(losses[0])
        self._count += len(losses)
        return Stretch(losses=losses, residuals=residuals)

    def _residual(self, X: torch.Tensor) -> torch.Tensor:
        """``P(X) − I`` with the problem's product ``P``.  # shape: (..., k, k)"""
        return self.inverse.product(X) - self._eye

    def _loss(self, residual: torch.Tensor) -> torch.Tensor:
        return self._loss_of(residual) if self._loss_of is not None else self.problem.loss(self.params)

    def step(self) -> torch.Tensor:
        self.final_loss = None
        X = self.params[self.key]
        if self._count == 0 and self.start == "safe":
            X.copy_(self.inverse.safe_start())
        self._count += 1
        if self._fused is not None:
            return self._fused_step(X)
        residual = self._residual(X)
        loss = self._loss(residual)
        update = self._update(X, residual, self.A, self._eye)
        if self._pseudo:
            self._polish(X, update)
        else:
            X.sub_(update)
        return loss

    def _polish(self, X: torch.Tensor, update: torch.Tensor) -> None:
        """The update for a possibly rank-deficient ``A``: Newton-Schulz, then ``X ← X A X`` once converged.

        Rounding puts tiny components into ``X`` that map ``null(Aᵀ)`` to ``null(A)``; the
        iteration doubles them every step (``2I − AX`` is ``2I`` there), so left alone they swamp
        ``A⁺`` and overflow. The Penrose condition ``X = X A X`` removes exactly those and keeps
        ``A⁺``, but would undo progress while the iteration still converges, so it is applied,
        per matrix, only once the update has stopped shrinking fast (the quadratic phase is over).
        """
        # plain (all-reduced) norms where X is a DTensor: every rank decides alike
        size = full_tensor(torch.linalg.matrix_norm(X)).clamp_min(torch.finfo(X.dtype).tiny)
        change = full_tensor(torch.linalg.matrix_norm(update)) / size  # shape: (...)
        settled = (change <= self._settle) | ((change > 0.5 * self._last_change) & (change < 1e-2))
        self._done = self._done | settled
        self._last_change = change
        X.sub_(update)
        if bool(self._done.any()):
            cleaned = X @ replicated(self.A @ replicated(X))
            X.copy_(torch.where(self._done[..., None, None], cleaned, X))

    def _fused_kernel(self) -> tuple[Any, Any] | None:
        """The extension's batched small-matrix kernel and its fused loss, or ``None`` where they do not apply.

        The kernel iterates ``X ← 2X − X A X``, which is the update of every side for a square
        ``A`` (``X(2I − AX) = (2I − XA)X``). Pseudo mode keeps the PyTorch path for its cleaning.
        (The ops themselves are kept, not a closure over ``self``: a reference cycle would hold the iterate
        until Python's cyclic collector ran.)
        """
        if self.backend != "fused" or self._kernel_reason(self.problem) is not None:
            return None
        return _ops_function("small_inverse_newton_schulz"), _ops_function("inverse_mse")

    def _fused_step(self, X: torch.Tensor) -> torch.Tensor:
        """One step through :meth:`_fused_kernel`'s kernel; the loss at the iterate it starts from."""
        kernel, fused_loss = self._fused
        # the fused MSE is the problem's loss only where the declared form's loss was checked to be it
        loss = fused_loss(self.A, X, self.side) if self._loss_of is not None else self._loss(self._residual(X))
        out = kernel(self.A, X, 1, 0.0)
        X.copy_(out[0] if isinstance(out, (tuple, list)) else out)
        return loss


def _ops_function(name: str) -> Any:
    """``gdla.ops.<name>`` if the compiled extension loaded (and is not disabled) and has it, else ``None``."""
    if not extension_status()[0]:  # the extension is optional: the PyTorch iteration is always there
        return None
    from gdla import ops

    return getattr(ops, name, None)


def batched_inverse(
    A: torch.Tensor,  # shape: (..., n, n)
    *,
    tol: float,
    max_steps: int = 100,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert every matrix of ``A`` by safe-start Newton-Schulz, each until ``‖AX − I‖_F/√n <= tol``.

    The whole run in one call: with the extension (``backend`` ``"auto"`` or ``"fused"``, ``n <= FUSED_MAX_SIDE``)
    each matrix is iterated to its own stop inside one kernel; otherwise batched PyTorch products
    run until the worst matrix converges. For batches of tiny matrices this is the fast path;
    :class:`NewtonSchulz` is the same iteration one step per :func:`gdla.solve` step.

    Both paths start from the same rule (:func:`safe_start`, without overflow for any finite ``A``).

    Returns:
        ``(X, steps)``: the inverses (shape of ``A``) and iterations per matrix (shape ``A.shape[:-2]``).
        A matrix that did not reach ``tol`` (a singular one; a zero matrix stays at its zero start)
        took ``max_steps``.
    """
    A = check_matrix(A, "A", square=True, allow_nonfinite=True)
    # one reduction instead of an elementwise scan: NaN propagates through min/max, ±inf shows there
    if not bool(torch.isfinite(torch.stack(torch.aminmax(A))).all()):
        check_finite(A, "A")  # raises, counting the bad entries
    tol = check_nonnegative(tol, "tol")
    max_steps = check_int(max_steps, "max_steps", minimum=0)
    backend = check_choice(backend, "backend", ("auto", "autograd", "fused"))
    n = A.shape[-1]
    kernel = _ops_function("small_inverse_newton_schulz") if backend != "autograd" and n <= FUSED_MAX_SIDE else None
    if kernel is None and backend == "fused":
        raise InputError(
            f"backend: 'fused' needs the compiled extension's small_inverse_newton_schulz and n <= {FUSED_MAX_SIDE}; "
            f"received n = {n}" + ("" if n <= FUSED_MAX_SIDE else " (too large)")
        )
    if kernel is not None:
        X, steps = kernel(A, None, max_steps, tol)
        return X, steps
    X = safe_start(A)
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    steps = torch.zeros(A.shape[:-2], dtype=torch.long, device=A.device)
    threshold = tol * math.sqrt(n)
    for _ in range(max_steps):
        residual = A @ X - eye
        active = torch.linalg.matrix_norm(residual) > threshold
        if not bool(active.any()):
            break
        steps += active.long()
        X = X - X @ residual
    return X, steps


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(NewtonSchulz)
