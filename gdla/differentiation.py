r"""Differentiable answers: ``gdla.solve(..., backward=...)``.

A problem whose data requires grad (``A.requires_grad_()``) gets an answer (``Result.params`` and
``Result.solution``) that carries a ``grad_fn`` back to that data, by one of two modes:

* ``"implicit"`` (what ``"auto"`` picks): the implicit function theorem at the answer :math:`p^*`,
  whichever method ran and however many steps it took. With :math:`L(p, d)` the problem's loss on
  data :math:`d`, :math:`\nabla_p L(p^*, d) = 0`, so for an upstream gradient :math:`g`,

  .. math:: H v = g, \quad H = \nabla_p^2 L, \qquad \bar d = -\partial_d \langle \nabla_p L(p^*, d), v \rangle,

  with :math:`H v` by autograd (Hessian-vector products) and the system solved by conjugate
  gradients (:func:`~gdla.adjoints.conjugate_gradients`). Declared capabilities give faster paths, never
  names (the formulas in :mod:`gdla.adjoints`): :meth:`~gdla.Problem.matrix_inverse` the closed form at
  the returned ``X`` (``torch.linalg.pinv``'s backward formula: ``−Xᵀ Ḡ Xᵀ`` for an invertible ``A``),
  :meth:`~gdla.Problem.least_squares` CG on the normal equations ``JᵀJ w = g`` with the declared
  ``apply``/``adjoint``, per independent block, :meth:`~gdla.Problem.singular_value_decomposition` with
  ``params_of`` ``torch.linalg.svd``'s backward formula at the returned triples (repeated singular values:
  ``inf``/``NaN`` through the vectors, as torch's), :meth:`~gdla.Problem.sum_of_squares` CG on its
  Gauss-Newton matrix where that is the Hessian (a zero residual, checked). Time and memory do not
  depend on the steps taken. Where the answer is one of a set (a pseudo-inverse, a rank-deficient
  least-squares fit, sign-ambiguous singular vectors, the bands of a network whose weights are not
  unique) the answer gdla returned is differentiated (the pseudo-inverse formula at it; CG from zero on
  a singular system: the minimum-norm adjoint, on which the data's gradient does not depend).
* ``"unroll"``: the steps actually taken, replayed with autograd from the same start (a constant;
  a method's own start such as Newton-Schulz's safe one is differentiated): an optimizer that
  defines ``unrolled(problem, params, steps)`` (``newton-schulz``), or a gradient method built on
  ``torch.optim.SGD`` (gradient descent, with or without momentum). Memory grows with the steps. A
  learning rate chosen from the data (a gradient method's default ``lr``) is a constant of the replay.

The data are the problem's recorded constructor arguments that require grad (or, where the
constructor records nothing, its tensor attributes that do). Constructors detach what they keep,
so the differentiable problem is rebuilt from them under :func:`keeping_graph`, where
``Tensor.detach`` keeps the graph: everything the constructor derives (Gram matrices, weighted
targets) then depends on the data, and the gradient flows on through any dtype or device
conversion to the caller's leaf tensors. A loss, capability or solution that leaves autograd is a
:class:`~gdla.errors.UsageError` naming it, never a silently detached answer.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode

from gdla.adjoints import block_dot, conjugate_gradients, gauss_newton, pinv_adjoint, svd_adjoint, weighted
from gdla.capabilities import SingularValueDecomposition
from gdla.errors import ConvergenceWarning, UsageError
from gdla.problem import Params, Problem
from gdla.validation import check_choice

if TYPE_CHECKING:
    from gdla.optimizer import Optimizer

__all__ = [
    "MODES",
    "check_unroll",
    "sgd_unrolled",
    "differentiable_params",
    "keeping_graph",
    "requiring_grad",
    "resolve_backward",
    "solution_of",
]

#: The values of ``gdla.solve(..., backward=...)``.
MODES = ("auto", "implicit", "unroll", "none")

Tensors = list[torch.Tensor]


class _KeepGraph(TorchFunctionMode):
    """``Tensor.detach`` returns the tensor itself: code that detaches what it keeps keeps the graph."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.Tensor.detach:
            return args[0]
        return func(*args, **(kwargs or {}))


@contextmanager
def keeping_graph() -> Iterator[None]:
    """Grad mode on, and ``Tensor.detach`` a no-op, inside the block (where code that reads a number off a
    tensor, ``float(t)``, meant the detached value: torch's warning about it is silenced)."""
    with torch.enable_grad(), _KeepGraph(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Converting a tensor with requires_grad=True to a scalar", UserWarning)
        yield


def requiring_grad(problem: Problem) -> dict[str, torch.Tensor]:
    """The problem's data that requires grad, by name (empty: nothing to differentiate, the usual case).

    Its recorded constructor arguments that are tensors requiring grad; where the constructor records
    nothing, its tensor attributes that do.
    """
    recorded = problem.__dict__.get("_constructor_arguments")
    source = vars(problem) if recorded is None else recorded
    return {key: value for key, value in source.items() if isinstance(value, torch.Tensor) and value.requires_grad}


def resolve_backward(mode: Any, problem: Problem) -> str:
    """``backward`` decided once: ``"auto"`` is ``"implicit"`` where the problem holds data that requires grad (and
    grad mode is on), else ``"none"``; an explicit mode stands (``"none"`` where nothing requires grad)."""
    check_choice(mode, "backward", MODES)
    if mode == "none" or not torch.is_grad_enabled() or not requiring_grad(problem):
        return "none"
    return "implicit" if mode == "auto" else str(mode)


def _with_data(problem: Problem, data: dict[str, torch.Tensor]) -> Problem:
    """``problem`` holding ``data`` (tensors with a graph) instead of its own: rebuilt, keeping the graph."""
    with keeping_graph():
        if problem.__dict__.get("_constructor_arguments") is not None:
            return problem.rebuild(**data)
        rebuilt = copy.copy(problem)
        for key, value in data.items():
            setattr(rebuilt, key, value)
        return rebuilt


def _leaves(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().requires_grad_(True) for key, value in data.items()}


def _cg_tolerance(dtype: torch.dtype) -> float:
    """The adjoint solve's relative tolerance: ``eps^0.75`` of the dtype (about 2e-12 in float64, 6e-6 in float32)."""
    return float(torch.finfo(dtype).eps) ** 0.75


class _Answer(torch.autograd.Function):
    """The answer's parameters as a function of the data; the backward is the mode's."""

    @staticmethod
    def forward(ctx: Any, backward: Callable[..., Tensors], values: Tensors, *data: torch.Tensor) -> Any:
        ctx.backward_rule = backward
        ctx.shapes = [(value.shape, value.dtype, value.device) for value in data]
        return tuple(value.clone() for value in values)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        found = ctx.backward_rule(list(grads))
        out = [
            torch.zeros(shape, dtype=dtype, device=device) if grad is None else grad
            for grad, (shape, dtype, device) in zip(found, ctx.shapes, strict=True)
        ]
        return (None, None, *out)


class _Implicit:
    """The implicit backward of one answer: ``p*`` in the caller's units and the data it depends on."""

    def __init__(self, problem: Problem, params: Params, data: dict[str, torch.Tensor], notes: list[str]) -> None:
        self.problem, self.params, self.notes = problem, params, notes
        self.data = {key: value.detach() for key, value in data.items()}

    def check(self) -> None:
        """Refuse, before the answer is handed back, a loss that does not reach the data through autograd."""
        leaves = _leaves(self.data)
        problem = _with_data(self.problem, leaves)
        with torch.enable_grad():
            x = {key: value.detach().requires_grad_(True) for key, value in self.params.items()}
            loss = problem.loss(x)
            if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
                raise UsageError(
                    f"backward: expected problem {problem.name!r}'s loss() to be differentiable (a torch expression "
                    "of its parameters and data), received a loss outside autograd; pass backward='none'"
                )

    def __call__(self, grads: Tensors) -> Tensors:
        keys = list(self.params)
        upstream = {
            key: torch.zeros_like(self.params[key]) if grad is None else grad
            for key, grad in zip(keys, grads, strict=True)
        }
        leaves = _leaves(self.data)
        problem = _with_data(self.problem, leaves)
        with torch.enable_grad():
            outputs, weights = self._adjoint(problem, upstream)
            found = torch.autograd.grad(weighted(outputs, weights), list(leaves.values()), allow_unused=True)
        return list(found)

    def _adjoint(self, problem: Problem, upstream: Params) -> tuple[Tensors, Tensors]:
        """``(outputs, weights)`` whose vector-Jacobian product with respect to the data is the data's gradient."""
        keys = set(self.params)
        inverse = problem.matrix_inverse()
        if inverse is not None and keys == {inverse.key}:
            X = self.params[inverse.key]
            return [inverse.A], [pinv_adjoint(upstream[inverse.key], X, inverse.A.detach())]
        form = problem.least_squares()
        if form is not None and keys == {form.key}:
            x = self.params[form.key]
            dims = form.block_dims if form.block_index is None else None

            def gram(d: Tensors) -> Tensors:
                with torch.no_grad():
                    return [form.gram(d[0])]

            w = self._solve(gram, [upstream[form.key]], block_dot(dims), what="the normal equations JᵀJ w = g")
            return [form.adjoint(form.residual(x))], [-w[0]]
        decomposition = problem.singular_value_decomposition()
        if decomposition is not None and decomposition.params_of is not None:
            found = self._svd(decomposition, upstream)
            if found is not None:
                return found
        return self._generic(problem, upstream)

    def _svd(self, svd: SingularValueDecomposition, upstream: Params) -> tuple[Tensors, Tensors] | None:
        """``torch.linalg.svd``'s adjoint at the returned triples (``None``: ``params_of`` holds other parameters).

        The values are ``diag(Uᵀ M V)`` at the returned factors; a truncated decomposition (``rank < min(m, n)``)
        is completed by ``torch.linalg.svd``'s remaining triples, which no gradient reaches.
        """
        M = svd.matrix.detach()
        U, V = (factor.detach() for factor in svd.load(self.params))
        triples = [U, ((U.mT @ M) * V.mT).sum(-1), V]
        leaves = [value.clone().requires_grad_(True) for value in triples]
        with torch.enable_grad():
            held = svd.params_of(*leaves)
            if set(held) != set(self.params):
                return None
            keys = list(held)
            found = torch.autograd.grad(
                weighted([held[key] for key in keys], [upstream[key] for key in keys]), leaves, allow_unused=True
            )
        grads = [None if grad is None or not bool(grad.any()) else grad for grad in found]  # none: torch's undefined
        missing = min(M.shape[-2:]) - svd.rank
        if missing:
            full_u, full_s, full_vh = torch.linalg.svd(M, full_matrices=False)
            rest = [full_u[..., -missing:], full_s[..., -missing:], full_vh[..., -missing:, :].mT]
            triples = [torch.cat([mine, theirs], dim=-1) for mine, theirs in zip(triples, rest, strict=True)]
            grads = [
                None if grad is None else torch.cat([grad, torch.zeros_like(other)], dim=-1)
                for grad, other in zip(grads, rest, strict=True)
            ]
        return [svd.matrix], [svd_adjoint(*grads, *triples)]

    def _generic(self, problem: Problem, upstream: Params) -> tuple[Tensors, Tensors]:
        """From the loss alone: ``H v = g`` by CG on autograd Hessian-vector products."""
        x = {key: value.detach().requires_grad_(True) for key, value in self.params.items()}
        inputs = list(x.values())
        gradient = torch.autograd.grad(problem.loss(x), inputs, create_graph=True, allow_unused=True)
        if any(g is None or g.grad_fn is None for g in gradient):
            raise UsageError(
                f"backward: expected problem {problem.name!r}'s loss() to be twice differentiable in every parameter "
                f"({', '.join(x)}), received one whose gradient leaves autograd; pass backward='none'"
            )

        def hessian(v: Tensors) -> Tensors:
            return list(torch.autograd.grad(weighted(gradient, v), inputs, retain_graph=True))

        rhs = list(upstream.values())
        v = self._gauss_newton(problem, x, rhs, hessian)
        if v is None:
            v = self._solve(hessian, rhs, block_dot(None), what="the Hessian system H v = g")
        return list(gradient), [-vi for vi in v]

    def _gauss_newton(
        self, problem: Problem, x: Params, rhs: Tensors, hessian: Callable[[Tensors], Tensors]
    ) -> Tensors | None:
        """``v`` from a declared :meth:`~gdla.Problem.sum_of_squares`'s Gauss-Newton matrix where that is the Hessian.

        At a zero residual (a network that fits every training row) the Gauss-Newton matrix *is* the
        Hessian, and positive semi-definite where the parameters are not unique: CG from zero on a right-hand
        side in its range gives the minimum-norm ``v``, and the data's gradient does not depend on which ``v``.
        Accepted where ``H v = g`` holds to ``eps^(1/3)`` (one Hessian-vector product; a residual that is not
        zero leaves a gap of its own relative size), ``None`` otherwise.
        """
        form = problem.sum_of_squares()
        if form is None:
            return None
        product, dot = gauss_newton(form.residuals(x), form.loss_of, list(x.values())), block_dot(None)
        v, converged = self._cg(product, rhs, dot)
        if not converged:
            return None
        gap = [hv - g.detach() for hv, g in zip(hessian(v), rhs, strict=True)]
        enough = float(torch.finfo(rhs[0].dtype).eps) ** (2 / 3) * float(dot(rhs, rhs))  # (eps^(1/3) ‖g‖)²
        return v if float(dot(gap, gap)) <= enough else None

    def _cg(self, apply: Callable[[Tensors], Tensors], rhs: Tensors, dot: Any) -> tuple[Tensors, bool]:
        unknowns = sum(value.numel() for value in rhs)
        return conjugate_gradients(
            apply, [value.detach() for value in rhs], dot, rtol=_cg_tolerance(rhs[0].dtype),
            max_steps=min(2 * unknowns + 10, 20_000),
        )

    def _solve(self, apply: Callable[[Tensors], Tensors], rhs: Tensors, dot: Any, *, what: str) -> Tensors:
        dtype = rhs[0].dtype
        solution, converged = self._cg(apply, rhs, dot)
        if not converged:
            text = (
                f"backward='implicit': conjugate gradients on {what} did not reach {_cg_tolerance(dtype):.1e} for "
                f"problem {self.problem.name!r} (a singular or indefinite Hessian at the answer: is it a minimum, "
                "and converged?); the gradient is approximate"
            )
            self.notes.append(text)
            warnings.warn(text, ConvergenceWarning, stacklevel=2)
        return solution


# -- unroll -----------------------------------------------------------------------------------------
def unroll_reason(opt: Optimizer) -> str | None:
    """Why ``opt`` cannot replay its steps with autograd, or ``None`` if it can."""
    if getattr(opt, "scheduler", None) is not None:
        return "its learning-rate schedule is not replayed"
    if opt.problem.needs_projection():
        return f"problem {opt.problem.name!r} projects its parameters in place after every step"
    torch_optimizer = getattr(opt, "torch_optimizer", None)
    if torch_optimizer is not None and len(torch_optimizer.param_groups) != 1:
        return "it runs several parameter groups"
    if callable(getattr(opt, "unrolled", None)):
        return None
    if not isinstance(torch_optimizer, torch.optim.SGD):
        return "it neither defines unrolled(problem, params, steps) nor runs torch.optim.SGD steps"
    return None


def _sgd_unrolled(opt: Optimizer, problem: Problem, params: Params, steps: int) -> Params:
    """``steps`` steps of ``opt``'s ``torch.optim.SGD`` (its documented algorithm, its one group's settings)."""
    group = opt.torch_optimizer.param_groups[0]  # type: ignore[attr-defined]
    return sgd_unrolled(
        problem, params, steps, lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
        nesterov=group["nesterov"], weight_decay=group["weight_decay"], maximize=bool(group.get("maximize")),
    )


def sgd_unrolled(
    problem: Problem,
    params: Params,
    steps: int,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> Params:
    """``steps`` steps of gradient descent with momentum (``torch.optim.SGD``'s recursion: the buffer starts as the
    first gradient), out of place, so that autograd differentiates through them."""
    sign = 1.0 if maximize else -1.0
    keys = list(params)
    x = [params[key] for key in keys]
    buffers: Tensors = []
    for step in range(steps):
        loss = problem.loss(dict(zip(keys, x, strict=True)))
        grads = list(torch.autograd.grad(loss, x, create_graph=True))
        if weight_decay:
            grads = [g + weight_decay * xi for g, xi in zip(grads, x, strict=True)]
        if momentum:
            if step == 0:
                buffers = grads
            else:
                buffers = [momentum * b + (1 - dampening) * g for b, g in zip(buffers, grads, strict=True)]
            grads = [g + momentum * b for g, b in zip(grads, buffers, strict=True)] if nesterov else buffers
        x = [xi + sign * lr * g for xi, g in zip(x, grads, strict=True)]
    return dict(zip(keys, x, strict=True))


def check_unroll(opt: Optimizer) -> None:
    """Refuse, before the run, a method that cannot unroll (a :class:`~gdla.errors.UsageError` naming it)."""
    reason = unroll_reason(opt)
    if reason is not None:
        raise UsageError(
            "backward: expected a method that can unroll its steps (one that defines unrolled(), or runs "
            f"torch.optim.SGD steps), received optimizer {opt.name!r}, which cannot: {reason}; use backward='implicit'"
        )


def _unrolled(plan: Any, opt: Optimizer, data: dict[str, torch.Tensor], steps: int) -> Params:
    """The answer (caller's units) replayed with autograd from the plan's start, on data with a graph."""
    check_unroll(opt)
    problem = _with_data(plan.problem, data)
    with keeping_graph():
        normalization = problem.normalized()
        work = problem if normalization is None else normalization.problem
        # a constant start, as a leaf: the steps' gradients are taken with respect to the iterate
        start = {key: value.detach().clone().requires_grad_(True) for key, value in plan.start_params.items()}
        method = getattr(opt, "unrolled", None)
        if method is not None:
            final = method(work, start, steps)
        else:
            final = _sgd_unrolled(opt, work, start, steps)
        return final if normalization is None else normalization.restore(final)


# -- the answer -------------------------------------------------------------------------------------
def differentiable_params(plan: Any, opt: Optimizer, params: Params, steps: int, notes: list[str]) -> Params:
    """``params`` (the answer, caller's units) with a ``grad_fn`` to the problem's data, by ``plan.backward``.

    ``notes`` is the :class:`~gdla.Result`'s warnings list: an implicit backward whose adjoint solve
    does not converge adds its note there (and warns) when it runs.
    """
    data = requiring_grad(plan.problem)
    if plan.backward == "unroll":
        return _unrolled(plan, opt, data, steps)
    implicit = _Implicit(plan.problem, params, data, notes)
    implicit.check()
    keys = list(params)
    values = _Answer.apply(implicit, [params[key] for key in keys], *data.values())
    return dict(zip(keys, values, strict=True))


def solution_of(problem: Problem, params: Params, differentiable: bool) -> Any:
    """``problem.solution(params)``; where ``params`` carry a graph, read keeping it (an answer that leaves
    autograd is a :class:`~gdla.errors.UsageError`)."""
    if not differentiable:
        return problem.solution(params)
    # read from the problem rebuilt on the data with their graph: an answer that reads the data as well as the
    # parameters (toeplitz-net's bands, the network applied to the rows) depends on them both ways
    holder = _with_data(problem, requiring_grad(problem))
    with keeping_graph():
        answer = holder.solution(params)
    parts = answer if isinstance(answer, (tuple, list)) else (answer,)
    if any(isinstance(part, torch.Tensor) and part.is_floating_point() and part.grad_fn is None for part in parts):
        cls = type(problem)
        raise UsageError(
            f"backward: expected problem {problem.name!r} ({cls.__module__}.{cls.__qualname__}) to compute its "
            "solution() from the parameters with torch operations (it computes under torch.no_grad() or leaves "
            "autograd otherwise), so the answer cannot carry gradients; pass backward='none', or differentiate "
            "Result.params yourself"
        )
    return answer

