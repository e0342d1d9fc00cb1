"""Banded Toeplitz building blocks shared by the ``toeplitz`` and ``toeplitz-net`` problems.

Conventions (seed 004):

* A row ``r`` of length ``n`` stands for the Toeplitz matrix ``T[i, j] = r[n // 2 + j − i]``
  (0 where that index falls outside the row), so the middle entry is the main diagonal.
* ``2b + 1`` band parameters ``c`` (offsets ``−b..b``) stand for ``B[i, j] = c[j − i + b]`` when
  ``|j − i| <= b``, else 0.
* Both losses are ``‖(T − B) W‖_F²`` for a fixed weight matrix ``W`` of shape ``(n, K)``:
  ``"spectral"`` takes ``W[:, k] = y_k / (‖y_k‖ √K)`` for probe vectors ``y_k``, giving
  ``mean_k ‖(T − B) y_k‖² / ‖y_k‖²``; ``"frobenius"`` takes ``W = I / √n`` (the unit vectors as
  probes), giving ``‖T − B‖_F² / n``, the same scale as the spectral loss for isotropic probes.

Because ``B`` is linear in ``c``, each loss is the least-squares objective ``‖D c − t‖²`` with the
design matrix ``D[:, m] = vec(E_m W)`` (``E_m`` the 0/1 matrix of offset ``m − b``) and
``t = vec(T W)``; everything here is built by index arithmetic, with no loop over rows or probes.
"""

from __future__ import annotations

from typing import Any

import torch

from gdla.errors import InputError, ShapeError
from gdla.norms import relative_gap, relative_norm
from gdla.validation import check_finite, check_int

__all__ = [
    "resolve_probes",
    "LOSSES",
    "band_adjoint",
    "band_to_matrix",
    "check_bandwidth",
    "check_probes",
    "check_rows",
    "default_bandwidth",
    "design",
    "lstsq_bands",
    "normal_equations_gap",
    "probe_weights",
    "relative_error",
    "row_to_matrix",
    "seed_probes",
    "weigh",
]

LOSSES = ("spectral", "frobenius")
#: Bandwidth of seed 004 (7 parameters for rows of length 11).
SEED_BANDWIDTH = 3


def default_bandwidth(n: int) -> int:
    """The seed's half-bandwidth 3, clipped to ``n − 1`` for small matrices."""
    return min(SEED_BANDWIDTH, n - 1)


def check_bandwidth(value: Any, n: int, name: str = "bandwidth") -> int:
    """Return ``value`` as a half-bandwidth ``b`` with ``0 <= b <= n − 1``."""
    b = check_int(value, name, minimum=0)
    if b > n - 1:
        raise InputError(f"{name}: expected an integer <= n - 1 = {n - 1} for {n}x{n} matrices, received {b}")
    return b


def check_rows(value: Any, name: str, *, batch: bool = True) -> torch.Tensor:
    """Return ``value`` as a finite floating tensor of rows, shape ``(..., n)`` (``(n,)`` without ``batch``)."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(
                f"{name}: expected a tensor, NumPy array or list of numbers, received {value!r} ({exc})"
            ) from None
    if not value.is_floating_point():
        raise InputError(
            f"{name}: expected floating-point data (float32 or float64), received {value.dtype}; "
            "convert it with .double() or .float() first"
        )
    if value.dim() < 1 or (not batch and value.dim() != 1):
        want = "a row vector of shape (n,)" if not batch else "rows of shape (..., n)"
        raise ShapeError(f"{name}: expected {want}, received shape {tuple(value.shape)}")
    if value.numel() == 0:
        raise ShapeError(f"{name}: expected non-empty rows, received shape {tuple(value.shape)}")
    check_finite(value, name)
    if value.dtype not in (torch.float32, torch.float64):
        value = value.float()
    return value


def row_to_matrix(row: torch.Tensor) -> torch.Tensor:
    """Toeplitz matrices ``T[i, j] = row[n // 2 + j − i]`` (0 outside the row).

    Args:
        row: the rows.  # shape: (..., n)

    Returns:
        The matrices.  # shape: (..., n, n)

    For odd ``n`` this is exactly seed 004's ``row_to_matrix``; for even ``n`` the seed's slices
    do not give a Toeplitz matrix, and this formula is the Toeplitz reading of the same rule.
    """
    n = row.shape[-1]
    ar = torch.arange(n, device=row.device)
    index = n // 2 + ar[None, :] - ar[:, None]
    inside = (index >= 0) & (index < n)
    gathered = row[..., index.clamp(0, n - 1)]
    return torch.where(inside, gathered, torch.zeros((), dtype=row.dtype, device=row.device))


def band_to_matrix(band: torch.Tensor, n: int) -> torch.Tensor:
    """Banded Toeplitz matrices ``B[i, j] = band[j − i + b]`` for ``|j − i| <= b``, else 0.

    Args:
        band: the ``2b + 1`` diagonal values, offsets ``−b..b``.  # shape: (..., 2b+1)
        n: matrix size (``b <= n − 1``).

    Returns:
        The matrices, differentiable in ``band``.  # shape: (..., n, n)
    """
    b = (band.shape[-1] - 1) // 2
    ar = torch.arange(n, device=band.device)
    offset = ar[None, :] - ar[:, None] + b
    inside = (offset >= 0) & (offset <= 2 * b)
    gathered = band[..., offset.clamp(0, 2 * b)]
    return torch.where(inside, gathered, torch.zeros((), dtype=band.dtype, device=band.device))


def band_adjoint(matrix: torch.Tensor, bandwidth: int) -> torch.Tensor:
    """Adjoint of :func:`band_to_matrix`: the sums of ``matrix``'s diagonals of offset ``−b..b``.

    Args:
        matrix: the matrices.  # shape: (..., n, n)
        bandwidth: ``b``.

    Returns:
        ``s[..., m] = Σ_{j − i = m − b} matrix[..., i, j]``.  # shape: (..., 2b+1)
    """
    n = matrix.shape[-1]
    b = bandwidth
    ar = torch.arange(n, device=matrix.device)
    offset = ar[None, :] - ar[:, None] + b
    inside = (offset >= 0) & (offset <= 2 * b)
    out = matrix.new_zeros(*matrix.shape[:-2], 2 * b + 1)
    return out.index_add_(-1, offset[inside], matrix[..., inside])


def seed_probes(n: int, count: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Seed 004's probe vectors ``rand(n) · rand(1) · n``, ``count`` of them.  # shape: (count, n)"""
    scale = torch.rand(count, 1, generator=generator, dtype=torch.float64)
    return (torch.rand(count, n, generator=generator, dtype=torch.float64) * scale * n).to(dtype)


def check_probes(value: Any, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Validate user probes: a finite ``(K, n)`` float tensor with no zero row."""
    probes = check_rows(value, "probes")
    if probes.dim() != 2 or probes.shape[-1] != n:
        raise ShapeError(
            f"probes: expected shape (K, n) = (K, {n}) to match the target's n = {n}, received {tuple(probes.shape)}"
        )
    norms = torch.linalg.vector_norm(probes, dim=-1)
    if bool((norms == 0).any()):
        first = int(torch.nonzero(norms == 0)[0, 0])
        raise InputError(
            f"probes: expected non-zero probe vectors (each is divided by its norm), row {first} is all zeros"
        )
    return probes.to(dtype=dtype, device=device)


def resolve_probes(
    loss_kind: str, probes: Any, n: int, num_probes: int, probe_seed: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """The probe vectors ``(K, n)`` a loss uses: none for ``"frobenius"``, the given ones, or the seed's recipe."""
    if loss_kind == "frobenius":
        if probes is not None:
            raise InputError("probes: only loss='spectral' uses probe vectors, received probes with loss='frobenius'")
        return None
    if probes is None:
        return seed_probes(n, num_probes, torch.Generator().manual_seed(probe_seed), dtype).to(device)
    return check_probes(probes, n, dtype, device)


def probe_weights(probes: torch.Tensor | None, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The weight matrix ``W`` of the module docstring (``probes=None`` means ``"frobenius"``).  # shape: (n, K)"""
    if probes is None:
        return torch.eye(n, dtype=dtype, device=device) / n**0.5
    norms = torch.linalg.vector_norm(probes, dim=-1, keepdim=True)
    return (probes / (norms * probes.shape[0] ** 0.5)).T.contiguous()


def weigh(matrix: torch.Tensor, weights: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """``matrix @ W``; for ``"frobenius"`` (``probes=None``, ``W = I / √n``) without the O(n³) product.

    Args:
        matrix: ``T``.  # shape: (..., n, n)
        weights: ``W`` from :func:`probe_weights`.  # shape: (n, K)
        probes: the probes, or ``None`` for ``"frobenius"``.

    Returns:
        ``T W``.  # shape: (..., n, K)
    """
    if probes is None:
        return matrix / matrix.shape[-1] ** 0.5
    return matrix @ weights


def design(weights: torch.Tensor, bandwidth: int) -> torch.Tensor:
    """Design matrix ``D`` with ``D @ band == vec(B W)`` (row-major ``vec``).

    Args:
        weights: ``W``.  # shape: (n, K)
        bandwidth: ``b``.

    Returns:
        ``D``.  # shape: (n * K, 2b+1)
    """
    n, k = weights.shape
    b = bandwidth
    # (E_m W)[i, :] = W[i + m − b, :]: pad W with b zero rows on both sides and take shifted windows.
    padded = torch.cat([weights.new_zeros(b, k), weights, weights.new_zeros(b, k)])
    index = torch.arange(n, device=weights.device)[:, None] + torch.arange(2 * b + 1, device=weights.device)[None, :]
    windows = padded[index]  # (n, 2b+1, K)
    return windows.permute(0, 2, 1).reshape(n * k, 2 * b + 1)


def lstsq_bands(design_matrix: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least-squares solutions of ``D c ≈ t`` for every target, in float64 on the CPU.

    Args:
        design_matrix: ``D``.  # shape: (r, m)
        targets: ``t``.  # shape: (..., r)

    Returns:
        ``c`` in the targets' dtype and device.  # shape: (..., m)
    """
    d64 = design_matrix.detach().to("cpu", torch.float64)
    t64 = targets.detach().to("cpu", torch.float64)
    batch = t64.shape[:-1]
    rhs = t64.reshape(-1, t64.shape[-1]).T  # (r, batch)
    # gelsd (SVD based) is exact for rank-deficient designs too, e.g. with fewer probes than n.
    solution = torch.linalg.lstsq(d64, rhs, driver="gelsd").solution
    return solution.T.reshape(*batch, d64.shape[-1]).to(dtype=targets.dtype, device=targets.device)


def normal_equations_gap(
    gram: torch.Tensor, rhs: torch.Tensor, band: torch.Tensor, *, dim: tuple[int, ...]
) -> torch.Tensor:
    """Relative residual ``‖G c − h‖ / (‖G c‖ + ‖h‖)`` of the normal equations ``G c = h``.

    ``G c − h`` is half the loss gradient, so this is 0 exactly at the least-squares solution
    even when the fit ``D c = t`` is inexact; it is scale-invariant, at most 1, and 0 when both
    terms vanish (then ``c`` is optimal). Norms are taken over ``dim``; the worst of the rest is
    returned.
    """
    ratio = relative_gap(band @ gram.T, rhs, dim)  # scaled: norms of 1e-200 data must not underflow
    return ratio.max() if ratio.dim() else ratio


def relative_error(value: torch.Tensor, reference: torch.Tensor, *, dim: tuple[int, ...]) -> torch.Tensor:
    """``‖value − reference‖ / ‖reference‖`` over ``dim`` in scaled arithmetic, worst of the rest.

    Where the reference is zero the ratio is undefined: NaN unless ``value`` is zero too (then 0).
    """
    ratio = relative_norm(value - reference, reference, dim=dim)
    return ratio.max() if ratio.dim() else ratio
