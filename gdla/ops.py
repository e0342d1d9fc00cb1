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

import torch
from torch.autograd.graph import increment_version

from gdla._op_checks import CUDA_KERNELS, SIDES, _in_place, _mask, _matrix, _shape, _side, _tensor
from gdla._op_checks import OPS as _ops
from gdla.errors import InputError, ShapeError
from gdla.limits import RUN_MAX_COLUMNS, RUN_MAX_HOPS, RUN_MAX_N, SMALL_MAX_N
from gdla.ops_small import (
    inverse_adam_run,
    inverse_momentum_run,
    masked_sgd_run,
    small_inverse_momentum,
    small_inverse_newton_schulz,
    small_inverse_newton_schulz_run,
    small_inverse_residuals,
    svd_sgd_run,
)
from gdla.validation import check_nonnegative, check_probability

__all__ = [
    "RUN_MAX_COLUMNS",
    "RUN_MAX_HOPS",
    "RUN_MAX_N",
    "SIDES",
    "SMALL_MAX_N",
    "has_cuda_kernels",
    "inverse_adam_run",
    "inverse_momentum_run",
    "inverse_mse",
    "inverse_mse_and_grad",
    "masked_hadamard",
    "masked_sgd_run",
    "masked_update_",
    "small_inverse_momentum",
    "small_inverse_newton_schulz",
    "small_inverse_newton_schulz_run",
    "small_inverse_residuals",
    "svd_loss",
    "svd_loss_and_grad",
    "svd_sgd_run",
]



def has_cuda_kernels() -> bool:
    """Whether ``gdla._C`` was built with its CUDA kernels."""
    return CUDA_KERNELS


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
    if (  # the hot path: plain CPU tensors of one float dtype and shape pass every check below, so skip them
        type(U) is torch.Tensor
        and type(init) is torch.Tensor
        and type(omega) is torch.Tensor
        and U.is_cpu
        and init.is_cpu
        and omega.is_cpu
        and (U.dtype is torch.float32 or U.dtype is torch.float64)
        and init.dtype is U.dtype
        and omega.dtype is U.dtype
        and init.shape == U.shape
        and omega.shape == U.shape
    ):
        return _MASKED_HADAMARD(init, omega, U)
    op = "masked_hadamard"
    U = _tensor(op, U, "U")
    init = _tensor(op, init, "init", U, "U")
    omega = _mask(op, omega, U)
    for name, tensor in (("init", init), ("omega", omega)):
        _shape(op, tensor, name, tuple(U.shape), "to match U")
    return _MASKED_HADAMARD(init, omega, U)


#: The op's overload itself (one Python layer fewer than ``torch.ops.gdla.masked_hadamard``).
_MASKED_HADAMARD = _ops.masked_hadamard.default


@torch.library.register_fake("gdla::masked_hadamard")
def _masked_hadamard_fake(init: torch.Tensor, omega: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    return U.new_empty(U.shape)


# masked_hadamard's autograd is registered in C++ (csrc/autograd.cpp): a dispatcher hop, not ~35 µs
# of Python torch.library autograd a call.


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
    _in_place(op, {"U": U} if buf is None else {"U": U, "buf": buf}, {"omega": omega, "G": G}, elementwise=True)
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
