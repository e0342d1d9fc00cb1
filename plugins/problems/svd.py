r"""The (truncated) singular value decomposition found by minimising a least-squares loss.

For ``M`` of shape ``(m, n)`` and rank ``k`` the unknowns are ``U`` ``(m, k)``, ``s`` ``(k,)``
and ``V`` ``(n, k)``; the singular values are ``s²`` (squares keep them non-negative). With
``orthonormal="penalty"`` the loss is

.. math::

    L = \operatorname{mean}\big((U \operatorname{diag}(s^2) V^T - M)^2\big)
        + w_U \operatorname{mean}\big((U^T U - I_k)^2\big)
        + w_V \operatorname{mean}\big((V^T V - I_k)^2\big),

whose zero set (``k = min(m, n)``) or minimum (``k`` smaller, by Eckart-Young) is the SVD.
With ``orthonormal="qr"`` or ``"polar"`` the two penalties are dropped: the fit is evaluated at
the retracted factors ``R(U)``, ``R(V)`` and :meth:`SVDProblem.project` retracts ``U`` and ``V``
onto orthonormal matrices after every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

import gdla
from gdla.capabilities import SingularValueDecomposition, SvdPenaltyLoss
from gdla.errors import InputError
from gdla.norms import relative_norm
from gdla.options import Option
from gdla.problem import Params, Problem
from gdla.scaling import Normalization, check_representable, power_of_two_scale, scale_by_power_of_two
from gdla.validation import as_dtype, check_choice, check_int, check_matrix, check_nonnegative
from gdla_plugins.problems._common import (
    as_working_float,
    cpu_generator,
    polar_factor,
    polar_factor_differentiable,
    sign_fixed_qr,
    sign_fixed_qr_differentiable,
    uniform,
)

__all__ = ["SVDProblem"]

ORTHONORMAL = ("penalty", "qr", "polar")
#: The seed notebook drew its matrix right after ``torch.manual_seed(314)``.
EXAMPLE_SEED = 314


class SVDProblem(Problem):
    """Find ``M ≈ U diag(s²) Vᵀ`` with orthonormal ``U``, ``V`` by gradient descent.

    Args:
        M: the matrix, shape ``(m, n)``, either orientation.
        rank: number ``k`` of singular triples sought (default ``min(m, n)``); ``k < min(m, n)``
            gives the best rank-``k`` approximation.
        weight_u, weight_v: weights of the orthonormality penalties (``orthonormal="penalty"``).
        orthonormal: ``"penalty"`` (the seed notebook's soft constraints), ``"qr"`` or
            ``"polar"`` (exact orthonormality by retraction after each step; penalties dropped).
    """

    name = "svd"
    summary = "singular value decomposition U diag(s^2) V^T = M by minimising a least-squares loss"
    options = {
        "rank": Option(default=None, doc="number of leading singular triples (default: all)"),
        "weight_u": Option(default=0.01, doc="penalty weight of ‖UᵀU − I‖ (the seed's 1/100)"),
        "weight_v": Option(default=0.01, doc="penalty weight of ‖VᵀV − I‖"),
        "orthonormal": Option(default="penalty", doc="'penalty' (the seed's), 'qr' or 'polar' retraction"),
    }
    fused = True
    quadratic = False
    #: Measured on the example (float64): L-BFGS needs about 640 steps with 100 or more curvature
    #: pairs and about 4000 with torch's 20: the penalised loss is ill-conditioned, and only a
    #: memory that is not recycled resolves it.
    quasi_newton_memory = 200

    def __init__(
        self,
        M: Any,  # shape: (m, n)
        *,
        rank: int | None = None,
        weight_u: float = 0.01,
        weight_v: float = 0.01,
        orthonormal: str = "penalty",
    ) -> None:
        M = as_working_float(check_matrix(M, "M", batch=False)).detach()
        m, n = M.shape
        self.M = M
        self.rank = min(m, n) if rank is None else check_int(rank, "rank", minimum=1)
        if self.rank > min(m, n):
            raise InputError(
                f"rank: expected an integer <= min(m, n) = {min(m, n)} for M of shape {(m, n)}, received {self.rank}"
            )
        self.weight_u = check_nonnegative(weight_u, "weight_u")
        self.weight_v = check_nonnegative(weight_v, "weight_v")
        self.orthonormal: str = check_choice(orthonormal, "orthonormal", ORTHONORMAL)
        self._sigma = torch.linalg.svdvals(M)  # shape: (min(m, n),), descending
        self._norm = float(torch.linalg.matrix_norm(M))
        self._reference: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def estimated_bytes(cls, size: int, dtype: torch.dtype = torch.float64, **options: Any) -> int:
        """``M`` ((n+1) × n), the factors, the reference decomposition and a step's products: about 10 n² numbers."""
        return 10 * (size + 1) * size * (torch.finfo(dtype).bits // 8)

    @classmethod
    def example(
        cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64, **options: Any
    ) -> SVDProblem:
        """Seed notebook 001's matrix: ``torch.rand(5, 4)`` after seeding 314.

        ``size`` sets ``n`` (default 4) with ``m = n + 1``; ``seed`` is added to 314 (``seed=0``
        reproduces the notebook's matrix, drawn in float32 as it did); ``options`` go to the constructor.
        """
        n = 4 if size is None else check_int(size, "size", minimum=1)
        dtype = as_dtype(dtype) or torch.float64
        M = torch.rand(n + 1, n, generator=cpu_generator(EXAMPLE_SEED + check_int(seed, "seed")))
        return cls(M.to(dtype), **options)

    # -- optimisation -------------------------------------------------------------------------
    def _weights(self) -> tuple[float, float]:
        """Penalty weights in effect: none when a retraction keeps the factors orthonormal."""
        return (self.weight_u, self.weight_v) if self.orthonormal == "penalty" else (0.0, 0.0)

    def _retract(self, factor: torch.Tensor) -> torch.Tensor:
        return polar_factor(factor) if self.orthonormal == "polar" else sign_fixed_qr(factor)

    def init_params(self, generator: torch.Generator) -> Params:
        """Random start: ``U₀`` orthonormal from uniform draws, ``V₀`` and ``s₀`` fitted to it.

        ``U₀`` is the sign-fixed QR factor of centred uniform ``[-0.5, 0.5)`` draws (the seed
        notebook's raw ``[0, 1)`` draws have nearly parallel columns, which the orthonormality
        terms then fight for thousands of steps). ``V₀ R = Mᵀ U₀`` (sign-fixed QR) and
        ``s₀² = diag(R) = diag(U₀ᵀ M V₀) > 0``: every triple starts with the sign its ``s²``
        can represent. A triple started with ``u_iᵀ M v_i < 0`` is driven to ``s_i = 0``, where
        its columns receive no gradient: in 90 L-BFGS runs (5 shapes × 3 matrices × 2 ranks ×
        3 modes) a random ``V₀``, signs matched or not, ended there 1 to 4 times; this start never.
        ``s₀²`` is kept above ``10⁻³ ‖M‖_F / √k`` so no triple starts dead.
        """
        k = self.rank
        place = {"dtype": torch.float64, "device": "cpu"}
        U = sign_fixed_qr(uniform((self.M.shape[0], k), generator, **place) - 0.5)
        q, r = torch.linalg.qr(self.M.to(**place).mT @ U, mode="reduced")
        diagonal = torch.diagonal(r)
        V = q * torch.where(diagonal < 0, -1.0, 1.0).to(q.dtype)
        level = self._norm / math.sqrt(k) if self._norm > 0 else 1.0
        s = torch.sqrt(diagonal.abs().clamp(min=1e-3 * level))
        target = {"dtype": self.dtype, "device": self.device}
        # row-major: QR hands back column-major factors, and whole-run kernels update them in place
        return {"U": U.to(**target).contiguous(), "s": s.to(**target), "V": V.to(**target).contiguous()}

    def _fit_factors(self, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U, V)`` as the fit sees them: retracted (differentiably) in the retraction modes."""
        U, V = params["U"], params["V"]
        if self.orthonormal == "qr":
            return sign_fixed_qr_differentiable(U), sign_fixed_qr_differentiable(V)
        if self.orthonormal == "polar":
            return polar_factor_differentiable(U), polar_factor_differentiable(V)
        return U, V

    def loss(self, params: Params) -> torch.Tensor:
        """The seed's penalised loss, or in a retraction mode the fit at the retracted factors.

        Evaluating the fit at ``R(U)``, ``R(V)`` (``R`` = sign-fixed QR or polar factor) makes it
        equal to ``mean((U diag(s²) Vᵀ − M)²)`` on the constraint set and smooth off it, and
        :meth:`project` then never changes the loss: an optimizer that takes several inner
        steps (L-BFGS) would otherwise fit non-orthonormal factors that the retraction destroys.
        At orthonormal factors the gradient is the Riemannian one: the component that would
        leave the constraint set is removed.
        """
        U, V = self._fit_factors(params)
        s = params["s"]
        fit = ((U * s.square()) @ V.mT - self.M).square().mean()
        weight_u, weight_v = self._weights()
        if weight_u == 0 and weight_v == 0:
            return fit
        eye = torch.eye(self.rank, dtype=self.dtype, device=self.device)
        return fit + weight_u * (U.mT @ U - eye).square().mean() + weight_v * (V.mT @ V - eye).square().mean()

    def loss_and_grad(self, params: Params, backend: str = "autograd") -> tuple[torch.Tensor, Params]:
        check_choice(backend, "backend", ("autograd", "fused"))
        if backend == "fused":
            return self._fused_loss_and_grad(params)
        loss, grads = super().loss_and_grad(params, backend)
        # autograd hands back V's gradient as a transposed view; flat-buffer optimizers (L-BFGS) need it dense
        return loss, {key: grad.contiguous() for key, grad in grads.items()}

    def _fused_loss_and_grad(self, params: Params) -> tuple[torch.Tensor, Params]:
        """The fused kernel computes the ``M``-sized work; a retraction's ``k × k`` chain rule stays in autograd."""
        from gdla import ops  # the compiled extension loads only when asked for

        weight_u, weight_v = self._weights()
        if self.orthonormal == "penalty":
            loss, grad_u, grad_s, grad_v = ops.svd_loss_and_grad(
                self.M, params["U"], params["s"], params["V"], weight_u, weight_v
            )
            return loss, {"U": grad_u, "s": grad_s, "V": grad_v}
        with torch.enable_grad():
            leaves = [params["U"].detach().requires_grad_(True), params["V"].detach().requires_grad_(True)]
            fit_u, fit_v = self._fit_factors({"U": leaves[0], "V": leaves[1]})
            loss, grad_fu, grad_s, grad_fv = ops.svd_loss_and_grad(
                self.M, fit_u.detach(), params["s"], fit_v.detach(), 0.0, 0.0
            )
            grad_u, grad_v = torch.autograd.grad([fit_u, fit_v], leaves, [grad_fu, grad_fv])
        return loss, {"U": grad_u.contiguous(), "s": grad_s, "V": grad_v.contiguous()}

    def project(self, params: Params) -> None:
        """Retract ``U`` and ``V`` onto orthonormal matrices (``"qr"``/``"polar"``), then fix column signs.

        In every mode a column pair whose sign the ``s²`` parameterisation cannot represent
        (``c_i < 0``, see :meth:`_sign_mismatch`) gets ``V[:, i]`` negated: such a triple is
        pulled towards ``s_i = 0``, where its ``U``, ``V`` columns receive no gradient (a
        spurious minimum of the loss). The flip strictly lowers the fit and never fires at a solution.
        """
        with torch.no_grad():
            if self.orthonormal != "penalty":
                params["U"].copy_(self._retract(params["U"]))
                params["V"].copy_(self._retract(params["V"]))
            flip = self._sign_mismatch(params)
            if bool(flip.any()):
                params["V"].mul_(torch.where(flip, -1.0, 1.0).to(params["V"].dtype))

    def _sign_mismatch(self, params: Params) -> torch.Tensor:
        r"""Columns ``i`` with :math:`c_i = u_i^T (M - \sum_{j \ne i} s_j^2 u_j v_j^T) v_i < 0`.

        ``c_i`` is the correlation of triple ``i`` with what the others leave of ``M``; the fit of
        that triple improves with ``s_i² > 0`` only if ``c_i > 0``.
        """
        U, s, V = params["U"], params["s"], params["V"]
        S = s.square()
        gram_u, gram_v = U.mT @ U, V.mT @ V  # shape: (k, k)
        own = ((U.mT @ self.M) * V.mT).sum(dim=1)  # diag(Uᵀ M V)
        fitted = (gram_u * S * gram_v.mT).sum(dim=1)  # diag(Uᵀ U S Vᵀ V)
        return own - fitted + S * torch.diagonal(gram_u) * torch.diagonal(gram_v) < 0

    def fused_loss(self) -> SvdPenaltyLoss | None:
        """In the penalty mode: the fused ``svd_loss`` with this problem's weights, and the sign fix as projection."""
        if self.orthonormal != "penalty":
            return None
        return SvdPenaltyLoss(self.M, self.weight_u, self.weight_v)

    def singular_value_decomposition(self) -> SingularValueDecomposition:
        """``M`` and the rank; the factors are ``U``, ``V`` and the values ``s²`` (unlocks ``riemannian-svd``, and the
        SVD's known adjoint for a differentiable solve)."""

        def load(params: Params) -> tuple[torch.Tensor, torch.Tensor]:
            return params["U"], params["V"]

        def params_of(U: torch.Tensor, sigma: torch.Tensor, V: torch.Tensor) -> Params:
            return {"U": U, "s": sigma.clamp(min=0).sqrt(), "V": V}

        def store(params: Params, U: torch.Tensor, sigma: torch.Tensor, V: torch.Tensor) -> None:
            with torch.no_grad():
                for key, value in params_of(U, sigma, V).items():
                    params[key].copy_(value)

        return SingularValueDecomposition(matrix=self.M, rank=self.rank, load=load, store=store, params_of=params_of)

    def normalized(self) -> Normalization | None:
        r"""The problem of :math:`M' = 2^{-e} M` with ``e`` even; its ``s`` restores as :math:`2^{e/2} s'`.

        :math:`M' = U (2^{-e} Σ) V^T`: the singular vectors stay and ``s = √σ`` scales by
        :math:`2^{-e/2}`, exact because ``e`` is even (the largest entry of ``M'`` is in ``[0.25, 1)``).
        """
        exponent = power_of_two_scale(self.M)
        exponent += exponent % 2
        check_representable("M", exponent, self.dtype, "the singular values of M")
        if exponent == 0:
            return None
        work = self.rebuild(M=scale_by_power_of_two(self.M, -exponent))

        def restore(params: Params) -> Params:
            return {
                "U": params["U"],
                "s": scale_by_power_of_two(params["s"], exponent // 2),
                "V": params["V"],
            }

        return Normalization(problem=work, restore=restore, exponent=exponent)

    # -- answers ------------------------------------------------------------------------------
    def solution(self, params: Params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U, S, V)`` with ``S = s²`` descending, columns permuted alike, signs as ``torch.linalg.svd``'s.

        A column pair ``(U[:, i], V[:, i])`` is flipped when ``U[:, i]`` points away from the
        reference's ``i``-th left singular vector; flipping both leaves ``U diag(S) Vᵀ`` unchanged.
        """
        U, s, V = (params[key].detach() for key in ("U", "s", "V"))
        S, order = s.square().sort(descending=True)
        U, V = U[:, order], V[:, order]
        reference_u = self.reference()[0]
        signs = torch.where((U * reference_u).sum(dim=0) < 0, -1.0, 1.0).to(U.dtype)
        return U * signs, S, V * signs

    def residual(self, params: Params) -> torch.Tensor:
        r"""The worst relative residual of the SVD's defining equations.

        .. math::

            \max\Big(\frac{\|M V - U S\|_F}{\|M\|_F}, \frac{\|M^T U - V S\|_F}{\|M\|_F},
            \frac{\|U^T U - I_k\|_F}{\sqrt{k}}, \frac{\|V^T V - I_k\|_F}{\sqrt{k}}\Big),
            \qquad S = \operatorname{diag}(s^2).

        They hold for any rank ``k``: the columns are singular triples of ``M``.
        """
        U, s, V = params["U"], params["s"], params["V"]
        S = s.square()
        eye = torch.eye(self.rank, dtype=self.dtype, device=self.device)
        root_k = math.sqrt(self.rank)
        # in scaled arithmetic: ‖M‖_F of 1e-200 data underflows, and a zero M makes them undefined (NaN)
        left, right = (_flat(self.M @ V - U * S), _flat(self.M.mT @ U - V * S))
        parts = torch.stack(
            [
                relative_norm(left, _flat(self.M), dim=(-1,)),
                relative_norm(right, _flat(self.M), dim=(-1,)),
                torch.linalg.matrix_norm(U.mT @ U - eye) / root_k,
                torch.linalg.matrix_norm(V.mT @ V - eye) / root_k,
            ]
        )
        return parts.max()  # NaN propagates, so a diverged run never looks converged

    def reference(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``torch.linalg.svd(M)`` truncated to ``k``, as ``(U, S, V)``."""
        if self._reference is None:
            U, S, Vh = torch.linalg.svd(self.M, full_matrices=False)
            k = self.rank
            self._reference = (U[:, :k], S[:k], Vh[:k].mT)
        return self._reference

    def reference_params(self) -> Params:
        """``U``, ``s = √σ`` and ``V`` of ``torch.linalg.svd``, truncated to the rank."""
        U, S, V = self.reference()
        return {"U": U.clone(), "s": S.sqrt(), "V": V.clone()}

    def error(self, params: Params) -> torch.Tensor:
        """``‖S − σ[:k]‖ / ‖σ[:k]‖`` with ``S`` the sorted ``s²`` and ``σ`` from ``torch.linalg.svdvals``."""
        S = params["s"].detach().square().sort(descending=True).values
        reference = self._sigma[: self.rank]
        return relative_norm(S - reference, reference, dim=(-1,))

    def condition_estimate(self) -> float:
        """``σ_max / σ_min`` of ``M`` (``inf`` when ``M`` is rank-deficient)."""
        smallest = float(self._sigma[-1])
        return float(self._sigma[0]) / smallest if smallest > 0 else math.inf

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.M.shape),
            "rank": self.rank,
            "weight_u": self.weight_u,
            "weight_v": self.weight_v,
            "orthonormal": self.orthonormal,
        }


@gdla.hookimpl
def register_problems(register: Any) -> None:
    register(SVDProblem)


def _flat(matrix: torch.Tensor) -> torch.Tensor:
    """All entries of ``matrix`` as one vector (its 2-norm is the Frobenius norm)."""
    return matrix.reshape(-1)
