r"""Estimates of extreme eigenvalues and singular values, shared by the problem-aware solvers.

The solvers need the spectrum's ends, not the spectrum: heavy-ball takes its step and momentum
from the Hessian's largest and smallest eigenvalues ``L`` and ``μ``, and every ``expected_steps``
turns a condition number into an iteration count. Lanczos with full reorthogonalisation gives
both ends from ``k`` operator products (exact once ``k`` reaches the number of distinct
eigenvalues); the operator is applied, never formed.

Everything works on batches: vectors have shape ``(..., d)`` and the leading dimensions index
independent operators (a batch of matrices), so one call estimates every member at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from gdla.mesh import distribute_like, full_tensor, is_dtensor
from gdla.problem import Params, Problem

__all__ = [
    "Lanczos",
    "Spectrum",
    "fixed_step_expected_steps",
    "fixed_step_rate",
    "flatten",
    "gram_extremes",
    "declared_hessian_extremes",
    "declares_gram",
    "hessian_extremes",
    "hessian_lanczos",
    "hessian_operator",
    "hessian_steps",
    "is_quadratic",
    "lanczos_extremes",
    "quadratic_reason",
    "settled_condition",
    "unflatten",
]

Matvec = Callable[[torch.Tensor], torch.Tensor]

#: A Lanczos vector shorter than this many ulps of ``‖H q‖`` is rounding noise: the Krylov space closed.
BREAKDOWN = 100.0
#: Lanczos iterations for a Hessian by default: exact for Hessians with up to this many distinct
#: eigenvalues (the inverse loss of an n x n matrix has n), and enough to resolve the smallest.
HESSIAN_STEPS = 120
#: Most vector entries kept by full reorthogonalisation (steps x parameters); fewer steps beyond.
LANCZOS_MEMORY = 10_000_000
#: Krylov dimensions of the successive Lanczos runs of :func:`settled_condition` (each about doubling).
SETTLING_ROUNDS = (2, 4, 8, 16, 32, 64, HESSIAN_STEPS)


class Spectrum:
    """Extreme eigenvalues of a symmetric positive semi-definite operator (per batch member).

    Attributes:
        largest: ``λ_max`` estimates, shape ``(...)``; Lanczos Ritz values approach it from below.
        smallest: smallest eigenvalue estimates above the numerical-zero floor, shape ``(...)``;
            Ritz values approach it from above. Zero eigenvalues (a null space) are skipped, so
            for a singular operator this is the smallest nonzero one.
        matvecs: operator products the estimate rests on (its Krylov dimension; a resumed run spent them over calls).
    """

    def __init__(self, largest: torch.Tensor, smallest: torch.Tensor, matvecs: int) -> None:
        self.largest = largest
        self.smallest = smallest
        self.matvecs = matvecs

    @property
    def condition(self) -> torch.Tensor:
        """``λ_max / λ_min`` per member (``inf`` where nothing is above the floor)."""
        return torch.where(self.smallest > 0, self.largest / self.smallest.clamp_min(1e-300), math.inf)

    def worst_condition(self) -> float:
        return float(self.condition.max())


def lanczos_extremes(matvec: Matvec, start: torch.Tensor, steps: int) -> Spectrum:
    """Extreme eigenvalues of a symmetric PSD operator by ``steps`` Lanczos iterations.

    Args:
        matvec: ``v ↦ H v`` applied to a batch of vectors, shape ``(..., d) -> (..., d)``,
            independently per leading index.
        start: starting vectors, shape ``(..., d)`` (random ones see every eigen-direction).
        steps: Krylov dimension ``k`` (clipped to ``d``). Full reorthogonalisation (twice, so it
            holds in floating point) keeps the Ritz values free of ghost copies.

    Members whose Krylov space closes early (an invariant subspace) stop there: every eigenvalue
    the start vector sees is then found, and their later tridiagonal entries are filler whose
    Ritz pairs are dropped. The smallest eigenvalue skips values at rounding level (a null space)
    and prefers Ritz values certified by their residual bound. (One call of :meth:`Lanczos.extremes`.)
    """
    return Lanczos(matvec, start).extremes(steps)


class Lanczos:
    """A Lanczos run from one start that goes on where it stopped (:func:`lanczos_extremes`, resumable).

    :meth:`extremes` of ``k`` steps after one of ``j < k`` costs ``k − j`` operator products and gives the bits a
    fresh ``k``-step run gives; one of ``k <= j`` costs none. :func:`settled_condition`'s growing runs so pay for
    the longest alone.
    """

    def __init__(self, matvec: Matvec, start: torch.Tensor) -> None:
        self.matvec, self.dtype, self.d = matvec, start.dtype, start.shape[-1]
        self.q = start / _safe(torch.linalg.vector_norm(start, dim=-1, keepdim=True))
        self.basis = [self.q]
        self.previous = torch.zeros_like(self.q)
        self.alive = torch.ones(start.shape[:-1], dtype=torch.bool, device=start.device)
        self.scale = torch.zeros(start.shape[:-1], dtype=start.dtype, device=start.device)
        self.beta = torch.zeros_like(self.scale)
        #: per step: the tridiagonal's diagonal entry, the residual norm after it, whether the member was already
        #: dead, and the running largest ``‖H q‖``
        self.alphas: list[torch.Tensor] = []
        self.betas: list[torch.Tensor] = []
        self.dead: list[torch.Tensor] = []
        self.scales: list[torch.Tensor] = []

    def _step(self) -> None:
        """One iteration, and the next Lanczos vector made ready."""
        q, eps = self.q, torch.finfo(self.dtype).eps
        w = self.matvec(q)
        alpha = (w * q).sum(-1)
        self.dead.append(~self.alive)
        self.alphas.append(torch.where(self.alive, alpha, self.alphas[0] if self.alphas else alpha))
        self.scale = torch.maximum(self.scale, torch.linalg.vector_norm(w, dim=-1))
        self.scales.append(self.scale)
        w = w - alpha[..., None] * q - self.beta[..., None] * self.previous
        stacked = torch.stack(self.basis, dim=-2)  # shape: (..., j+1, d)
        for _ in range(2):  # Gram-Schmidt twice is enough in floating point
            w = w - ((stacked @ w[..., None]) * stacked).sum(-2)
        beta = torch.linalg.vector_norm(w, dim=-1)
        # breakdown: the Krylov space is invariant and every eigenvalue it holds is found. Going on
        # from the rounding noise would mix null-space directions into spurious small Ritz values
        self.alive = self.alive & (beta > BREAKDOWN * eps * _safe(self.scale))
        self.beta = torch.where(self.alive, beta, torch.zeros_like(beta))
        self.betas.append(self.beta)
        self.previous = q
        self.q = torch.where(self.alive[..., None], w / _safe(self.beta)[..., None], torch.zeros_like(w))
        self.basis.append(self.q)

    def extremes(self, steps: int) -> Spectrum:
        """The spectrum's ends from the first ``steps`` iterations (clipped to ``d``), run now where not run yet."""
        d, eps, work = self.d, torch.finfo(self.dtype).eps, torch.float64
        k = max(1, min(int(steps), d))
        while len(self.alphas) < k:
            self._step()
        beta, scale = self.betas[k - 1], self.scales[k - 1]
        tri = torch.diag_embed(torch.stack(self.alphas[:k], dim=-1).to(work))
        if k > 1:
            off = torch.stack(self.betas[: k - 1], dim=-1).to(work)
            tri = tri + torch.diag_embed(off, offset=1) + torch.diag_embed(off, offset=-1)
        ritz, vectors = torch.linalg.eigh(tri)  # shape: (..., k), (..., k, k); ascending
        # Ritz pairs living on the filler of a member that broke down are not part of its spectrum
        filler = torch.stack(self.dead[:k], dim=-1).to(work)  # shape: (..., k)
        real = (vectors.square() * filler[..., :, None]).sum(-2) < 0.5
        largest = torch.where(real, ritz, torch.full_like(ritz, -math.inf)).max(dim=-1).values
        # ‖H y − θ y‖ for Ritz pair (θ, y): |β_k| times y's last component, plus the rounding of the basis
        bound = (beta.to(work)[..., None] * vectors[..., -1, :]).abs() + math.sqrt(k) * eps * scale.to(work)[..., None]
        # below the floor: rounding noise on a null space. A value that does not exceed its own error
        # bound twice over may still be a null-space value on its way to 0, so a certified one is preferred
        floor = largest.abs() * (4 * math.sqrt(d) * eps)
        candidate = real & (ritz > floor[..., None])
        certified = candidate & (ritz > 2 * bound)
        pick = torch.where(certified.any(dim=-1, keepdim=True), certified, candidate)
        smallest = torch.where(pick, ritz, torch.full_like(ritz, math.inf)).min(dim=-1).values
        smallest = torch.where(torch.isfinite(smallest), smallest, torch.zeros_like(smallest))
        return Spectrum(largest.to(self.dtype), smallest.to(self.dtype), k)


def gram_extremes(A: torch.Tensor, steps: int = 100, seed: int = 0, dtype: torch.dtype = torch.float64) -> Spectrum:
    """Extreme squared singular values ``σ²`` of each matrix in ``A`` (shape ``(..., m, n)``).

    Lanczos on the smaller Gram matrix (``AᵀA`` or ``AAᵀ``), applied as two products (exact up
    to rounding when ``steps`` reaches the smaller side, as it does by default up to 100); the
    smallest value skips a null space, so a rank-deficient ``A`` gives its smallest nonzero ``σ²``.
    Runs in ``dtype`` (default float64; the largest value is accurate to rounding in any dtype).
    Squaring limits the smallest to about ``ε σ_max²`` absolute accuracy, enough
    for step counts and condition numbers up to ``~1/√ε``.
    """
    A = full_tensor(A).detach().to(dtype)  # an estimate: on the gathered matrix where A is a DTensor
    m, n = A.shape[-2], A.shape[-1]
    if n <= m:

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return (A.mT @ (A @ v[..., None]))[..., 0]

        d = n
    else:

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return (A @ (A.mT @ v[..., None]))[..., 0]

        d = m
    start = _random((*A.shape[:-2], d), seed, A.dtype, A.device)
    return lanczos_extremes(matvec, start, steps)


# -- Hessians of problems --------------------------------------------------------------------
def flatten(params: Params) -> torch.Tensor:
    """All parameter tensors as one flat vector (in ``params``' key order; a DTensor gathered whole)."""
    return torch.cat([full_tensor(value).reshape(-1) for value in params.values()])


def unflatten(vector: torch.Tensor, like: Params) -> Params:
    """The inverse of :func:`flatten`: tensors shaped like ``like``'s (placed like a DTensor in ``like``)."""
    out: Params = {}
    offset = 0
    for key, value in like.items():
        size = value.numel()
        piece = vector[offset : offset + size]
        out[key] = distribute_like(piece.view(value.shape), value) if is_dtensor(value) else piece.view_as(value)
        offset += size
    return out


def hessian_operator(problem: Problem, params: Params) -> Matvec:
    """``v ↦ ∇²L(params) v`` on flat vectors, by differentiating ``problem.loss`` twice.

    The double backward applies the Hessian exactly (no finite-difference cancellation), at
    about the cost of two gradients.
    """
    leaves = {key: value.detach().clone().requires_grad_(True) for key, value in params.items()}
    with torch.enable_grad():
        loss = problem.loss(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
    # a gradient that does not depend on the parameters (a linear term) adds nothing to the Hessian
    pairs = [(key, grad) for key, grad in zip(leaves, grads, strict=True) if grad is not None and grad.requires_grad]

    def matvec(vector: torch.Tensor) -> torch.Tensor:
        pieces = unflatten(vector, leaves)
        if not pairs:
            return torch.zeros_like(vector)
        with torch.enable_grad():
            dot = sum((grad * pieces[key]).sum() for key, grad in pairs)
            out = torch.autograd.grad(dot, list(leaves.values()), retain_graph=True, allow_unused=True)
        pieces_out = zip(leaves.values(), out, strict=True)
        flat = [full_tensor(torch.zeros_like(leaf) if g is None else g).reshape(-1) for leaf, g in pieces_out]
        return torch.cat(flat)

    return matvec


def declared_hessian_extremes(
    problem: Problem, steps: int = HESSIAN_STEPS, seed: int = 0, dtype: torch.dtype = torch.float64
) -> Spectrum | None:
    """The loss's Hessian extremes from its declared least-squares form, or ``None`` where it declares too little.

    A :class:`~gdla.capabilities.LinearLeastSquares` with an exact Gram factor ``F``
    (``gram_exact``) and a ``hessian_scale()`` ``c`` has the Hessian ``c·FᵀF`` on every block:
    Lanczos on ``F`` (two small products a step, :func:`gram_extremes`) instead of on the Hessian
    (two backward passes a step); one global operator, so the blocks' largest and smallest count.
    """
    if not declares_gram(problem):
        return None
    form = problem.least_squares()
    scale, F = form.hessian_scale(), form.gram_factor
    spectrum = gram_extremes(F, steps=steps, seed=seed, dtype=dtype)
    largest, smallest = spectrum.largest.max().double(), spectrum.smallest.min().double()
    return Spectrum(largest * scale, smallest * scale, spectrum.matvecs)


def declares_gram(problem: Problem) -> bool:
    """Whether the loss's Hessian is ``c·FᵀF`` by declaration (:func:`declared_hessian_extremes` reads ``F``)."""
    form = problem.least_squares()
    return form is not None and form.gram_factor is not None and form.gram_exact and form.hessian_scale() is not None


def settled_condition(
    estimate: Callable[[int], Spectrum],
    size: int,
    enough: Callable[[float], bool],
    affordable: Callable[[float], float],
) -> float:
    """The worst condition number by Lanczos runs of growing Krylov dimension (:data:`SETTLING_ROUNDS`), stopping
    as soon as more would cost more than the estimate is worth.

    Ritz values lie inside the spectrum, so a run's condition number ``κ_k`` never exceeds the true one and grows
    with ``k``: every figure is a lower estimate. The search stops after the run of ``k`` steps when
    ``enough(κ_k)`` (a larger value would not change the caller's verdict, e.g. a budget already exceeded), when
    the next run would take the products spent past ``affordable(κ_k)`` (what the caller may spend before a run
    that ``κ_k`` predicts: a share of that run's own products), or when ``k`` reaches ``size`` (the Krylov space
    holds every direction). A well-conditioned operator so costs 4 products instead of :data:`HESSIAN_STEPS`; an
    ill-conditioned one whose small eigenvalues the first runs do not see yet gets a low figure, never a high one.

    Args:
        estimate: ``k ↦`` the spectrum by ``k`` Lanczos steps from one fixed start, a run that goes on where the
            last one stopped (:class:`Lanczos`): the products spent are the longest run's steps.
        size: the operator's dimension.
        enough: whether a condition number already decides the caller's question.
        affordable: the operator products an estimate may cost, given the condition number it found.
    """
    kappa = math.inf
    for steps, following in zip(SETTLING_ROUNDS, (*SETTLING_ROUNDS[1:], 0), strict=True):
        kappa = estimate(steps).worst_condition()
        if steps >= size or not math.isfinite(kappa) or enough(kappa) or min(following, size) > affordable(kappa):
            break
    return kappa


def hessian_extremes(
    problem: Problem, params: Params, steps: int = HESSIAN_STEPS, seed: int = 0, operator: Matvec | None = None
) -> Spectrum:
    """Extreme eigenvalues of the loss's Hessian at ``params`` (one global operator).

    For a quadratic loss the Hessian is the same everywhere, so this is its spectrum. Directions
    along which the loss does not change (a masked entry, a null space) are skipped. ``steps`` is
    lowered for huge problems so the Lanczos basis stays within ``LANCZOS_MEMORY`` entries.
    Where the problem declares its Gram factor (:func:`declared_hessian_extremes`), from that. ``operator``: the
    Hessian's :func:`hessian_operator` at ``params`` where the caller has built it already.
    """
    declared = declared_hessian_extremes(problem, steps, seed)
    if declared is not None:
        return declared
    run = hessian_lanczos(problem, params, seed, operator)
    return run.extremes(hessian_steps(steps, run.d))


def hessian_lanczos(problem: Problem, params: Params, seed: int = 0, operator: Matvec | None = None) -> Lanczos:
    """The Lanczos run on the loss's Hessian at ``params`` that :func:`hessian_extremes` makes (not started)."""
    matvec = hessian_operator(problem, params) if operator is None else operator
    template = flatten(params)
    # a random start: premultiplying by H to leave out a null space would also bury the
    # smallest nonzero eigen-direction (its weight drops by 1/κ); the floor skips the zeros instead
    return Lanczos(matvec, _random(template.shape, seed, template.dtype, template.device))


def hessian_steps(steps: int, size: int) -> int:
    """``steps`` lowered (not below 2) so a Lanczos basis of ``size``-vectors stays within ``LANCZOS_MEMORY``."""
    return max(2, min(steps, LANCZOS_MEMORY // max(size, 1)))


def fixed_step_rate(lr: float, momentum: float, eigenvalues: list[float]) -> float:
    r"""Worst contraction per step of ``x ← x − lr ∇f + momentum (x − x_prev)`` over the given eigenvalues.

    On an eigen-direction with Hessian eigenvalue ``λ`` the error follows
    ``e_{k+1} = (1 + β − αλ) e_k − β e_{k−1}``, contracting by the larger root modulus of
    ``r² − (1 + β − αλ) r + β``. Gradient descent is ``β = 0``; seed 000's and ``torch.optim.SGD``'s
    momentum are the same recursion. Evaluate at the spectrum's ends: in between it is no worse.
    """
    worst = 0.0
    for lam in eigenvalues:
        b = 1 + momentum - lr * lam
        disc = b * b - 4 * momentum
        if disc >= 0:
            root = max(abs((b + math.sqrt(disc)) / 2), abs((b - math.sqrt(disc)) / 2))
        else:
            root = math.sqrt(momentum)  # complex pair, modulus √β
        worst = max(worst, root)
    return worst


def fixed_step_expected_steps(
    problem: Problem, params: Params, lr: float, momentum: float, tol: float, *, steps: int = HESSIAN_STEPS
) -> float | None:
    """Iterations gradient descent (with heavy-ball momentum) needs to shrink the residual to ``tol``.

    ``None`` unless the loss is quadratic (then its Hessian's ends come from Lanczos); ``inf`` when
    the step is unstable for the largest eigenvalue (``lr λ_max >= 2(1 + momentum)``).
    """
    if not (0 < tol < 1) or not is_quadratic(problem):
        return None
    spectrum = hessian_extremes(problem, params, steps=steps)
    largest, smallest = float(spectrum.largest), float(spectrum.smallest)
    if not smallest > 0:
        return None
    rate = fixed_step_rate(lr, momentum, [smallest, largest])
    if rate >= 1:
        return math.inf
    return float(math.ceil(math.log(tol) / math.log(rate))) if rate > 0 else 1.0


def is_quadratic(problem: Problem) -> bool | None:
    """Whether ``problem``'s loss is quadratic in its parameters (``None``: it does not say).

    Read from the problem's ``quadratic`` attribute (class attribute or property, see
    :class:`gdla.Problem`).
    """
    value = getattr(problem, "quadratic", None)
    return value if isinstance(value, bool) else None


def quadratic_reason(problem: Problem, method: str) -> str | None:
    """The refusal of a method that needs a quadratic loss, or ``None`` if ``problem`` has one."""
    verdict = is_quadratic(problem)
    if verdict:
        return None
    if verdict is None:
        return (
            f"{method} needs a loss that is quadratic in the parameters, and problem {problem.name!r} does not "
            "say whether its loss is (give the problem class a 'quadratic = True' attribute if it is)"
        )
    return (
        f"{method} needs a loss that is quadratic in the parameters; problem {problem.name!r} "
        f"({problem_options(problem)}) is not: use 'adam' or 'lbfgs'"
    )


def problem_options(problem: Problem) -> str:
    try:
        info: dict[str, Any] = problem.describe()
    except Exception:  # a description is a courtesy here, never a reason to fail
        return "this instance"
    shown = {k: v for k, v in info.items() if k in ("hops", "activation", "loss", "loss_kind", "orthonormal")}
    return ", ".join(f"{k}={v!r}" for k, v in shown.items()) or "its loss"


def _safe(values: torch.Tensor) -> torch.Tensor:
    return torch.where(values > 0, values, torch.ones_like(values))


def _random(shape: Any, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Seeded standard normal draws made on the CPU (the same on every device)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
