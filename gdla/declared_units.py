r"""Normalised units derived from a declared least-squares form: the default :meth:`gdla.Problem.normalized`.

A problem that declares :meth:`~gdla.Problem.least_squares` (``r = J x − b`` in one parameter
``x``) says how its units act: scaling ``J`` by ``2^-a`` and ``b`` by ``2^-c`` (exact powers of
two) scales the answer by ``2^(a−c)``. So gdla solves the form itself in normalised units, without
the plugin writing ``normalized()``: :class:`LeastSquaresUnits` is the problem whose loss is the
declared ``loss_of(J' x' − b')`` with ``J' = 2^-a J``, ``b' = 2^-c b``, and whose residual, the
stop test, is the form's normal-equations residual in scaled arithmetic (:mod:`gdla.norms`):

.. math:: \max_{\text{blocks}} \; \|J^T(J x − b)\| \,/\, \|J^T b\|

(1 for a block whose ``Jᵀb`` vanishes while ``Jᵀ J x`` does not). ``J`` is only applied, never
formed: ``2^-a (J d)`` has the bits of ``(2^-a J) d``, so the wrapped problem *is* the scaled one.
``a`` comes from ``J`` applied to two probe vectors (any power of two is exact; this one puts the
operator's gain near 1), ``c`` from ``b``'s largest entry, both rounded to multiples of
:data:`UNIT_STEP` (16): ``1e-160`` or ``1e+160`` data is brought within ``2^±8`` of 1, data already
there runs exactly as written (a plugin's default learning rate keeps the meaning it was tuned for),
and a method takes the same steps, bit for bit, on ``A`` and on ``2^(16k)·A``.

The plugin's ``init_params()`` is taken as a start in normalised units: a start drawn at a fixed
scale (``0.1 · randn``), as most are, then lies at the answer's scale whatever the units (scaled
with the data, it would be ``1e160`` answers away from a ``1e-160`` one), and zeros are zeros in any
units. The answer, the plugin's own ``error()`` and its other metrics are computed in the caller's units
on the restored parameters (a plugin keeps them honest with :mod:`gdla.norms`); the ``residual``
reported is the stop test's, so ``converged`` always means that figure ``<= tol``.

Not wrapped (solved as given): a problem with a projection, a fused path, a batch to shard, an inverse or
SVD declaration, or a ``loss_of`` that is not homogeneous of degree 1 or 2 in ``r``; :func:`unconfirmed`
then checks a ``converged`` verdict against the form afterwards.

This module does not import :mod:`gdla.problem` (whose default ``normalized()`` calls it): the
base class is handed in.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import torch

from gdla.capabilities import LinearLeastSquares
from gdla.norms import scaled_norm
from gdla.scaling import Normalization, check_representable, power_of_two_scale, scale_by_power_of_two

if TYPE_CHECKING:
    from gdla.problem import Params, Problem

__all__ = ["UNIT_STEP", "least_squares_units", "normal_residual", "unconfirmed"]

#: ``J`` and ``b`` are scaled by powers of ``2^UNIT_STEP`` only: data at ordinary scales (within a factor
#: 256 of 1) runs exactly as the plugin was written and tuned (its default learning rate keeps its meaning),
#: and ``2^(UNIT_STEP·k)·A`` takes the same steps as ``A``, bit for bit, across the dtype's range.
UNIT_STEP = 16


def normal_residual(form: LinearLeastSquares, x: torch.Tensor) -> torch.Tensor:
    """``‖Jᵀ(J x − b)‖ / ‖Jᵀ b‖`` of ``form`` at ``x`` in scaled arithmetic, worst over its blocks (0-dim).

    Blocks are ``form.block_dims`` (one global block for ``None`` or a ``block_index``). A block
    whose ``Jᵀ b`` is zero has the answer 0: its residual is 0 there and 1 elsewhere (never NaN,
    which no tolerance could meet, and never an absolute figure that depends on the units).
    """
    gradient, target = form.adjoint(form.residual(x)), form.adjoint(form.rhs)
    dims = form.block_dims if form.block_index is None else None
    num, den = scaled_norm(gradient, dims), scaled_norm(target, dims)
    exact = torch.where(num > 0, torch.ones_like(num), torch.zeros_like(num))
    ratio = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), exact)
    return ratio.max() if ratio.dim() else ratio


def unconfirmed(problem: Problem, params: Params, tol: float) -> str | None:
    """Why a ``converged`` verdict on ``problem`` (solved as given) is not confirmed at ``params``, or ``None``.

    The declared least-squares form's :func:`normal_residual`, in scaled arithmetic, must be at most
    ``√tol``: the problem's own ``residual()`` may measure differently (another denominator), but
    not by half the digits, and one that underflowed to 0 cannot pass for convergence. A problem
    that declares no least-squares form is not checked (its contract test sweeps the units).
    """
    form = problem.least_squares()
    if form is None or form.key not in params:
        return None
    with torch.no_grad():
        figure = float(normal_residual(form, params[form.key].detach()))
    if figure <= math.sqrt(tol):
        return None
    return (
        f"not converged: problem {problem.name!r}'s residual() reached tol={tol:g}, but its declared least_squares() "
        f"form gives a normal-equations residual ‖Jᵀ(J x − b)‖ / ‖Jᵀ b‖ of {figure:.3g} in scaled arithmetic (its "
        "residual() may under- or overflow at these units: compute it with gdla.relative_norm)"
    )


def _loss_degree(form: LinearLeastSquares) -> int | None:
    """``k`` with ``loss_of(2 r) = 2^k loss_of(r)`` exactly (1 or 2), read from the declaration or one probe."""
    if form.hessian_scale() is not None:
        return 2
    r = scale_by_power_of_two(form.rhs.detach(), -power_of_two_scale(form.rhs))  # largest entry near 1: no underflow
    if not bool(r.ne(0).any()):
        r = torch.ones_like(r)
    with torch.no_grad():
        once, twice = form.loss_of(r), form.loss_of(2 * r)
    if not bool(torch.isfinite(once)) or float(once) == 0:
        return None
    return next((k for k in (2, 1) if float(twice) == float(once) * 2**k), None)


def _operator_exponent(form: LinearLeastSquares) -> int:
    """A power of two near ``J``'s size: that of ``max ‖J d‖ / ‖d‖`` over a vector of ones and a fixed random one."""
    like = form.adjoint(form.rhs).detach()  # shaped as x
    generator = torch.Generator().manual_seed(0)  # a local generator: the caller's random state is left alone
    probes = [torch.ones_like(like), (torch.rand(like.shape, generator=generator, dtype=torch.float64) - 0.5).to(like)]
    with torch.no_grad():
        gains = [scaled_norm(form.apply(d)) / scaled_norm(d) for d in probes]
    return power_of_two_scale(torch.stack(gains))


def _in_steps(exponent: int) -> int:
    """``exponent`` rounded to a multiple of :data:`UNIT_STEP` (data within ``2^±8`` of 1 is left as it is)."""
    return UNIT_STEP * ((exponent + UNIT_STEP // 2) // UNIT_STEP)  # not round(): ties must move with the data


def least_squares_units(problem: Problem, base: type[Problem]) -> Normalization | None:
    """``problem`` in normalised units through its declared ``least_squares()`` form, or ``None`` (see the module).

    Args:
        problem: the caller's problem.
        base: :class:`gdla.Problem`, which the normalised problem subclasses.
    """
    form = problem.least_squares()
    if (
        not isinstance(form, LinearLeastSquares)
        or problem.needs_projection()
        or problem.fused_reason() is None
        or problem.fused_loss() is not None
        or problem.matrix_inverse() is not None
        or problem.singular_value_decomposition() is not None
        or problem.batch_size() is not None
        or not isinstance(form.rhs, torch.Tensor)
        or not form.rhs.is_floating_point()
    ):
        return None
    degree = _loss_degree(form)
    if degree is None:
        return None
    a, c = _operator_exponent(form), power_of_two_scale(form.rhs)
    check_representable(
        "least_squares().rhs", c - a, form.rhs.dtype, f"the least-squares answer of problem {problem.name!r}"
    )
    a, c = _in_steps(a), _in_steps(c)
    work = _units_class(base)(problem, form, a, c)
    return Normalization(
        problem=work, restore=work.restore, exponent=a, param_exponent=a - c, loss_exponent=-degree * c
    )


@functools.cache
def _units_class(base: type[Problem]) -> type[Problem]:
    """The class of a problem solved in normalised units through its declared form (one per base class)."""

    class LeastSquaresUnits(base):  # type: ignore[misc, valid-type]
        """``problem``'s declared least-squares form with ``J`` scaled by ``2^-a`` and ``b`` by ``2^-c``.

        Parameters are ``x' = 2^(a−c) x``; :meth:`restore` maps them back to ``problem``'s.
        """

        def __init__(self, problem: Problem, form: LinearLeastSquares, a: int, c: int) -> None:
            self.original, self.key, self.shift = problem, form.key, a - c
            self.name, self.summary = problem.name, problem.summary
            self.quadratic, self.quasi_newton_memory = problem.quadratic, problem.quasi_newton_memory
            apply, adjoint = form.apply, form.adjoint
            self.form = LinearLeastSquares(
                key=form.key,
                apply=lambda d: scale_by_power_of_two(apply(d), -a),
                adjoint=lambda r: scale_by_power_of_two(adjoint(r), -a),
                rhs=scale_by_power_of_two(form.rhs, -c),
                loss_of=form.loss_of,
                block_dims=form.block_dims,
                block_name=form.block_name,
                distinct_blocks=form.distinct_blocks,
                gram_factor=None if form.gram_factor is None else scale_by_power_of_two(form.gram_factor, -a),
                block_index=form.block_index,
                gram_exact=form.gram_exact,
                loss_curvature=form.loss_curvature,
            )

        @classmethod
        def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> Problem:
            raise NotImplementedError("a problem in normalised units has no example: build the caller's problem")

        def restore(self, params: Params) -> Params:
            """Normalised parameters -> the caller's problem's (``x = 2^(c−a) x'``; other tensors as they are)."""
            return {k: scale_by_power_of_two(v, -self.shift) if k == self.key else v for k, v in params.items()}

        @property
        def dtype(self) -> torch.dtype:
            return self.original.dtype

        @property
        def device(self) -> torch.device:
            return self.original.device

        def _data(self) -> dict[str, torch.Tensor]:
            return self.original._data()  # the caller's tensors: what a change in place after the solve touches

        def normalize(self, params: Params) -> Params:
            """The caller's parameters in normalised units (``x' = 2^(a−c) x``): the inverse of :meth:`restore`."""
            return {k: scale_by_power_of_two(v, self.shift) if k == self.key else v for k, v in params.items()}

        def init_params(self, generator: torch.Generator) -> Params:
            """The caller's problem's start, taken as one in normalised units (see the module)."""
            return self.original.init_params(generator)

        def loss(self, params: Params) -> torch.Tensor:
            return self.form.loss_of(self.form.residual(params[self.key]))

        def least_squares(self) -> LinearLeastSquares:
            return self.form

        def normalized(self) -> Normalization | None:
            return None

        def update_masks(self) -> Params:
            return self.original.update_masks()

        def sparse_storage(self) -> tuple[tuple[int, ...], int] | None:
            return self.original.sparse_storage()

        def solution(self, params: Params) -> Any:
            return self.original.solution(self.restore(params))

        def residual(self, params: Params) -> torch.Tensor:
            """The declared form's :func:`normal_residual`, in normalised units: the stop test."""
            with torch.no_grad():
                return normal_residual(self.form, params[self.key].detach())

        def residual_kind(self) -> str:
            return self.original.residual_kind()  # whether the equation itself has an exact solution: its to say

        def reference(self) -> Any:
            """The caller's problem's reference answer, in its units."""
            return self.original.reference()

        def reference_params(self) -> Params | None:
            exact = self.original.reference_params()
            return None if exact is None else self.normalize(exact)

        def error(self, params: Params) -> torch.Tensor:
            return self.original.error(self.restore(params))

        def member_residuals(self, params: Params) -> torch.Tensor | None:
            return self.original.member_residuals(self.restore(params))

        def metrics(self, params: Params) -> dict[str, Any]:
            """The caller's problem's figures on the restored parameters, ``residual`` the stop test's."""
            figures = dict(dict.items(self.original.metrics(self.restore(params))))
            return figures | {"residual": lambda: self.residual(params)}

        def condition_estimate(self) -> float | None:
            return self.original.condition_estimate()

        def describe(self) -> dict[str, Any]:
            return self.original.describe()

    return LeastSquaresUnits
