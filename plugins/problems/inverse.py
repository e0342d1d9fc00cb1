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
1-D ``DeviceMesh`` (``Shard(0)``) or replicated on it (see :mod:`gdla.mesh`). ``InverseProblem(A)``
then builds a :class:`MeshInverse` (its methods in :mod:`gdla_plugins.problems._inverse_mesh`).
The factories and demo scenarios live in :mod:`gdla_plugins.problems._inverse_examples`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

import gdla
from gdla.backend import extension_status
from gdla.capabilities import InverseMSE, LinearLeastSquares, MatrixInverse
from gdla.errors import InputError
from gdla.mesh import is_dtensor
from gdla.options import Option
from gdla.problem import Params, Problem
from gdla.scaling import (
    Normalization,
    answer_exponent_limits,
    check_representable,
    power_of_two_scale,
    scale_by_power_of_two,
)
from gdla.validation import check_choice, check_matrix
from gdla_plugins.problems._common import (
    KeptFigure,
    as_working_float,
    batched_mse,
    declared,
    frobenius,
    relative_frobenius,
    safe_scale,
    uniform,
    worst,
)
from gdla_plugins.problems._inverse_analysis import InverseFacts, check_side
from gdla_plugins.problems._inverse_examples import InverseExamples
from gdla_plugins.problems._inverse_mesh import MeshInverseMethods

__all__ = ["InverseProblem", "MeshInverse"]

SIDES = ("right", "left", "both")
INITS = ("random", "zeros", "scaled-transpose")
#: Columns of a random start that set its scale (all of them up to this many).
START_SAMPLE = 64


class InverseProblem(InverseExamples, Problem):
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
    batched = {"A": 2}  # A: (..., m, n); to(), batch_size() and batch_slice() follow from it

    #: Where ``A`` is plain these are the identity and :func:`batched_mse`; :class:`MeshInverse` gathers.
    _full = staticmethod(lambda value: value)
    _mse = staticmethod(batched_mse)

    def __new__(cls, *args: Any, **kwargs: Any) -> InverseProblem:
        """An :class:`InverseProblem`, or a :class:`MeshInverse` when ``A`` is a DTensor."""
        A = args[0] if args else kwargs.get("A")
        if cls is InverseProblem and is_dtensor(A):
            cls = MeshInverse
        return super().__new__(cls)

    def __init__(
        self,
        A: Any,  # shape: (..., m, n)
        *,
        side: str | None = None,
        pseudo: bool = False,
        init: str = "random",
    ) -> None:
        A, dense = self._matrix(A)
        if not isinstance(pseudo, bool):
            raise InputError(f"pseudo: expected True or False, received {pseudo!r}")
        m, n = A.shape[-2], A.shape[-1]
        side = check_choice(("right" if m <= n else "left") if side is None else side, "side", SIDES)
        self._check_side(side, m, n, pseudo)
        self.A = A
        self.side: str = side
        self.pseudo = pseudo
        self.init: str = check_choice(init, "init", INITS)
        self.batch_shape = A.shape[:-2]
        self._m, self._n = m, n
        #: Size k of the identity the product is compared with.
        self._k: int = self.matrix_inverse().identity_size
        self._reference: torch.Tensor | None = None
        #: ``(A, A._version, normalized())``: the last answer, kept while ``A`` stays the same
        self._normalization: tuple[torch.Tensor, int, Normalization | None] | None = None
        self._kept_residuals = KeptFigure()  # the last answer's, for the report and the residual metric
        # a large square A is screened (an LU factorisation, about one product), its singular values computed
        # only when a figure needs them; a DTensor's gathered copy is analysed now and not kept
        self._facts = InverseFacts(dense, side, pseudo, self._k, lazy=dense is A)
        self._attainable = self._facts.attainable
        #: Whether ``P = I`` is attainable for every member (read by every figure and declaration: one sync, here).
        self._all_attainable = bool(self._attainable.all())
        self._projector = None if self._facts.projector is None else self._placed(self._facts.projector)

    def __getstate__(self) -> dict[str, Any]:
        """The instance's attributes without what it keeps (:meth:`normalized`'s ``restore``: a closure, no pickle)."""
        state = {key: value for key, value in vars(self).items() if key != "_declared_for"}
        return {**state, "_normalization": None}  # what it made is made again when needed

    # -- construction -------------------------------------------------------------------------
    @property
    def _sigma_max(self) -> torch.Tensor:
        """The largest singular value of each matrix, exact (computed when first read, then kept).  # shape: batch"""
        return self._facts.sigma_max

    @property
    def _cond(self) -> torch.Tensor:
        """``σ_max / σ_min`` of each matrix, exact (computed when first read, then kept).  # shape: batch"""
        return self._facts.cond

    @staticmethod
    def _matrix(A: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, A)`` checked: the matrix the problem holds, and the plain one its analysis runs on."""
        A = as_working_float(check_matrix(A, "A")).detach()
        return A, A

    def _check_side(self, side: str, m: int, n: int, pseudo: bool) -> None:
        """:func:`check_side` (a hook: :class:`MeshInverse` refuses ``"both"`` too)."""
        check_side(side, m, n, pseudo)

    # -- optimisation -------------------------------------------------------------------------
    def _product(self, M: torch.Tensor) -> torch.Tensor:
        """``P(M)``, shape ``(..., k, k)``."""
        return self.matrix_inverse().product(M)

    # -- declared capabilities ----------------------------------------------------------------
    def matrix_inverse(self) -> MatrixInverse:
        """The answer is ``A⁻¹`` (``A⁺`` with ``pseudo``), measured on this problem's side; where ``P = I`` is
        attainable for every member and nothing is projected, the loss and :meth:`residual` are the standard ones
        (``measured``)."""
        # (called once by the constructor before the analysis, for the identity's size: not measured then)
        measured = self.__dict__.get("_all_attainable", False) and self._projector is None
        return declared(
            self, self.A, f"inverse {measured}",
            lambda: MatrixInverse(self.A, side=self.side, pseudo=self.pseudo, key="M", measured=measured),
        )

    def fused_loss(self) -> InverseMSE | None:
        """The loss is the fused ``inverse_mse`` op's.

        For one matrix whose equation ``P = I_k`` is attainable on the right or the left (no
        projection), :meth:`residual` is ``‖P − I‖_F / √k = √(k · loss)``: declared as
        ``residual_factor = k``.
        """
        plain = not self.batch_shape and self.side != "both" and self._projector is None
        tested = plain and self._all_attainable
        return InverseMSE(self.A, side=self.side, key="M", residual_factor=float(self._k) if tested else None)

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
        return declared(self, self.A, "least squares", lambda: LinearLeastSquares(
            key="M",
            apply=inverse.product,
            adjoint=inverse.adjoint,
            rhs=self._eye().expand(*self.batch_shape, self._k, self._k),
            loss_of=self._mse,
            block_dims=dims,
            block_name=block,
            distinct_blocks=math.prod(self.batch_shape),  # every column (row) of one matrix meets the same A
            gram_factor=None if self.side == "both" else self.A,
            gram_exact=self.side != "both",  # a column's (row's) Gram is AᵀA (AAᵀ) itself
            loss_curvature=2.0 / (self._k * self._k),  # each member's loss is the mean of k² squares
        ))

    def _eye(self) -> torch.Tensor:
        """``I_k``, made once (every loss compares with it: at k = 1024 eight megabytes to write each time)."""
        return declared(self, self.A, "eye", lambda: torch.eye(self._k, dtype=self.A.dtype, device=self.A.device))

    @property
    def dtype(self) -> torch.dtype:
        """``A``'s dtype (asked several times a solve)."""
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        return self.A.device

    def _placed(self, M: torch.Tensor) -> torch.Tensor:
        """``M`` as the iterate is held (:class:`MeshInverse`: on the mesh, placed like ``A``)."""
        return M

    def _restrict(self, M: torch.Tensor) -> torch.Tensor:
        """``M`` projected onto the subspace holding the pseudo-inverse (identity if unique)."""
        if self._projector is None:
            return M
        return self._projector @ M if self.side == "right" else M @ self._projector

    def init_params(self, generator: torch.Generator) -> Params:
        shape = (*self.batch_shape, self._n, self._m)
        if self.init == "zeros":
            M = self._placed(torch.zeros(shape, dtype=self.dtype, device=self.device))
        elif self.init == "scaled-transpose":
            M = self._placed(self.matrix_inverse().safe_start())
        else:  # on a mesh every rank draws the whole start from the same generator: the one-process start, split
            M = self._restrict(self._placed(uniform(shape, generator, dtype=self.dtype, device=self.device)))
            # start with ‖P(M₀)‖_F = ‖I_k‖_F = √k, whatever the scale of A
            M = M * (math.sqrt(self._k) / safe_scale(self._full(self._product_norm(M))))[..., None, None]
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
        return self._mse(self._product(params["M"]) - self._eye())

    def loss_and_grad(self, params: Params, backend: str = "autograd") -> tuple[torch.Tensor, Params]:
        check_choice(backend, "backend", ("autograd", "fused"))
        if backend == "fused":
            from gdla import ops  # the compiled extension loads only when asked for

            loss, grad = ops.inverse_mse_and_grad(self.A, params["M"], self.side)
            return loss, {"M": grad}
        return super().loss_and_grad(params, backend)

    def project(self, params: Params) -> None:
        """Keep ``M`` in the row space (right) or column space (left) of ``A`` when inverses are not unique."""
        if self._projector is not None:
            with torch.no_grad():
                params["M"].copy_(self._restrict(params["M"]))

    # -- normalised units ---------------------------------------------------------------------
    def _scaled(self, exponent: int) -> InverseProblem:
        """The problem of ``2^exponent · A`` without a second analysis: singular values scale exactly,
        and the condition numbers, ranks and the least-norm projector do not change."""
        work = copy.copy(self)
        work.A = scale_by_power_of_two(self.A, exponent)
        work._facts = self._facts.scaled(exponent)
        work._reference = None
        work._normalization, work._kept_residuals = None, KeptFigure()
        work._constructor_arguments = {**self._constructor_arguments, "A": work.A}  # rebuilt from the scaled A
        return work

    def normalized(self) -> Normalization | None:
        r"""The problem of :math:`A' = 2^{-e} A` (largest entry in ``[0.5, 1)``); restores :math:`M = 2^{-e} M'`.

        :math:`(2^{-e} A)^{-1} = 2^{e} A^{-1}` (also for the pseudo-inverse and one-sided inverses).
        Raises :class:`~gdla.errors.InputError` when :math:`A^{-1}` over- or underflows the dtype.
        The answer depends on ``A`` alone: it is kept for the next solve of this problem while ``A``
        is the same, unmodified tensor (a copy made by :meth:`to` or :meth:`batch_slice` computes its own).
        """
        cached = self._normalization
        if cached is not None and cached[0] is self.A and cached[1] == self.A._version:
            return cached[2]
        normalization = self._normalize()
        if not self.A.is_inference():
            self._normalization = (self.A, self.A._version, normalization)
        return normalization

    def _normalize(self) -> Normalization | None:
        """:meth:`normalized`, computed."""
        exponent = power_of_two_scale(self._full(self.A.abs().amax()))
        work = self if exponent == 0 else self._scaled(-exponent)
        # entries of A'^{-1} lie between 1/σ_max(A') and 1/σ_min(A') = cond/σ_max(A'), up to √k factors (a zero
        # member's pseudo-inverse is zero: it bounds nothing); the screen's bounds on them serve where their
        # whole span fits the dtype, else the singular values decide
        spans = work._facts.answer_exponents(self._k)
        if spans is None:  # A = 0: its pseudo-inverse is 0, nothing to scale
            return None
        lowest, highest = answer_exponent_limits(self.dtype)
        if not all(lowest <= -exponent + span <= highest for span in spans):
            work._facts.settle()
            spans = work._facts.answer_exponents(self._k) or spans
        what = "the pseudo-inverse of A" if self.pseudo or self._m != self._n else "the inverse of A"
        for estimate in (spans[1], spans[2]):  # the largest entry's, the smallest's (equal pairs once exact)
            check_representable("A", -exponent + estimate, self.dtype, what)
        if exponent == 0:
            return None

        def restore(params: Params) -> Params:
            return {"M": scale_by_power_of_two(params["M"], -exponent)}

        # M' = 2^e M; the loss compares A'M' = A M with I: unchanged
        return Normalization(problem=work, restore=restore, exponent=exponent, param_exponent=exponent)

    # -- answers ------------------------------------------------------------------------------
    def solution(self, params: Params) -> torch.Tensor:
        """``M``: a plain tensor, gathered on every rank where ``M`` is a DTensor."""
        return self._full(params["M"].detach())

    def residual(self, params: Params) -> torch.Tensor:
        """Worst over the batch of :meth:`member_residuals` (the one matrix's, unbatched)."""
        return worst(self._residuals(params))

    def member_residuals(self, params: Params) -> torch.Tensor | None:
        """Each matrix's relative residual (see :meth:`_residuals`), shape ``batch_shape``; ``None`` for one matrix."""
        return self._residuals(params) if self.batch_shape else None

    def residual_kind(self) -> str:
        """``"normal-equations"`` where ``P = I_k`` is unattainable for some member, else ``"equation"``."""
        return "equation" if self._all_attainable else "normal-equations"

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
        if self.side == "both":  # only for a plain A
            return torch.maximum(frobenius(A @ M - eye), frobenius(M @ A - eye)) / root_k
        error = self._product(M) - eye
        value = self._full(frobenius(error)) / root_k
        if not self._all_attainable:
            normal = self.matrix_inverse().adjoint(error)  # Aᵀ(AM − I) right, (MA − I)Aᵀ left
            normal_value = self._full(frobenius(normal)) / (safe_scale(self._sigma_max) * root_k)
            value = torch.where(self._attainable, value, normal_value)
        return value

    def _fused_residuals(self, M: torch.Tensor) -> torch.Tensor | None:
        """``‖P − I‖_F`` per matrix by ``gdla.ops.small_inverse_residuals`` (one pass in registers, summed in
        float64) where it serves: square ``n <= gdla.limits.SMALL_MAX_N`` plain tensors with ``P = I`` attainable;
        else ``None``. The last figures are kept for the same, unmodified ``M`` and ``A`` (a solve's report and its
        ``residual`` metric ask for the same answer's)."""
        A = self.A
        if (
            self._m != self._n
            or A.device.type not in ("cpu", "cuda")
            or M.shape != A.shape
            or M.dtype != A.dtype
            or (M.requires_grad or A.requires_grad) and torch.is_grad_enabled()
            or not self._all_attainable
            or not extension_status()[0]
        ):
            return None
        from gdla import ops  # the compiled extension loads only when asked for

        if self._n > ops.SMALL_MAX_N:
            return None
        if self.side == "both":
            return torch.maximum(ops.small_inverse_residuals(A, M, "right"), ops.small_inverse_residuals(A, M, "left"))
        return self._kept_residuals((M, A), lambda: ops.small_inverse_residuals(A, M, self.side))

    def reference(self) -> torch.Tensor:
        """``torch.linalg.inv(A)``, or ``torch.linalg.pinv(A)`` for ``pseudo=True`` or rectangular ``A``."""
        if self._reference is None:
            square = self._m == self._n
            A = self._full(self.A)  # gathered on every rank: torch.linalg does not run on a mesh
            self._reference = torch.linalg.pinv(A) if self.pseudo or not square else torch.linalg.inv(A)
        return self._reference

    def reference_params(self) -> Params:
        return {"M": self.reference().clone()}

    def error(self, params: Params) -> torch.Tensor:
        """Worst over the batch of ``‖M − ref‖_F / ‖ref‖_F``."""
        reference = self.reference()
        return worst(relative_frobenius(self._full(params["M"]) - reference, reference))

    def condition_estimate(self) -> float:
        """Largest 2-norm condition number ``σ_max / σ_min`` over the batch (``inf`` if singular).

        Exact: the singular values, computed at the first call where construction only screened ``A`` (an LU
        factorisation and 1-norm estimates, :class:`~gdla_plugins.problems._inverse_analysis.InverseFacts`), then
        kept.
        """
        return float(worst(self._cond))

    def describe(self) -> dict[str, Any]:
        reference = "pinv" if self.pseudo or self._m != self._n else "inv"
        shape, batch_shape = list(self.A.shape), list(self.batch_shape)
        return {"name": self.name, "shape": shape, "batch_shape": batch_shape, "m": self._m, "n": self._n,
                "side": self.side, "pseudo": self.pseudo, "init": self.init, "reference": reference}


class MeshInverse(MeshInverseMethods, InverseProblem):
    """:class:`InverseProblem` of one matrix given as a DTensor (what ``InverseProblem(A)`` builds for one)."""


@gdla.hookimpl
def register_problems(register: Any) -> None:
    register(InverseProblem)
