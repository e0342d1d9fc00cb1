"""Typed wrappers of the ops for batches of tiny problems: whole solves and whole runs in one call.

See :mod:`gdla.ops` for the conventions (metadata checks before the call, a fake kernel for every
op). These ops are not differentiable: they return iterates, not graphs.
"""

from __future__ import annotations

import torch
from torch.autograd.graph import increment_version

from gdla._op_checks import OPS as _ops
from gdla._op_checks import _in_place, _matrix, _shape, _side, _tensor
from gdla.errors import InputError, ShapeError
from gdla.limits import RUN_MAX_COLUMNS, RUN_MAX_HOPS, RUN_MAX_N, SMALL_MAX_N
from gdla.validation import check_int, check_nonnegative, check_positive, check_probability

__all__ = [
    "RUN_MAX_COLUMNS",
    "RUN_MAX_HOPS",
    "RUN_MAX_N",
    "SMALL_MAX_N",
    "inverse_adam_run",
    "inverse_momentum_run",
    "masked_sgd_run",
    "small_inverse_momentum",
    "small_inverse_newton_schulz",
    "small_inverse_newton_schulz_run",
    "small_inverse_residuals",
    "svd_sgd_run",
]

# SMALL_MAX_N, RUN_MAX_N, RUN_MAX_COLUMNS, RUN_MAX_HOPS: the extension's own limits (gdla.limits)


# -- batches of tiny inverses ---------------------------------------------------------------------
def _small_batch(op: str, A: object) -> torch.Tensor:
    A = _matrix(op, A, "A")
    n = A.shape[-1]
    if A.shape[-2] != n or n > SMALL_MAX_N:
        raise ShapeError(f"{op}: A must hold square n x n matrices with n <= {SMALL_MAX_N}, received {tuple(A.shape)}")
    return A


def small_inverse_residuals(A: torch.Tensor, X: torch.Tensor, side: str = "right") -> torch.Tensor:
    """``‖P − I‖_F`` of each tiny square problem, ``P = A X`` (``side="right"``) or ``X A`` (``"left"``).

    One pass over the batch (a problem at a time in local storage, a thread a problem on CUDA), the
    products and the sum of squares accumulated in float64 and rounded once to ``A``'s dtype: for a
    batch of 10,000 4×4 matrices about a quarter of the time of ``A @ X`` and its norms. Not
    differentiable.

    Args:
        A: the matrices, ``n <= 16``.  # shape: (..., n, n)
        X: the iterates, like ``A``.  # shape: (..., n, n)
        side: ``"right"`` or ``"left"``.

    Returns:
        The norms, in ``A``'s dtype.  # shape: (...)
    """
    op = "small_inverse_residuals"
    A = _small_batch(op, A)
    _shape(op, _tensor(op, X, "X", A, "A"), "X", tuple(A.shape), "to match A")
    if side not in ("right", "left"):
        raise InputError(f"{op}: side must be 'right' or 'left' (for 'both', the larger of the two); received {side!r}")
    return _ops.small_inverse_residuals(A, X, side)


@torch.library.register_fake("gdla::small_inverse_residuals")
def _residuals_fake(A, X, side):
    return A.new_empty(A.shape[:-2])


def small_inverse_newton_schulz(
    A: torch.Tensor, X0: torch.Tensor | None = None, max_steps: int = 100, tol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverts a batch of tiny matrices by Newton-Schulz, each to its own stop, in one kernel.

    Every problem iterates ``X <- X (2I - A X)`` in registers until ``||A X - I||_F / sqrt(n) <= tol``,
    the residual stops being finite, or ``max_steps`` updates. A float32 pass is confirmed in float64,
    so a converged ``X`` meets ``tol`` exactly (not only up to the rounding of a float32 ``A X``).
    Converges when ``||I - A X0|| < 1``; the default ``X0 = A^T / (||A||_1 ||A||_inf)`` ensures that for
    any invertible ``A``. Not differentiable.

    Args:
        A: the matrices, ``n <= 16``.  # shape: (..., n, n)
        X0: starting guesses, or None for the scaled transpose.  # shape: (..., n, n)
        max_steps: most updates per problem.
        tol: residual at which a problem stops.

    Returns:
        ``(X, steps)``: the approximate inverses and the updates each problem took (int64).
    """
    op = "small_inverse_newton_schulz"
    A = _small_batch(op, A)
    if X0 is not None:
        _shape(op, _tensor(op, X0, "X0", A, "A"), "X0", tuple(A.shape), "to match A")
    return _ops.small_inverse_newton_schulz(
        A, X0, check_int(max_steps, f"{op}: max_steps", minimum=0), check_nonnegative(tol, f"{op}: tol")
    )


def small_inverse_momentum(A: torch.Tensor, X0: torch.Tensor, lr: float, momentum: float, steps: int) -> torch.Tensor:
    """Heavy-ball gradient descent on every problem's ``mean((A X - I)^2)``, in one kernel.

    Per step: ``buf <- momentum buf + (2/n^2) A^T (A X - I); X <- X - lr buf``, ``steps`` times.

    Args:
        A: the matrices, ``n <= 16``.  # shape: (..., n, n)
        X0: starting guesses.  # shape: (..., n, n)
        lr: step size, > 0.
        momentum: heavy-ball factor in [0, 1).
        steps: number of steps.

    Returns:
        The iterates after ``steps`` steps.
    """
    op = "small_inverse_momentum"
    A = _small_batch(op, A)
    _shape(op, _tensor(op, X0, "X0", A, "A"), "X0", tuple(A.shape), "to match A")
    return _ops.small_inverse_momentum(
        A,
        X0,
        check_positive(lr, f"{op}: lr"),
        check_probability(momentum, f"{op}: momentum"),
        check_int(steps, f"{op}: steps", minimum=0),
    )


def small_inverse_newton_schulz_run(
    A: torch.Tensor, X: torch.Tensor, steps: int, *, tol: float = 0.0, first_loss: float = float("nan"),
    blow_up: float = 1e12, safe_start: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Newton-Schulz as :func:`gdla.solve` runs it, ``steps`` steps in one call, the batch in lockstep; ``X`` in place.

    ``A``: square matrices, ``n <= 8``, and ``X`` like it, contiguous. Per step, every member: ``X <- X (2I - A X)``;
    the step's loss is ``Σ_b mean((A_b X_b - I)²)`` at the iterate before the update, the residual after it the worst
    ``‖A_b X_b - I‖_F / √n``, both in float64 (a float32 member's in float32 down to 1e-2, then from float64
    products). The call stops after the first step whose residual is ``<= tol`` (``tol > 0``), after a step whose
    loss is not finite or exceeds ``blow_up · max(first_loss, 1e-30)`` (``first_loss`` NaN: this call's first step
    sets it), or after ``steps`` steps; ``n`` calls of one step give the bits of one call of ``n``. With
    ``safe_start`` it starts from ``Aᵀ / (‖A‖₁ ‖A‖_∞)`` (``csrc/small_safe_start.h``), not ``X``. Not differentiable.

    Returns:
        ``(losses, residuals, final_loss)``: each step's loss and the residual after it (float64, one per step
        taken), and the loss at the iterate the call leaves in ``X``.
    """
    op = "small_inverse_newton_schulz_run"
    A = _matrix(op, A, "A")
    n = A.shape[-1]
    if A.shape[-2] != n or n > RUN_MAX_N:
        raise ShapeError(f"{op}: A must hold square n x n matrices with n <= {RUN_MAX_N}, received {tuple(A.shape)}")
    _shape(op, _tensor(op, X, "X", A, "A"), "X", tuple(A.shape), "to match A")
    _in_place(op, {"X": X}, {"A": A})
    steps, tol = check_int(steps, f"{op}: steps", minimum=0), check_nonnegative(tol, f"{op}: tol")
    blow_up = check_positive(blow_up, f"{op}: blow_up")
    out = _written((X,), _ops.small_inverse_newton_schulz_run(
        A.contiguous(), X, steps, tol, float(first_loss), blow_up, bool(safe_start)
    ))
    taken = (out.numel() - 1) // 2
    return out[:taken], out[taken : 2 * taken], float(out[-1])


@torch.library.register_fake("gdla::small_inverse_newton_schulz_run")
def _newton_schulz_run_fake(A, X, steps, tol, first_loss, blow_up, safe_start):
    count = torch.library.get_ctx().new_dynamic_size(min=1, max=2 * steps + 1)
    return A.new_empty((count,), dtype=torch.float64, device="cpu")


@torch.library.register_fake("gdla::small_inverse_newton_schulz")
def _newton_schulz_fake(A, X0, max_steps, tol):
    return A.new_empty(A.shape), A.new_empty(A.shape[:-2], dtype=torch.long)


@torch.library.register_fake("gdla::small_inverse_momentum")
def _momentum_fake(A, X0, lr, momentum, steps):
    return A.new_empty(A.shape)


# -- whole runs -----------------------------------------------------------------------------------
def _written(tensors: tuple[torch.Tensor, ...], losses: torch.Tensor) -> torch.Tensor:
    """``losses``, after bumping the version counter of each tensor the run wrote (as torch's in-place ops do).

    So autograd refuses a tensor saved for a backward and changed since, instead of silently using
    its new values (the ops' autograd fallback bumps only mutated tensors they return).
    """
    increment_version(tensors)
    return losses


def _stop_loss(op: str, value: float | None) -> float:
    """The kernels' encoding of ``stop_loss``: ``-1`` for none, else the checked number ``>= 0``."""
    return -1.0 if value is None else check_nonnegative(value, f"{op}: stop_loss")


def inverse_momentum_run(
    A: torch.Tensor,
    X: torch.Tensor,
    buf: torch.Tensor,
    side: str,
    lr: float,
    momentum: float,
    steps: int,
    *,
    started: bool,
    first_loss: float = float("nan"),
    blow_up: float = 1e12,
    stop_loss: float | None = None,
) -> torch.Tensor:
    """Seed 000's momentum on ``Σ_b mean((P_b − I)²)``, ``steps`` steps in one call; ``X``, ``buf`` in place.

    Per step: ``R = P(X) − I``; the step's loss is ``Σ_b mean(R_b²)`` at the iterate before the
    update; ``g = ∂loss/∂X``; ``buf ← momentum·buf + g`` (``buf ← g`` on a run's first step,
    ``started=False``); ``X ← X − buf·lr``. The call stops early after a step whose loss is not
    finite or exceeds ``blow_up · max(first_loss, 1e-30)`` (``first_loss`` NaN: this call's first
    step is the run's first, whose loss sets it). Not differentiable.

    Args:
        A: square matrices, ``n <= 8``.  # shape: (..., n, n)
        X, buf: iterates and momentum buffers, like ``A``, contiguous.  # shape: (..., n, n)
        side: ``"right"``, ``"left"`` or ``"both"``.
        stop_loss: a tolerance on the loss, for one matrix (``None``: no test). The run then also
            evaluates the loss where each step leaves ``X``, with the pass the next step makes
            anyway, and stops, that next step not taken, once it is ``<= stop_loss`` (never before
            the call's first step). A caller whose residual is a function of the loss turns its
            tolerance into this one, so a whole run stops where a step-by-step run testing the
            residual after every step would.

    Returns:
        The loss of every step taken (float64, length ``<= steps``), then, with ``stop_loss``, the
        loss at the final iterate (NaN after a diverging step).
    """
    op = "inverse_momentum_run"
    A = _matrix(op, A, "A")
    n = A.shape[-1]
    if A.shape[-2] != n or n > RUN_MAX_N:
        raise ShapeError(f"{op}: A must hold square n x n matrices with n <= {RUN_MAX_N}, received {tuple(A.shape)}")
    for name, value in (("X", X), ("buf", buf)):
        _shape(op, _tensor(op, value, name, A, "A"), name, tuple(A.shape), "to match A")
    _in_place(op, {"X": X, "buf": buf}, {"A": A})
    return _written((X, buf), _ops.inverse_momentum_run(
        A.contiguous(),
        X,
        buf,
        _side(op, side),
        check_positive(lr, f"{op}: lr"),
        check_probability(momentum, f"{op}: momentum"),
        check_int(steps, f"{op}: steps", minimum=0),
        bool(started),
        float(first_loss),
        check_positive(blow_up, f"{op}: blow_up"),
        _stop_loss(op, stop_loss),
    ))


@torch.library.register_fake("gdla::inverse_momentum_run")
def _momentum_run_fake(A, X, buf, side, lr, momentum, steps, started, first_loss, blow_up, stop_loss=-1.0):
    count = torch.library.get_ctx().new_dynamic_size(min=0, max=steps + (stop_loss >= 0))
    return A.new_empty((count,), dtype=torch.float64)


def inverse_adam_run(
    A: torch.Tensor,
    X: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    side: str,
    lrs: torch.Tensor,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    step0: int = 0,
    first_loss: float = float("nan"),
    blow_up: float = 1e12,
    stop_loss: float | None = None,
) -> torch.Tensor:
    r"""``torch.optim.Adam`` on ``Σ_b mean((P_b − I)²)``, one step per entry of ``lrs``; ``X`` and the moments in place.

    Per step ``t = step0 + 1, step0 + 2, ...`` with rate ``lrs[t − step0 − 1]``: the step's loss at
    the iterate before the update; ``g = ∂loss/∂X``; ``m ← m + (1 − β₁)(g − m)``,
    ``v ← v β₂ + (1 − β₂) g²``, ``X ← X − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + eps)`` (torch's
    Adam without weight decay or amsgrad; it agrees with ``torch.optim.Adam`` to rounding). Stops
    early after a step whose loss is not finite or exceeds ``blow_up · max(first_loss, 1e-30)``
    (``first_loss`` NaN: this call's first step sets it). Not differentiable.

    Args:
        A: square matrices, ``n <= 16``.  # shape: (..., n, n)
        X, exp_avg, exp_avg_sq: iterate and Adam's moments, like ``A``, contiguous.  # shape: (..., n, n)
        side: ``"right"``, ``"left"`` or ``"both"``.
        lrs: the learning rate of every step (float64, on the CPU).  # shape: (steps,)
        stop_loss: a tolerance on the loss, for one matrix, as in :func:`inverse_momentum_run`.

    Returns:
        The loss of every step taken (float64, length ``<= len(lrs)``), then, with ``stop_loss``,
        the loss at the final iterate (NaN after a diverging step).
    """
    op = "inverse_adam_run"
    A = _matrix(op, A, "A")
    n = A.shape[-1]
    if A.shape[-2] != n or n > SMALL_MAX_N:
        raise ShapeError(f"{op}: A must hold square n x n matrices with n <= {SMALL_MAX_N}, received {tuple(A.shape)}")
    for name, value in (("X", X), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        _shape(op, _tensor(op, value, name, A, "A"), name, tuple(A.shape), "to match A")
    _check_rates(op, lrs)
    beta1 = check_probability(betas[0], f"{op}: betas[0]")
    beta2 = check_probability(betas[1], f"{op}: betas[1]")
    _in_place(op, {"X": X, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}, {"A": A})
    return _written((X, exp_avg, exp_avg_sq), _ops.inverse_adam_run(
        A.contiguous(), X, exp_avg, exp_avg_sq, _side(op, side), lrs, beta1, beta2, check_positive(eps, f"{op}: eps"),
        check_int(step0, f"{op}: step0", minimum=0), float(first_loss), check_positive(blow_up, f"{op}: blow_up"),
        _stop_loss(op, stop_loss),
    ))


@torch.library.register_fake("gdla::inverse_adam_run")
def _adam_run_fake(A, X, exp_avg, exp_avg_sq, side, lrs, beta1, beta2, eps, step0, first_loss, blow_up,
                   stop_loss=-1.0):
    return _run_losses_fake(A, lrs, extra=int(stop_loss >= 0))


def svd_sgd_run(
    M: torch.Tensor,
    U: torch.Tensor,
    s: torch.Tensor,
    V: torch.Tensor,
    buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    lrs: torch.Tensor,
    *,
    weight_u: float,
    weight_v: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    started: bool = False,
    sign_fix: bool = True,
    first_loss: float = float("nan"),
    blow_up: float = 1e12,
) -> torch.Tensor:
    r"""``torch.optim.SGD`` on the seed notebook's penalised SVD loss of one small matrix, a step per entry of ``lrs``.

    The loss is :func:`gdla.ops.svd_loss`'s: ``mean((U diag(s²) Vᵀ − M)²) + weight_u mean((UᵀU − I)²)
    + weight_v mean((VᵀV − I)²)``, taken at the iterate before each step. The update is SGD's
    (no weight decay): ``buf ← g`` on a run's first step (``started=False``), else
    ``buf ← momentum·buf + (1 − dampening)·g``; the direction is ``buf`` (``g + momentum·buf`` with
    ``nesterov``; ``g`` without momentum); ``x ← x − lr·direction`` for ``U``, ``s`` and ``V``. With
    ``sign_fix`` every step ends with the ``svd`` problem's projection: ``V[:, i] ← −V[:, i]`` where
    ``u_iᵀ(M − Σ_{j≠i} s_j² u_j v_jᵀ) v_i < 0``. Stops early after a step whose loss is not finite
    or exceeds ``blow_up · max(first_loss, 1e-30)``. Not differentiable.

    Args:
        M: the matrix, ``m, n <= 16``.  # shape: (m, n)
        U, s, V: the factors, updated in place.  # shape: (m, k), (k,), (n, k)
        buffers: SGD's momentum buffers of ``U``, ``s`` and ``V``, shaped like them, updated in place.
        lrs: the learning rate of every step (float64, on the CPU).  # shape: (steps,)

    Returns:
        The loss of every step taken (float64, length ``<= len(lrs)``).
    """
    op = "svd_sgd_run"
    M = _matrix(op, M, "M")
    if M.dim() != 2 or max(M.shape) > SMALL_MAX_N:
        raise ShapeError(f"{op}: M must be one m x n matrix with m, n <= {SMALL_MAX_N}, received {tuple(M.shape)}")
    _check_rates(op, lrs)
    written = {"U": U, "s": s, "V": V, **{f"buffers[{i}]": b for i, b in enumerate(buffers)}}
    for name, value in written.items():
        _tensor(op, value, name, M, "M")
    _in_place(op, written, {"M": M})
    return _written((U, s, V, *buffers), _ops.svd_sgd_run(
        M.contiguous(), U, s, V, *buffers, lrs, check_nonnegative(weight_u, f"{op}: weight_u"),
        check_nonnegative(weight_v, f"{op}: weight_v"), check_probability(momentum, f"{op}: momentum"),
        check_probability(dampening, f"{op}: dampening"), bool(nesterov), bool(started), bool(sign_fix),
        float(first_loss), check_positive(blow_up, f"{op}: blow_up"),
    ))


def _check_rates(op: str, lrs: object) -> None:
    if not isinstance(lrs, torch.Tensor) or lrs.dim() != 1 or lrs.dtype != torch.float64 or lrs.device.type != "cpu":
        got = f"{lrs.dtype} of shape {tuple(lrs.shape)} on {lrs.device}" if isinstance(lrs, torch.Tensor) else repr(lrs)
        raise ShapeError(f"{op}: lrs must be a 1-D float64 CPU tensor (one rate per step), received {got}")


def _run_losses_fake(reference: torch.Tensor, lrs: torch.Tensor, extra: int = 0) -> torch.Tensor:
    steps = lrs.shape[0]  # a SymInt under dynamic shapes: then no static upper bound
    count = torch.library.get_ctx().new_dynamic_size(min=0, max=steps + extra if isinstance(steps, int) else None)
    return reference.new_empty((count,), dtype=torch.float64)


@torch.library.register_fake("gdla::svd_sgd_run")
def _svd_run_fake(M, U, s, V, buf_u, buf_s, buf_v, lrs, *args):
    return _run_losses_fake(M, lrs)


def masked_sgd_run(
    init: torch.Tensor,
    omega: torch.Tensor,
    X: torch.Tensor,
    Y: torch.Tensor,
    U: torch.Tensor,
    buf: torch.Tensor,
    lrs: torch.Tensor,
    *,
    hops: int = 1,
    activation: str | None = None,
    loss: str = "frobenius",
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    started: bool = False,
    first_loss: float = float("nan"),
    blow_up: float = 1e12,
) -> torch.Tensor:
    r"""``torch.optim.SGD`` on the seed notebook's masked operator of one small system, a step per entry of ``lrs``.

    ``S = init + omega ⊙ U``; the prediction applies ``S`` then ``activation`` ``hops`` times to ``X``;
    the loss is ``‖Y − Ŷ‖_F`` (``"frobenius"``, the seed's) or ``mean((Y − Ŷ)²)`` (``"mse"``), at the
    iterate before each step; ``∂loss/∂U = omega ⊙ ∂loss/∂S``. The update is SGD's, as in
    :func:`svd_sgd_run`; ``U`` and ``buf`` are updated in place. Not differentiable.

    Args:
        init, omega: ``n × n``, ``n <= 16``.  # shape: (n, n)
        X, Y: inputs and targets, ``p <= 32`` columns.  # shape: (n, p)
        U, buf: the unknown and SGD's momentum buffer.  # shape: (n, n)
        lrs: the learning rate of every step (float64, on the CPU).  # shape: (steps,)
        hops: ``1..4``; activation: ``None``/``"identity"``, ``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"cube"``.

    Returns:
        The loss of every step taken (float64, length ``<= len(lrs)``).
    """
    op = "masked_sgd_run"
    U = _matrix(op, U, "U")
    if U.dim() != 2 or U.shape[0] != U.shape[1] or U.shape[0] > SMALL_MAX_N:
        raise ShapeError(f"{op}: U must be one square n x n matrix with n <= {SMALL_MAX_N}, received {tuple(U.shape)}")
    _check_rates(op, lrs)
    read = {"init": init, "omega": omega, "X": X, "Y": Y}
    for name, value in {**read, "buf": buf}.items():
        _tensor(op, value, name, U, "U")
    _in_place(op, {"U": U, "buf": buf}, read)
    return _written((U, buf), _ops.masked_sgd_run(
        *(tensor.contiguous() for tensor in read.values()), U, buf, lrs, check_int(hops, f"{op}: hops", minimum=1),
        activation or "identity", loss,
        check_probability(momentum, f"{op}: momentum"), check_probability(dampening, f"{op}: dampening"),
        bool(nesterov), bool(started), float(first_loss), check_positive(blow_up, f"{op}: blow_up"),
    ))


@torch.library.register_fake("gdla::masked_sgd_run")
def _masked_run_fake(init, omega, X, Y, U, buf, lrs, *args):
    return _run_losses_fake(U, lrs)
