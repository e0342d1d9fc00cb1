"""Typed wrappers of the custom ops ``torch.ops.gdla.*`` of the compiled extension ``gdla._C``.

Each wrapper checks its arguments' metadata (type, dtype, device, shape; never the values, so it
costs nothing and traces under ``torch.compile``) and raises :class:`gdla.errors.InputError` or
:class:`gdla.errors.ShapeError` before calling the op; the C++ checks are the second line. This
module also registers a fake (shape-only) kernel for every op and the autograd formulas of the
forward-only ops, so they compose with ``torch.autograd`` and ``torch.compile(fullgraph=True)``.

Losses of batched inputs are sums over the batch of the per-problem losses. Only float32 and
float64 are supported; tensors may have any strides.
"""

from __future__ import annotations

import importlib

import torch
from torch.autograd.graph import increment_version

from gdla.errors import InputError, ShapeError
from gdla.validation import check_int, check_nonnegative, check_positive, check_probability

try:
    importlib.import_module("gdla._C")  # its import registers the ops (schemas and kernels)
except ImportError as exc:
    raise ImportError(
        f"gdla.ops needs the compiled extension gdla._C, which could not be imported ({exc}); "
        "build it with: pip install --no-build-isolation -e ."
    ) from exc

__all__ = [
    "RUN_MAX_N",
    "SIDES",
    "has_cuda_kernels",
    "inverse_momentum_run",
    "inverse_mse",
    "inverse_mse_and_grad",
    "masked_hadamard",
    "masked_update_",
    "small_inverse_momentum",
    "small_inverse_newton_schulz",
    "svd_loss",
    "svd_loss_and_grad",
]

SIDES = ("right", "left", "both")
SMALL_MAX_N = 16  # the largest n the batched tiny-problem kernels keep in registers
RUN_MAX_N = 8  # the largest n the whole-run kernels keep in registers
_ops = torch.ops.gdla
_CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key("gdla::inverse_mse", "CUDA")


def has_cuda_kernels() -> bool:
    """Whether ``gdla._C`` was built with its CUDA kernels."""
    return _CUDA_KERNELS


# -- metadata checks ------------------------------------------------------------------------------
def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return f"{type(value).__name__} {value!r}"[:80]


def _tensor(op: str, value: object, name: str, like: torch.Tensor | None = None, ref: str = "") -> torch.Tensor:
    """``value`` as a float32/float64 tensor with the dtype and device of ``like`` (if given)."""
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{op}: {name} must be a torch.Tensor, received {_describe(value)}")
    if value.dtype not in (torch.float32, torch.float64):
        raise InputError(f"{op}: {name} must be float32 or float64, received {value.dtype}")
    if like is not None and value.dtype != like.dtype:
        raise InputError(f"{op}: {name} must have the dtype of {ref} ({like.dtype}), received {value.dtype}")
    if like is not None and value.device != like.device:
        raise InputError(f"{op}: {name} must be on the device of {ref} ({like.device}), received {value.device}")
    if value.device.type == "cuda" and not _CUDA_KERNELS:
        raise InputError(
            f"{op}: {name} is on {value.device}, but gdla._C was built without CUDA kernels; rebuild it on a "
            "machine with a CUDA build of torch (pip install --no-build-isolation -e .)"
        )
    return value


def _matrix(op: str, value: object, name: str, like: torch.Tensor | None = None, ref: str = "") -> torch.Tensor:
    tensor = _tensor(op, value, name, like, ref)
    if tensor.dim() < 2 or tensor.numel() == 0:
        raise ShapeError(
            f"{op}: {name} must be a non-empty matrix of shape (..., m, n), received {tuple(tensor.shape)}"
        )
    return tensor


def _shape(op: str, tensor: torch.Tensor, name: str, expected: tuple[int, ...], why: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ShapeError(f"{op}: {name} must have shape {tuple(expected)} {why}, received {tuple(tensor.shape)}")


def _side(op: str, side: object) -> str:
    if isinstance(side, int) and not isinstance(side, bool) and 0 <= side < len(SIDES):
        return SIDES[side]
    if side not in SIDES:
        raise InputError(
            f"{op}: side must be one of 'right' (A@M), 'left' (M@A), 'both' (or 0, 1, 2), received {side!r}"
        )
    return str(side)


def _mask(op: str, omega: object, U: torch.Tensor) -> torch.Tensor:
    """A boolean mask becomes U's dtype; anything else must already match U."""
    if isinstance(omega, torch.Tensor) and omega.dtype == torch.bool:
        omega = omega.to(U.dtype)
    return _tensor(op, omega, "omega", U, "U")


# -- inverse MSE ----------------------------------------------------------------------------------
def _inverse_args(op: str, A: object, M: object, side: object) -> tuple[torch.Tensor, torch.Tensor, str]:
    A = _matrix(op, A, "A")
    M = _tensor(op, M, "M", A, "A")
    side = _side(op, side)
    m, n = A.shape[-2:]
    _shape(op, M, "M", (*A.shape[:-2], n, m), f"to match A of shape {tuple(A.shape)}")
    if side == "both" and m != n:
        raise ShapeError(f"{op}: side='both' needs a square A (A@M and M@A differ in shape), received {tuple(A.shape)}")
    return A, M, side


def inverse_mse(A: torch.Tensor, M: torch.Tensor, side: str | int = "right") -> torch.Tensor:
    """Inverse-MSE loss, differentiable w.r.t. ``A`` and ``M``.

    ``loss = sum_b mean((P_b - I)^2)`` with ``P = A @ M`` (``side="right"``), ``M @ A``
    (``"left"``) or ``(A @ M + M @ A) / 2`` (``"both"``, square ``A`` only); an unbatched input gives
    the plain mean. ``side`` may also be given as 0, 1, 2.

    Args:
        A: the matrix to invert.  # shape: (..., m, n)
        M: the approximate inverse.  # shape: (..., n, m)
        side: which product is compared with the identity.

    Returns:
        The 0-dim loss, with the dtype of ``A``.
    """
    A, M, side = _inverse_args("inverse_mse", A, M, side)
    return _ops.inverse_mse(A, M, side)


def inverse_mse_and_grad(
    A: torch.Tensor, M: torch.Tensor, side: str | int = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse-MSE loss and its gradient w.r.t. ``M`` in one fused pass.

    One product into a buffer, the identity subtracted and the squares summed in the same pass,
    one product for the gradient: with ``R = P - I`` and ``k x k`` products,
    ``dL/dM = (2/k^2) A^T R`` (right), ``(2/k^2) R A^T`` (left), ``(1/k^2)(A^T R + R A^T)`` (both).

    Args:
        A: the matrix to invert.  # shape: (..., m, n)
        M: the approximate inverse.  # shape: (..., n, m)
        side: ``"right"`` (A@M), ``"left"`` (M@A) or ``"both"``; see :func:`inverse_mse`.

    Returns:
        ``(loss, grad_M)``: the 0-dim loss and a gradient with the shape of ``M``.
    """
    A, M, side = _inverse_args("inverse_mse_and_grad", A, M, side)
    return _ops.inverse_mse_and_grad(A, M, side)


@torch.library.register_fake("gdla::inverse_mse")
def _inverse_mse_fake(A: torch.Tensor, M: torch.Tensor, side: str = "right") -> torch.Tensor:
    return A.new_empty(())


@torch.library.register_fake("gdla::inverse_mse_and_grad")
def _inverse_mse_and_grad_fake(
    A: torch.Tensor, M: torch.Tensor, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    return A.new_empty(()), M.new_empty(M.shape)


@torch.library.register_fake("gdla::inverse_mse_backward")
def _inverse_mse_backward_fake(
    grad: torch.Tensor, A: torch.Tensor, M: torch.Tensor, side: str, need_grad_A: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return A.new_empty(A.shape if need_grad_A else (0,)), M.new_empty(M.shape)


def _inverse_mse_setup(ctx, inputs, output) -> None:
    A, M, side = inputs
    ctx.save_for_backward(A, M)
    ctx.side = side


def _inverse_mse_backward(ctx, grad: torch.Tensor):
    A, M = ctx.saved_tensors
    need_A, need_M = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_A, grad_M = _ops.inverse_mse_backward(grad, A, M, ctx.side, need_A)
    return (grad_A if need_A else None), (grad_M if need_M else None), None


torch.library.register_autograd("gdla::inverse_mse", _inverse_mse_backward, setup_context=_inverse_mse_setup)


# -- masked Hadamard ------------------------------------------------------------------------------
def masked_hadamard(init: torch.Tensor, omega: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``S = init + omega ⊙ U``, differentiable (``dS/dU = omega``, ``dS/dinit = 1``, ``dS/domega = U``).

    Args:
        init: the fixed part.  # shape: (...)
        omega: the mask (0/1 or weights; a bool mask is converted to U's dtype).  # shape: (...)
        U: the free parameters.  # shape: (...)

    Returns:
        ``S``, contiguous, with the shape of ``U``.
    """
    op = "masked_hadamard"
    U = _tensor(op, U, "U")
    init = _tensor(op, init, "init", U, "U")
    omega = _mask(op, omega, U)
    for name, tensor in (("init", init), ("omega", omega)):
        _shape(op, tensor, name, tuple(U.shape), "to match U")
    return _ops.masked_hadamard(init, omega, U)


@torch.library.register_fake("gdla::masked_hadamard")
def _masked_hadamard_fake(init: torch.Tensor, omega: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    return U.new_empty(U.shape)


def _masked_hadamard_setup(ctx, inputs, output) -> None:
    _, omega, U = inputs
    ctx.save_for_backward(omega, U)


def _masked_hadamard_backward(ctx, grad: torch.Tensor):
    omega, U = ctx.saved_tensors
    need_init, need_omega, need_U = ctx.needs_input_grad
    return (grad if need_init else None), (grad * U if need_omega else None), (grad * omega if need_U else None)


torch.library.register_autograd(
    "gdla::masked_hadamard", _masked_hadamard_backward, setup_context=_masked_hadamard_setup
)


def masked_update_(
    U: torch.Tensor,
    omega: torch.Tensor,
    G: torch.Tensor,
    lr: float,
    momentum: float = 0.0,
    buf: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused in-place masked (heavy-ball) step; call it under ``torch.no_grad()`` for parameters.

    With ``buf``: ``buf <- momentum buf + omega ⊙ G; U <- U - lr buf``; without:
    ``U <- U - lr omega ⊙ G`` (then ``momentum`` must be 0). One pass over memory, OpenMP on CPU.

    Args:
        U: the parameters, updated in place.  # shape: (...)
        omega: the mask (a bool mask is converted to U's dtype).  # shape: (...)
        G: the gradient.  # shape: (...)
        lr: step size, >= 0.
        momentum: heavy-ball factor in [0, 1).
        buf: the velocity, updated in place.  # shape: (...)

    Returns:
        ``U``.
    """
    op = "masked_update_"
    U = _tensor(op, U, "U")
    omega = _mask(op, omega, U)
    G = _tensor(op, G, "G", U, "U")
    tensors = [("omega", omega), ("G", G)]
    if buf is not None:
        tensors.append(("buf", _tensor(op, buf, "buf", U, "U")))
    for name, tensor in tensors:
        _shape(op, tensor, name, tuple(U.shape), "to match U")
    lr = check_nonnegative(lr, f"{op}: lr")
    momentum = check_probability(momentum, f"{op}: momentum")
    if momentum != 0.0 and buf is None:
        raise InputError(f"{op}: momentum={momentum} needs buf, a tensor like U holding the velocity; received None")
    _ops.masked_update_(U, omega, G, lr, momentum, buf)
    # so that autograd notices if U (or buf) was saved for a backward before this change
    increment_version(U if buf is None else (U, buf))
    return U


@torch.library.register_fake("gdla::masked_update_")
def _masked_update_fake(U, omega, G, lr, momentum=0.0, buf=None) -> None:
    return None


# -- SVD loss -------------------------------------------------------------------------------------
def _svd_args(op: str, M, U, s, V, weight_u, weight_v):
    M = _matrix(op, M, "M")
    U = _matrix(op, U, "U", M, "M")
    s = _tensor(op, s, "s", M, "M")
    V = _tensor(op, V, "V", M, "M")
    batch, (m, n), k = tuple(M.shape[:-2]), M.shape[-2:], U.shape[-1]
    _shape(op, U, "U", (*batch, m, k), f"to match M of shape {tuple(M.shape)}")
    _shape(op, s, "s", (*batch, k), f"to match U of shape {tuple(U.shape)}")
    _shape(op, V, "V", (*batch, n, k), f"to match M of shape {tuple(M.shape)} and U of shape {tuple(U.shape)}")
    weights = (check_nonnegative(weight_u, f"{op}: weight_u"), check_nonnegative(weight_v, f"{op}: weight_v"))
    return M, U, s, V, *weights


def svd_loss(
    M: torch.Tensor, U: torch.Tensor, s: torch.Tensor, V: torch.Tensor, weight_u: float = 0.01, weight_v: float = 0.01
) -> torch.Tensor:
    """SVD-fit loss, differentiable w.r.t. ``M``, ``U``, ``s`` and ``V``.

    ``loss = mse(U diag(s^2) V^T, M) + weight_u mse(U^T U, I_k) + weight_v mse(V^T V, I_k)``
    (squared ``s`` keeps the singular values >= 0), summed over any batch dimensions.

    Args:
        M: the matrix to decompose.  # shape: (..., m, n)
        U: left factor.  # shape: (..., m, k)
        s: square roots of the singular values.  # shape: (..., k)
        V: right factor.  # shape: (..., n, k)
        weight_u: weight of the orthonormality penalty of U, >= 0.
        weight_v: weight of the orthonormality penalty of V, >= 0.

    Returns:
        The 0-dim loss.
    """
    return _ops.svd_loss(*_svd_args("svd_loss", M, U, s, V, weight_u, weight_v))


def svd_loss_and_grad(
    M: torch.Tensor, U: torch.Tensor, s: torch.Tensor, V: torch.Tensor, weight_u: float, weight_v: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SVD-fit loss of :func:`svd_loss` and its gradients w.r.t. ``U``, ``s``, ``V`` in one call.

    With ``d = s^2``, ``R = (2/mn)(U diag(d) V^T - M)``, ``G_U = U^T U - I``, ``G_V = V^T V - I``:
    ``dL/dU = R V diag(d) + (4 w_u/k^2) U G_U``, ``dL/dV = R^T U diag(d) + (4 w_v/k^2) V G_V``,
    ``dL/ds_j = 2 s_j sum_i U_ij (R V)_ij``. Seven products, intermediates reused.

    Returns:
        ``(loss, grad_U, grad_s, grad_V)`` with the shapes of ``(), U, s, V``.
    """
    return _ops.svd_loss_and_grad(*_svd_args("svd_loss_and_grad", M, U, s, V, weight_u, weight_v))


@torch.library.register_fake("gdla::svd_loss")
def _svd_loss_fake(M, U, s, V, weight_u, weight_v) -> torch.Tensor:
    return M.new_empty(())


@torch.library.register_fake("gdla::svd_loss_and_grad")
def _svd_loss_and_grad_fake(M, U, s, V, weight_u, weight_v):
    return M.new_empty(()), U.new_empty(U.shape), s.new_empty(s.shape), V.new_empty(V.shape)


def _svd_loss_setup(ctx, inputs, output) -> None:
    M, U, s, V, weight_u, weight_v = inputs
    ctx.save_for_backward(M, U, s, V)
    ctx.weights = (weight_u, weight_v)


def _svd_loss_backward(ctx, grad: torch.Tensor):
    M, U, s, V = ctx.saved_tensors
    _, grad_U, grad_s, grad_V = _ops.svd_loss_and_grad(M, U, s, V, *ctx.weights)
    grad_M = None
    if ctx.needs_input_grad[0]:
        fit = (U * (s * s).unsqueeze(-2)) @ V.mT - M
        grad_M = fit * (-2.0 / (M.shape[-2] * M.shape[-1])) * grad
    return grad_M, grad_U * grad, grad_s * grad, grad_V * grad, None, None


torch.library.register_autograd("gdla::svd_loss", _svd_loss_backward, setup_context=_svd_loss_setup)


# -- batches of tiny inverses ---------------------------------------------------------------------
def _small_batch(op: str, A: object) -> torch.Tensor:
    A = _matrix(op, A, "A")
    n = A.shape[-1]
    if A.shape[-2] != n or n > SMALL_MAX_N:
        raise ShapeError(f"{op}: A must hold square n x n matrices with n <= {SMALL_MAX_N}, received {tuple(A.shape)}")
    return A


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


@torch.library.register_fake("gdla::small_inverse_newton_schulz")
def _newton_schulz_fake(A, X0, max_steps, tol):
    return A.new_empty(A.shape), A.new_empty(A.shape[:-2], dtype=torch.long)


@torch.library.register_fake("gdla::small_inverse_momentum")
def _momentum_fake(A, X0, lr, momentum, steps):
    return A.new_empty(A.shape)


# -- whole runs -----------------------------------------------------------------------------------
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

    Returns:
        The loss of every step taken (float64, length ``<= steps``).
    """
    op = "inverse_momentum_run"
    A = _matrix(op, A, "A")
    n = A.shape[-1]
    if A.shape[-2] != n or n > RUN_MAX_N:
        raise ShapeError(f"{op}: A must hold square n x n matrices with n <= {RUN_MAX_N}, received {tuple(A.shape)}")
    for name, value in (("X", X), ("buf", buf)):
        _shape(op, _tensor(op, value, name, A, "A"), name, tuple(A.shape), "to match A")
    return _ops.inverse_momentum_run(
        A,
        X,
        buf,
        _side(op, side),
        check_positive(lr, f"{op}: lr"),
        check_probability(momentum, f"{op}: momentum"),
        check_int(steps, f"{op}: steps", minimum=0),
        bool(started),
        float(first_loss),
        check_positive(blow_up, f"{op}: blow_up"),
    )


@torch.library.register_fake("gdla::inverse_momentum_run")
def _momentum_run_fake(A, X, buf, side, lr, momentum, steps, started, first_loss, blow_up):
    count = torch.library.get_ctx().new_dynamic_size(min=0, max=steps)
    return A.new_empty((count,), dtype=torch.float64)
