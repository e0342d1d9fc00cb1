"""Small tensor helpers shared by the built-in problem plugins.

Everything here works on batches of matrices, shape ``(..., m, n)``: the leading dimensions index
independent problems. Norms keep those batch dimensions; ``worst`` reduces them to one number
(the stop test of a batch is its worst member). Also here: seeded CPU draws, the numerical
singularity threshold, orthonormal retractions (sign-fixed QR, polar) with exact gradients, and
:class:`KeptFigure` (a figure kept for the same, unmodified tensors).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gdla.norms import relative_norm  # re-exported: the built-ins' metrics import it from here too

__all__ = [
    "KeptFigure",
    "as_working_float",
    "batch_index",
    "batched_mse",
    "condition_numbers",
    "cpu_generator",
    "declared",
    "frobenius",
    "numerically_singular_threshold",
    "relative_frobenius",
    "relative_norm",
    "polar_factor",
    "polar_factor_differentiable",
    "safe_scale",
    "sign_fixed_qr",
    "sign_fixed_qr_differentiable",
    "uniform",
    "worst",
]


def as_working_float(tensor: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision data to float32; float32 and float64 pass through unchanged.

    Gradient descent in float16/bfloat16 cannot reach any useful tolerance, and the
    ``torch.linalg`` references do not support those dtypes on every device.
    """
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.to(torch.float32)
    return tensor


def cpu_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed`` (reproducible across devices and runs)."""
    return torch.Generator(device="cpu").manual_seed(seed)


def uniform(
    shape: Sequence[int],
    generator: torch.Generator,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """Uniform ``[0, 1)`` draws made on the CPU in float64, then moved to ``dtype``/``device``.

    Drawing in float64 first makes the float32 and float64 versions of a run start from the same
    point (up to rounding), and drawing on the CPU makes it independent of the device.
    """
    values = torch.rand(tuple(shape), generator=generator, dtype=torch.float64)
    return values.to(dtype=dtype, device=device)


def frobenius(tensor: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each matrix: shape ``(..., m, n)`` -> ``(...)``."""
    return torch.linalg.matrix_norm(tensor, ord="fro")


def safe_scale(norms: torch.Tensor) -> torch.Tensor:
    """``norms`` with zeros replaced by one (for scales of data, never for the denominator of a metric).

    A norm that underflowed to zero would silently turn a relative metric into an absolute one
    (the cause of false successes on tiny data): metrics use :func:`gdla.norms.relative_norm` instead.
    """
    return torch.where(norms > 0, norms, torch.ones_like(norms))


def relative_frobenius(difference: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per problem ``‖difference‖_F / ‖reference‖_F`` in scaled arithmetic (see :func:`gdla.norms.relative_norm`)."""
    return relative_norm(difference, reference, dim=(-2, -1))


def batched_mse(difference: torch.Tensor) -> torch.Tensor:
    r"""Sum over the batch of each problem's mean squared entry.

    .. math:: L = \sum_b \frac{1}{mn} \sum_{ij} D_{b,ij}^2

    Summing (not averaging) over the batch keeps each problem's gradient independent of how many
    problems share the batch; for a single matrix it is the plain mean.
    """
    return difference.square().mean(dim=(-2, -1)).sum()


def declared(owner: Any, data: torch.Tensor, name: str, build: Callable[[], Any]) -> Any:
    """``build()``, made once per ``name`` while ``owner``'s ``data`` is the same tensor, and kept in ``owner``'s
    ``_declared_for`` attribute (which its ``__getstate__`` must leave out).

    For a problem's declarations (frozen objects that hold ``data`` itself, not its values: an in-place change
    leaves them right), which every method asks for, several times a solve. Nothing made under
    ``torch.inference_mode()`` is kept: an inference tensor must not reach a later autograd run.
    """
    if torch.is_inference_mode_enabled():
        return build()
    kept = owner.__dict__.get("_declared_for")
    if kept is None or kept[0] is not data:
        kept = owner._declared_for = (data, {})
    return kept[1][name] if name in kept[1] else kept[1].setdefault(name, build())


def worst(values: torch.Tensor) -> torch.Tensor:
    """The largest entry of a per-problem tensor as a 0-dim tensor (a NaN entry propagates, never hidden)."""
    return values.max() if values.dim() > 0 else values


def batch_index(flat: int, batch_shape: Sequence[int]) -> tuple[int, ...]:
    """The batch index ``(i, j, ...)`` of the ``flat``-th problem of a batch of shape ``batch_shape``."""
    index: list[int] = []
    for size in reversed(tuple(batch_shape)):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def numerically_singular_threshold(dtype: torch.dtype) -> float:
    """Condition number above which a matrix counts as singular in ``dtype``: ``1 / (10 eps)``.

    Beyond it, the inverse carries less than one correct digit in that precision (about 8.4e5
    for float32, 4.5e14 for float64); below it the answer is merely as accurate as ``cond · eps``.
    """
    return 1.0 / (10.0 * torch.finfo(dtype).eps)


def condition_numbers(singular_values: torch.Tensor) -> torch.Tensor:
    """2-norm condition numbers ``σ_max / σ_min`` from singular values of shape ``(..., k)``.

    Returns ``inf`` where ``σ_min`` is zero (and 0/0 -> ``inf`` for an all-zero matrix).
    """
    top = singular_values[..., 0]
    bottom = singular_values[..., -1]
    inf = torch.full_like(top, float("inf"))
    return torch.where(bottom > 0, top / torch.where(bottom > 0, bottom, torch.ones_like(bottom)), inf)


def sign_fixed_qr(tensor: torch.Tensor) -> torch.Tensor:
    """The ``Q`` factor of a reduced QR of ``tensor`` (shape ``(..., m, k)``, ``m >= k``), signed so ``diag(R) > 0``.

    Fixing the signs makes the factor unique, so a retraction does not flip columns at random.
    """
    q, r = torch.linalg.qr(tensor, mode="reduced")
    diagonal = torch.diagonal(r, dim1=-2, dim2=-1)
    signs = torch.where(diagonal < 0, -torch.ones_like(diagonal), torch.ones_like(diagonal))
    return q * signs.unsqueeze(-2)


def polar_factor(tensor: torch.Tensor) -> torch.Tensor:
    """The orthonormal polar factor ``W Zᵀ`` of ``tensor = W Σ Zᵀ`` (shape ``(..., m, k)``, ``m >= k``).

    It is the orthonormal matrix nearest to ``tensor`` in the Frobenius norm.
    """
    w, _, zh = torch.linalg.svd(tensor, full_matrices=False)
    return w @ zh


def sign_fixed_qr_differentiable(tensor: torch.Tensor) -> torch.Tensor:
    """:func:`sign_fixed_qr` through which autograd differentiates (``torch.linalg.qr``'s backward).

    The signs are piecewise constant, so they are taken out of the graph.
    """
    q, r = torch.linalg.qr(tensor, mode="reduced")
    diagonal = torch.diagonal(r, dim1=-2, dim2=-1).detach()
    signs = torch.where(diagonal < 0, -torch.ones_like(diagonal), torch.ones_like(diagonal))
    return q * signs.unsqueeze(-2)


class _PolarFactor(torch.autograd.Function):
    """``Q = W Zᵀ`` for ``X = W Σ Zᵀ``, with a backward that stays finite for repeated ``σ``.

    Autograd through ``torch.linalg.svd`` divides by ``σ_i² − σ_j²`` and returns NaN at any
    orthonormal ``X`` (all ``σ = 1``), exactly where a retraction lives. From ``X = Q H``:
    ``dQ = Q Ω + (I − QQᵀ) dX H⁻¹`` with ``Ω H + H Ω = Qᵀ dX − dXᵀ Q``, so for an upstream ``G``

        ``∂/∂X = 2 Q Y + (I − QQᵀ) G H⁻¹``,  ``Y = Z (C ∘ Zᵀ skew(QᵀG) Z) Zᵀ``,  ``C_ij = 1 / (σ_i + σ_j)``.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # shape: (..., m, k), m >= k
        w, sigma, zh = torch.linalg.svd(tensor, full_matrices=False)
        q = w @ zh
        ctx.save_for_backward(q, sigma, zh)
        return q

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        q, sigma, zh = ctx.saved_tensors
        z = zh.mT
        b = q.mT @ grad
        skew = (b - b.mT) / 2
        c = 1.0 / (sigma.unsqueeze(-1) + sigma.unsqueeze(-2))
        y = z @ (c * (zh @ skew @ z)) @ zh
        h_inv = (z / sigma.unsqueeze(-2)) @ zh
        return 2 * q @ y + (grad - q @ (q.mT @ grad)) @ h_inv


def polar_factor_differentiable(tensor: torch.Tensor) -> torch.Tensor:
    """:func:`polar_factor` with a backward that is finite at orthonormal inputs (see ``_PolarFactor``)."""
    return _PolarFactor.apply(tensor)


class KeptFigure:
    """The last figure computed from some tensors, given again while they are the same, unmodified tensors.

    Tensors are compared by identity and version counter (an in-place change bumps it) and held by weak reference,
    so the keeper keeps none of them alive; inference tensors have no version counter and are never kept. A copy
    of its owner must get its own keeper; pickling keeps nothing.
    """

    def __init__(self) -> None:
        self._kept: tuple[tuple[Any, ...], tuple[int, ...], torch.Tensor] | None = None

    def __call__(self, tensors: tuple[torch.Tensor, ...], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The kept figure where ``tensors`` are those it came from, unmodified; else ``compute()``, then kept."""
        if any(t.is_inference() for t in tensors):
            return compute()
        versions, kept = tuple(t._version for t in tensors), self._kept
        if kept is not None and kept[1] == versions and all(r() is t for r, t in zip(kept[0], tensors, strict=True)):
            return kept[2]
        value = compute()
        self._kept = (tuple(weakref.ref(t) for t in tensors), versions, value)
        return value

    def __getstate__(self) -> dict[str, Any]:
        return {"_kept": None}
