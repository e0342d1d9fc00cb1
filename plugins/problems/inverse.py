r"""The inverse (or pseudo-inverse) of a matrix found by minimising a least-squares loss.

For ``A`` of shape ``(..., m, n)`` (leading dimensions: independent problems) the unknown is
``M`` of shape ``(..., n, m)`` and the loss compares a product ``P`` with the identity:

.. math::

    L(M) = \sum_b \operatorname{mean}\big((P_b - I)^2\big), \qquad
    P = \begin{cases} A M & \text{side = "right"} \\ M A & \text{side = "left"} \\
    \tfrac12 (A M + M A) & \text{side = "both" (square A)} \end{cases}

(the sum runs over the batch, so one problem's gradient does not depend on the batch size).
A wide ``A`` has right inverses, a tall one left inverses; among them the Moore-Penrose
pseudo-inverse is the one of least norm, and :meth:`InverseProblem.project` keeps ``M`` in the
subspace where it lies, so every optimizer lands on it.

``A`` may be a :class:`torch.distributed.tensor.DTensor`: one matrix whose rows are split over a
1-D ``DeviceMesh`` (``Shard(0)``) or replicated on it (see :mod:`gdla.mesh`). The iterate ``M`` is
then a DTensor with the same placement (its rows split alike) and every product runs as a DTensor
op on the mesh; losses and residuals are all-reduced, the same number on every rank. The
singular-value analysis and the reference inverse (set-up and final metrics) run on the gathered
matrix, on every rank; the fused kernels take plain tensors, so a DTensor problem runs ``autograd``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

import gdla
from gdla.backend import extension_status
from gdla.capabilities import InverseMSE, LinearLeastSquares, MatrixInverse
from gdla.errors import InputError, ShapeError, SingularMatrixError
from gdla.mesh import (
    check_mesh_matrix,
    distribute_like,
    full_tensor,
    identity_like,
    is_dtensor,
    mesh_summary,
    placed_like,
    replicated,
)
from gdla.options import Option
from gdla.problem import Params, Problem
from gdla.scaling import Normalization, check_representable, power_of_two_scale, scale_by_power_of_two
from gdla.validation import as_dtype, check_choice, check_int, check_matrix
from gdla_plugins.problems._common import (
    as_working_float,
    batch_index,
    batched_mse,
    condition_numbers,
    cpu_generator,
    frobenius,
    numerically_singular_threshold,
    relative_frobenius,
    safe_scale,
    uniform,
    worst,
)
from gdla_plugins.problems._inverse_mesh import RowShardedInverse, full_mse, norms

__all__ = ["InverseProblem"]

SIDES = ("right", "left", "both")
INITS = ("random", "zeros", "scaled-transpose")
EXAMPLE_KINDS = ("random", "diagonal")
#: The seed notebook drew its matrix right after ``torch.manual_seed(314)``.
EXAMPLE_SEED = 314
#: Columns of a random start that set its scale (all of them up to this many).
START_SAMPLE = 64


class InverseProblem(Problem):
    """Find ``M ≈ A⁻¹`` (or ``A⁺``) by minimising ``mean((P − I)²)`` summed over the batch.

    Args:
        A: the matrix or batch of matrices, shape ``(..., m, n)``; or one matrix as a DTensor with
            placement ``Shard(0)`` or ``Replicate()`` on a 1-D mesh (solved on the mesh; the
            :class:`~gdla.Result`'s solution is then the full inverse, a plain tensor on every rank).
        side: ``"right"`` (``A M = I_m``), ``"left"`` (``M A = I_n``) or ``"both"`` (the average
            of the two products, square ``A`` only). Default: ``"right"`` if ``m <= n`` else
            ``"left"``, the side whose equation a full-rank ``A`` can satisfy.
        pseudo: allow a rank-deficient ``A`` (and the unattainable side of a rectangular one):
            the answer is then ``torch.linalg.pinv(A)``. Without it a numerically singular ``A``
            raises :class:`~gdla.errors.SingularMatrixError`.
        init: starting point, ``"random"`` (uniform ``[0, 1)`` draws scaled so that
            ``‖P(M₀)‖_F = √k``, the norm of the target ``I_k``), ``"zeros"`` or
            ``"scaled-transpose"`` (``Aᵀ / (‖A‖₁ ‖A‖_∞)``, the safe Newton-Schulz start).
    """

    name = "inverse"
    summary = "inverse or pseudo-inverse of A (batched) by minimising mean((A M - I)^2)"
    options = {
        "side": Option(default=None, doc="'right' (A M = I), 'left' (M A = I) or 'both'; default: the attainable side"),
        "pseudo": Option(default=False, doc="the Moore-Penrose pseudo-inverse of a rank-deficient or rectangular A"),
        "init": Option(default="random", doc="start: 'random', 'zeros' or 'scaled-transpose'"),
        "kind": Option(default="random", doc="example only: 'random' (seed 000's matrix) or 'diagonal'"),
        "batch": Option(default=None, doc="example only: a batch of this many matrices"),
    }
    fused = True
    quadratic = True

    def __init__(
        self,
        A: Any,  # shape: (..., m, n)
        *,
        side: str | None = None,
        pseudo: bool = False,
        init: str = "random",
    ) -> None:
        if is_dtensor(A):  # checked before any collective: a bad placement or shape raises on every rank
            A = as_working_float(check_mesh_matrix(A, "A")).detach()
            dense = as_working_float(check_matrix(full_tensor(A), "A"))  # the same on every rank
        else:
            A = dense = as_working_float(check_matrix(A, "A")).detach()
        if not isinstance(pseudo, bool):
            raise InputError(f"pseudo: expected True or False, received {pseudo!r}")
        m, n = A.shape[-2], A.shape[-1]
        side = check_choice(("right" if m <= n else "left") if side is None else side, "side", SIDES)
        _check_side(side, m, n, pseudo)
        if side == "both" and is_dtensor(A):  # its step estimates probe the loss with plain random tensors
            raise InputError(
                "side: expected 'right' or 'left' for A given as a DTensor, received 'both'; for a square "
                "invertible A both sides have the same answer: use side='right'"
            )
        self.A = A
        self.side: str = side
        self.pseudo = pseudo
        self.init: str = check_choice(init, "init", INITS)
        self.batch_shape = A.shape[:-2]
        self._m, self._n = m, n
        #: Size k of the identity the product is compared with.
        self._k = n if side == "left" else m
        self._reference: torch.Tensor | None = None
        self._identity: torch.Tensor | None = None  # cached for a DTensor A (placing it costs a full eye)
        #: ``(A, A._version, normalized())``: the last answer, kept while ``A`` stays the same
        self._normalization: tuple[torch.Tensor, int, Normalization | None] | None = None
        self._analyse(dense)

    def __getstate__(self) -> dict[str, Any]:
        """The instance's attributes without the kept :meth:`normalized` (its ``restore`` is a closure: no pickle)."""
        state = dict(vars(self))
        state["_normalization"] = None
        return state

    # -- construction -------------------------------------------------------------------------
    def _analyse(self, A: torch.Tensor) -> None:
        """Singular values, the singularity check, and the projector onto the least-norm subspace.

        Args:
            A: ``self.A`` as a plain tensor (gathered on every rank when ``self.A`` is a DTensor).
        """
        m, n = self._m, self._n
        sigma = torch.linalg.svdvals(A)  # shape: (..., min(m, n)), descending
        self._sigma_max = sigma[..., 0]
        self._cond = condition_numbers(sigma)
        # the rank as torch.linalg.pinv decides it, so the reference and the projector agree
        cutoff = sigma[..., :1] * max(m, n) * torch.finfo(A.dtype).eps
        rank = (sigma > cutoff).sum(dim=-1)
        limit = numerically_singular_threshold(A.dtype)
        bad = ~(self._cond <= limit)  # also catches inf and NaN
        if bool(bad.any()) and (not self.pseudo or self.side == "both"):
            flat = int(bad.flatten().nonzero()[0])
            where = f" at batch index {batch_index(flat, self.batch_shape)}" if self.batch_shape else ""
            expected, what = (
                ("an invertible matrix", "singular")
                if m == n
                else (f"a matrix of full rank {min(m, n)}", "rank-deficient")
            )
            cond = float(self._cond.flatten()[flat])
            detail = f"condition number {cond:.3g} > {limit:.3g}, the limit for {A.dtype}"
            if self.side == "both":
                raise SingularMatrixError(
                    f"A: side='both' expected an invertible matrix, received a numerically singular one{where} "
                    f"({detail}); for a singular A the minimiser of the averaged product is not the "
                    "pseudo-inverse: use side='right' or side='left' with pseudo=True"
                )
            raise SingularMatrixError(
                f"A: expected {expected}, received a {what} or numerically {what} one{where} ({detail}); "
                "it has no inverse: pass pseudo=True (on the command line: -p pseudo=true) "
                "for the Moore-Penrose pseudo-inverse"
            )
        # the exact equation P = I_k is attainable only where rank(A) == k
        self._attainable = rank == self._k
        # M's solution set is an affine space when A has a null space on the optimised side;
        # the pseudo-inverse is its least-norm point, in the row space of A (right) or column space (left)
        null_space = rank < (n if self.side == "right" else m)
        self._projector: torch.Tensor | None = None
        if self.side != "both" and bool(null_space.any()):
            u, s, vh = torch.linalg.svd(A, full_matrices=False)
            keep = (s > cutoff).to(A.dtype)
            if self.side == "right":
                self._projector = (vh.mT * keep.unsqueeze(-2)) @ vh  # shape: (..., n, n)
            else:
                self._projector = (u * keep.unsqueeze(-2)) @ u.mT  # shape: (..., m, m)
            self._projector = distribute_like(self._projector, self.A)

    @classmethod
    def example(
        cls,
        size: int | None = None,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        kind: str = "random",
        batch: int | None = None,
        **options: Any,
    ) -> InverseProblem:
        """Seed notebook 000's matrices: ``torch.rand(4, 4)`` after seeding 314, or ``diag(1, ..., n)``.

        Args:
            size: ``n`` (default 4).
            seed: added to 314, the notebook's seed (``seed=0`` reproduces its matrix exactly).
            dtype: dtype of the problem (the random matrix is drawn in float32, as the notebook did).
            kind: ``"random"`` or ``"diagonal"`` (the notebook's easy comparison case).
            batch: a batch of this many matrices (the first is the unbatched example); ``None``: one.
            **options: passed to the constructor (``side``, ``pseudo``, ``init``).
        """
        n = 4 if size is None else check_int(size, "size", minimum=1)
        seed = check_int(seed, "seed")
        check_choice(kind, "kind", EXAMPLE_KINDS)
        dtype = as_dtype(dtype) or torch.float64
        lead = () if batch is None else (check_int(batch, "batch", minimum=1),)
        if kind == "diagonal":
            A = torch.diag(torch.arange(1, n + 1, dtype=torch.float64)).expand(*lead, n, n)
        else:  # the first n·n draws of a batch are the unbatched example's
            A = torch.rand(*lead, n, n, generator=cpu_generator(EXAMPLE_SEED + seed))
        return cls(A.to(dtype), **options)

    @classmethod
    def demo(cls, quick: bool = False) -> list[Any]:
        """Seed 000's comparison (momentum lr 0.9, μ 0.9: random 4×4 against ``diag(1..4)``), methods
        compared on ``torch.rand(64, 64)``, and the example solved with ``auto``."""
        from gdla.demo import DemoPanel, DemoRun

        seed = {"optimizer": "momentum", "lr": 0.9, "momentum": 0.9, "max_steps": 10_000}
        seed_runs = [
            # the notebook learns M with M @ A ≈ I, and its lr may be too bold for some matrices
            DemoRun(label, cls.example(kind=kind, side="left"), seed, quick_steps=1_000, row=f"inverse ({kind})",
                    halve_lr_on_divergence=True)
            for kind, label in (("random", "random 4×4"), ("diagonal", "diag(1, 2, 3, 4)"))
        ]
        rand = cls(torch.rand(64, 64, generator=cpu_generator(0), dtype=torch.float64))
        method_runs = [
            DemoRun(method, rand, {"optimizer": method, "max_steps": 500}, quick_steps=150,
                    row="inverse (rand 64×64)", plot_residual=True)
            for method in ("newton-schulz", "cg", "heavy-ball", "adam", "momentum")
        ]
        return [
            DemoPanel("seed 000: momentum 0.9, lr 0.9: random vs diagonal matrix", seed_runs, headline=True),
            DemoPanel("inverse of torch.rand(64, 64): methods compared", method_runs, headline=True,
                      ylabel="relative residual", note=f"cond(A) ≈ {rand.condition_estimate():.2e}"),
            *super().demo(quick=quick),
        ]

    @classmethod
    def estimated_bytes(cls, size: int, dtype: torch.dtype = torch.float64, **options: Any) -> int:
        """``A``, ``M``, the singular-value analysis and a solve's products: about 8 n² numbers."""
        return 8 * size * size * (torch.finfo(dtype).bits // 8)

    @classmethod
    def well_conditioned(
        cls,
        n: int,
        *,
        batch: tuple[int, ...] = (),
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        **options: Any,
    ) -> InverseProblem:
        """A benign test matrix ``A = I + 0.2 G / √n`` with ``G`` standard normal.

        ``‖0.2 G / √n‖₂ ≈ 0.4``, so the singular values lie near ``[0.6, 1.4]`` and the condition
        number stays below about 5 for every ``n``.
        """
        n = check_int(n, "n", minimum=1)
        batch = tuple(check_int(b, "batch", minimum=1) for b in batch)
        dtype = as_dtype(dtype) or torch.float64
        noise = torch.randn(*batch, n, n, generator=cpu_generator(check_int(seed, "seed")), dtype=torch.float64)
        A = torch.eye(n, dtype=torch.float64) + 0.2 * noise / math.sqrt(n)
        return cls(A.to(dtype), **options)

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        return self.A.device

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> InverseProblem:
        moved = self.A.to(dtype=dtype or self.A.dtype, device=device or self.A.device)
        if moved is self.A:
            return self
        return type(self)(moved, side=self.side, pseudo=self.pseudo, init=self.init)

    # -- optimisation -------------------------------------------------------------------------
    def _product(self, M: torch.Tensor) -> torch.Tensor:
        """``P(M)``, shape ``(..., k, k)``."""
        return self.matrix_inverse().product(M)

    # -- declared capabilities ----------------------------------------------------------------
    def matrix_inverse(self) -> MatrixInverse:
        """The answer is ``A⁻¹`` (``A⁺`` with ``pseudo``), measured on this problem's side."""
        kind = RowShardedInverse if is_dtensor(self.A) else MatrixInverse
        return kind(self.A, side=self.side, pseudo=self.pseudo, key="M")

    def fused_loss(self) -> InverseMSE | None:
        """The loss is the fused ``inverse_mse`` op's (``None`` for a DTensor ``A``: the op takes plain tensors).

        For one matrix whose equation ``P = I_k`` is attainable on the right or the left (no
        projection), :meth:`residual` is ``‖P − I‖_F / √k = √(k · loss)``: declared as
        ``residual_factor = k``.
        """
        if is_dtensor(self.A):
            return None
        plain = not self.batch_shape and self.side != "both" and self._projector is None
        tested = plain and bool(self._attainable.all())
        return InverseMSE(self.A, side=self.side, key="M", residual_factor=float(self._k) if tested else None)

    def fused_reason(self) -> str | None:
        """``None`` (the fused ops compute this loss), except for a DTensor ``A``."""
        if is_dtensor(self.A):
            return (
                f"problem 'inverse' holds A as a DTensor ({mesh_summary(self.A)}): its products run as DTensor ops "
                "on the mesh, and the fused kernels take plain tensors"
            )
        return super().fused_reason()

    def needs_projection(self) -> bool:
        """Only where inverses are not unique (a null space on the optimised side)."""
        return self._projector is not None

    def least_squares(self) -> LinearLeastSquares:
        r"""``r = P(M) − I``, linear in ``M``; the loss is ``Σ_b mean(r_b²)``.

        Right: ``Jᵀr = Aᵀr``, columns of ``M`` are independent problems with Gram ``AᵀA``. Left:
        ``Jᵀr = rAᵀ``, rows are, with Gram ``AAᵀ``. Both: ``Jᵀr = (Aᵀr + rAᵀ)/2``, one block per matrix.
        """
        inverse = self.matrix_inverse()
        dims, block = {"right": ((-2,), "column"), "left": ((-1,), "row"), "both": ((-2, -1), "matrix")}[self.side]
        return LinearLeastSquares(
            key="M",
            apply=inverse.product,
            adjoint=inverse.adjoint,
            rhs=self._eye().expand(*self.batch_shape, self._k, self._k),
            loss_of=full_mse if is_dtensor(self.A) else batched_mse,
            block_dims=dims,
            block_name=block,
            distinct_blocks=math.prod(self.batch_shape),  # every column (row) of one matrix meets the same A
            gram_factor=None if self.side == "both" else self.A,
            gram_exact=self.side != "both",  # a column's (row's) Gram is AᵀA (AAᵀ) itself
            loss_curvature=2.0 / (self._k * self._k),  # each member's loss is the mean of k² squares
        )

    def _eye(self) -> torch.Tensor:
        """``I_k``, placed like ``A`` when ``A`` is a DTensor."""
        if not is_dtensor(self.A):
            return torch.eye(self._k, dtype=self.dtype, device=self.device)
        if self._identity is None or self._identity.dtype != self.dtype:
            self._identity = identity_like(self.A, self._k)
        return self._identity

    def _placed(self, M: torch.Tensor) -> torch.Tensor:
        """``M`` as the iterate of a DTensor ``A`` is held: a DTensor placed like ``A`` (rows split alike)."""
        return placed_like(M, self.A) if is_dtensor(M) else distribute_like(M, self.A)

    def _restrict(self, M: torch.Tensor) -> torch.Tensor:
        """``M`` projected onto the subspace holding the pseudo-inverse (identity if unique)."""
        if self._projector is None:
            return M
        return self._projector @ M if self.side == "right" else M @ self._projector

    def init_params(self, generator: torch.Generator) -> Params:
        shape = (*self.batch_shape, self._n, self._m)
        device = self.device if not is_dtensor(self.A) else self.A.to_local().device
        if self.init == "zeros":
            M = self._placed(torch.zeros(shape, dtype=self.dtype, device=device))
        elif self.init == "scaled-transpose":
            M = self._placed(self.matrix_inverse().safe_start())
        else:  # every rank draws the whole start from the same generator: the one-process start, split
            M = self._restrict(self._placed(uniform(shape, generator, dtype=self.dtype, device=device)))
            # start with ‖P(M₀)‖_F = ‖I_k‖_F = √k, whatever the scale of A
            M = M * (math.sqrt(self._k) / safe_scale(full_tensor(self._product_norm(M))))[..., None, None]
        return {"M": M.contiguous()}

    def _product_norm(self, M: torch.Tensor) -> torch.Tensor:
        """``‖P(M)‖_F`` per matrix; above ``START_SAMPLE`` columns (rows on the left) of a random ``M``, estimated
        from that many of them (its columns are independent draws), so the start costs no full matrix product."""
        count = M.shape[-1] if self.side == "right" else M.shape[-2]
        # a DTensor M samples the same columns (a slice along its unsharded dimension): the one-process start
        if self.side == "both" or count <= START_SAMPLE:
            return frobenius(self._product(M))
        part = M[..., :START_SAMPLE] if self.side == "right" else M[..., :START_SAMPLE, :]
        return frobenius(self._product(part)) * math.sqrt(count / START_SAMPLE)

    def loss(self, params: Params) -> torch.Tensor:
        return full_tensor(batched_mse(self._product(params["M"]) - self._eye()))

    def loss_and_grad(self, params: Params, backend: str = "autograd") -> tuple[torch.Tensor, Params]:
        check_choice(backend, "backend", ("autograd", "fused"))
        if backend == "fused":
            from gdla import ops  # the compiled extension loads only when asked for

            loss, grad = ops.inverse_mse_and_grad(self.A, params["M"], self.side)
            return loss, {"M": grad}
        loss, grads = super().loss_and_grad(params, backend)
        grads["M"] = placed_like(grads["M"], params["M"])  # a DTensor gradient: placed like M
        return loss, grads

    def project(self, params: Params) -> None:
        """Keep ``M`` in the row space (right) or column space (left) of ``A`` when inverses are not unique."""
        if self._projector is not None:
            with torch.no_grad():
                params["M"].copy_(self._restrict(params["M"]))

    def _scaled(self, exponent: int) -> InverseProblem:
        """The problem of ``2^exponent · A`` without a second analysis: singular values scale exactly,
        and the condition numbers, ranks and the least-norm projector do not change."""
        work = copy.copy(self)
        work.A = scale_by_power_of_two(self.A, exponent)
        work._sigma_max = scale_by_power_of_two(self._sigma_max, exponent)
        work._reference = None
        work._normalization = None
        return work

    def normalized(self) -> Normalization | None:
        r"""The problem of :math:`A' = 2^{-e} A` (largest entry in ``[0.5, 1)``); restores :math:`M = 2^{-e} M'`.

        :math:`(2^{-e} A)^{-1} = 2^{e} A^{-1}` (also for the pseudo-inverse and one-sided inverses).
        Raises :class:`~gdla.errors.InputError` when :math:`A^{-1}` over- or underflows the dtype.
        The answer depends on ``A`` alone: it is kept for the next solve of this problem while ``A``
        is the same, unmodified tensor (not for a DTensor ``A``, whose scale is a collective).
        """
        cached = self._normalization
        if cached is not None and cached[0] is self.A and cached[1] == self.A._version:
            return cached[2]
        normalization = self._normalize()
        if not is_dtensor(self.A) and not self.A.is_inference():
            self._normalization = (self.A, self.A._version, normalization)
        return normalization

    def _normalize(self) -> Normalization | None:
        """:meth:`normalized`, computed."""
        exponent = power_of_two_scale(full_tensor(self.A.abs().amax()) if is_dtensor(self.A) else self.A)
        work = self if exponent == 0 else self._scaled(-exponent)
        if not bool((work._sigma_max > 0).any()):  # A = 0: its pseudo-inverse is 0, nothing to scale
            return None
        # entries of A'^{-1} lie between 1/σ_max(A') and 1/σ_min(A') = cond/σ_max(A'), up to √k factors
        sigma_max = work._sigma_max.clamp(min=torch.finfo(self.dtype).tiny)
        cond = work._cond[torch.isfinite(work._cond)]
        top = float(cond.max()) if cond.numel() else 1.0
        what = "the pseudo-inverse of A" if self.pseudo or self._m != self._n else "the inverse of A"
        high = -exponent + math.ceil(math.log2(top / float(sigma_max.min())))
        low = -exponent - math.ceil(math.log2(float(sigma_max.max()) * math.sqrt(self._k)))
        for estimate in (high, low):
            check_representable("A", estimate, self.dtype, what)
        if exponent == 0:
            return None

        def restore(params: Params) -> Params:
            return {"M": scale_by_power_of_two(params["M"], -exponent)}

        # M' = 2^e M; the loss compares A'M' = A M with I: unchanged
        return Normalization(problem=work, restore=restore, exponent=exponent, param_exponent=exponent)

    # -- answers ------------------------------------------------------------------------------
    def solution(self, params: Params) -> torch.Tensor:
        """``M``: a plain tensor, gathered on every rank where ``M`` is a DTensor."""
        return full_tensor(params["M"].detach())

    def residual(self, params: Params) -> torch.Tensor:
        """Worst over the batch of :meth:`member_residuals` (the one matrix's, unbatched)."""
        return worst(self._residuals(params))

    def member_residuals(self, params: Params) -> torch.Tensor | None:
        """Each matrix's relative residual (see :meth:`_residuals`), shape ``batch_shape``; ``None`` for one matrix."""
        return self._residuals(params) if self.batch_shape else None

    def residual_kind(self) -> str:
        """``"normal-equations"`` where ``P = I_k`` is unattainable for some member, else ``"equation"``."""
        return "equation" if bool(self._attainable.all()) else "normal-equations"

    def _residuals(self, params: Params) -> torch.Tensor:
        r"""The relative residual of every matrix of the batch, shape ``batch_shape``.

        Where ``P = I_k`` is attainable: :math:`\|P - I_k\|_F / \sqrt{k}` (for ``side="both"``
        the larger of the right and left products). Where it is not (``pseudo=True`` with a
        rank-deficient ``A`` or the unattainable side of a rectangular one), the residual of the
        normal equations, which still vanishes at the pseudo-inverse:
        :math:`\|A^T (A M - I)\|_F / (\|A\|_2 \sqrt{k})` for the right side and
        :math:`\|(M A - I) A^T\|_F / (\|A\|_2 \sqrt{k})` for the left. Dividing by
        :math:`\|A\|_2` makes it invariant to the scale of ``A`` and never larger than the
        exact-equation residual.
        """
        root_k = math.sqrt(self._k)
        fused = self._fused_residuals(params["M"])
        if fused is not None:
            return fused / root_k
        A, eye = self.A, self._eye()
        M = self._placed(params["M"])  # a gathered answer goes back on the mesh: the products run there
        if self.side == "both":
            return torch.maximum(norms(A @ replicated(M) - eye), norms(M @ replicated(A) - eye)) / root_k
        error = self._product(M) - eye
        value = norms(error) / root_k
        if not bool(self._attainable.all()):
            normal = self.matrix_inverse().adjoint(error)  # Aᵀ(AM − I) right, (MA − I)Aᵀ left
            normal_value = norms(normal) / (safe_scale(self._sigma_max) * root_k)
            value = torch.where(self._attainable, value, normal_value)
        return value

    def _fused_residuals(self, M: torch.Tensor) -> torch.Tensor | None:
        """``‖P − I‖_F`` per matrix by ``gdla.ops.small_inverse_residuals`` (one pass in registers, summed in
        float64) where it serves: square ``n <= 16`` plain tensors with ``P = I`` attainable; else ``None``."""
        A = self.A
        if (
            self._m != self._n
            or A.device.type not in ("cpu", "cuda")
            or is_dtensor(A)
            or is_dtensor(M)
            or M.shape != A.shape
            or M.dtype != A.dtype
            or M.requires_grad and torch.is_grad_enabled()
            or not bool(self._attainable.all())
            or not extension_status()[0]
        ):
            return None
        from gdla import ops  # the compiled extension loads only when asked for

        if self._n > ops.SMALL_MAX_N:
            return None
        if self.side == "both":
            return torch.maximum(ops.small_inverse_residuals(A, M, "right"), ops.small_inverse_residuals(A, M, "left"))
        return ops.small_inverse_residuals(A, M, self.side)

    def reference(self) -> torch.Tensor:
        """``torch.linalg.inv(A)``, or ``torch.linalg.pinv(A)`` for ``pseudo=True`` or rectangular ``A``."""
        if self._reference is None:
            square = self._m == self._n
            A = full_tensor(self.A)  # gathered on every rank: torch.linalg does not run on a mesh
            self._reference = torch.linalg.pinv(A) if self.pseudo or not square else torch.linalg.inv(A)
        return self._reference

    def reference_params(self) -> Params:
        return {"M": self.reference().clone()}

    def error(self, params: Params) -> torch.Tensor:
        """Worst over the batch of ``‖M − ref‖_F / ‖ref‖_F``."""
        reference = self.reference()
        return worst(relative_frobenius(full_tensor(params["M"]) - reference, reference))

    def metrics(self, params: Params) -> dict[str, float]:
        """``residual`` and ``error``; computed at once for a DTensor ``A``, deferred (when read) otherwise.

        With a DTensor each figure is a collective (products on the mesh, the gathered reference), so
        every rank computes them now, together: a figure left for later would hang a rank that reads
        it while the others do not.
        """
        figures = super().metrics(params)
        return dict(figures.items()) if is_dtensor(self.A) else figures

    def condition_estimate(self) -> float:
        """Largest 2-norm condition number ``σ_max / σ_min`` over the batch (``inf`` if singular)."""
        return float(worst(self._cond))

    def batch_size(self) -> int | None:
        """Length of the leading batch dimension of ``A`` (``None`` for one matrix)."""
        return int(self.A.shape[0]) if self.batch_shape else None

    def batch_slice(self, start: int, stop: int) -> InverseProblem:
        """The problem of the matrices ``A[start:stop]`` (same side, pseudo and init)."""
        if not self.batch_shape:
            return super().batch_slice(start, stop)  # type: ignore[return-value]
        return type(self)(self.A[start:stop], side=self.side, pseudo=self.pseudo, init=self.init)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.A.shape),
            "batch_shape": list(self.batch_shape),
            "m": self._m,
            "n": self._n,
            "side": self.side,
            "pseudo": self.pseudo,
            "init": self.init,
            "reference": "pinv" if self.pseudo or self._m != self._n else "inv",
        }
        mesh = mesh_summary(self.A)
        if mesh is not None:
            info["mesh"] = mesh
        return info


def _check_side(side: str, m: int, n: int, pseudo: bool) -> None:
    """Refuse a side whose equation no ``A`` of shape ``(m, n)`` can satisfy (unless ``pseudo``)."""
    if side == "both" and m != n:
        raise ShapeError(
            f"side: 'both' expected a square A, received shape (..., {m}, {n}); "
            "use side='right' or side='left' for a rectangular matrix"
        )
    if pseudo:
        return
    if side == "right" and m > n:
        raise ShapeError(
            f"side: 'right' (A M = I_{m}) expected A with m <= n, received shape (..., {m}, {n}), whose rank "
            f"is at most {n} < {m}; use side='left' (M A = I_{n}) or pseudo=True for the least-squares answer"
        )
    if side == "left" and m < n:
        raise ShapeError(
            f"side: 'left' (M A = I_{n}) expected A with m >= n, received shape (..., {m}, {n}), whose rank "
            f"is at most {m} < {n}; use side='right' (A M = I_{m}) or pseudo=True for the least-squares answer"
        )


@gdla.hookimpl
def register_problems(register: Any) -> None:
    register(InverseProblem)
