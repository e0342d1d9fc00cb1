"""A plugin's results checked where gdla first uses them, and its exceptions named as its own.

gdla relies on rules that a plugin's types cannot say: ``init_params`` returns floating tensors in
the problem's dtype on its device; ``loss`` a real scalar on that device, differentiable in the
parameters; ``residual`` a number ``>= 0`` (a negative one would pass any ``tol``), finite where it
is the stop test;
``solution`` a tensor or a tuple of tensors (what ``--save`` writes); a declared
``least_squares()`` an ``adjoint`` that is the adjoint of its ``apply`` (a dot-product test), a
declared ``sum_of_squares()`` form that reproduces the loss, ``quadratic = True`` a gradient that is
affine. :func:`check_start` checks them once per problem instance, at a starting point, before the
first step: one loss, one residual and a few products, nothing per step; gdla's own plugins, checked by their
contract tests, are spared them (:func:`built_in`). What is read after the run,
``metrics()`` and ``condition_estimate()``, is checked as it is read (:func:`checked_metrics`,
:func:`checked_condition`). A broken rule is a :class:`~gdla.errors.PluginError` naming the plugin
(:func:`describe`: its kind, name, class and distribution), the method, the rule and what it returned.

:func:`blame` turns an exception raised inside a plugin's method (``__init__``, ``step``,
``reference``, ``estimated_bytes``...) into such an error, the original as its ``__cause__``: the
innermost frame of its traceback that runs a method of a problem or optimizer class defined outside
gdla's core names the culprit.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

import torch

from gdla.capabilities import LinearLeastSquares, SumOfSquares
from gdla.errors import GdlaError, PluginError
from gdla.mesh import distribute_like, full_tensor
from gdla.norms import scaled_norm
from gdla.optimizer import Optimizer
from gdla.problem import Params, Problem
from gdla.registry import entries

__all__ = [
    "blame",
    "broken",
    "check_adjoint",
    "check_loss",
    "check_params",
    "check_quadratic",
    "check_residual",
    "check_solution",
    "check_start",
    "checked_condition",
    "checked_metrics",
    "describe",
    "raised",
    "real",
    "with_distribution",
]

#: The package of gdla's own plugins (:func:`built_in`).
BUILT_IN_PACKAGE = "gdla_plugins"
#: Problem instances whose start checks passed (by ``id``; a collected problem drops out).
_PASSED: weakref.WeakValueDictionary[int, Problem] = weakref.WeakValueDictionary()


# -- naming the plugin --------------------------------------------------------------------------
def describe(subject: Any) -> str:
    """How errors name a plugin class (or an instance's): ``problem 'fit' (pkg.mod.Fit, distribution 'pkg')``.

    The distribution is the registry's (the entry that registered this very class), or "not registered".
    """
    cls = subject if isinstance(subject, type) else type(subject)
    kind = "problem" if issubclass(cls, Problem) else "optimizer" if issubclass(cls, Optimizer) else "plugin"
    return f"{kind} {getattr(cls, 'name', '')!r} ({cls.__module__}.{cls.__qualname__}, {_distribution(cls)})"


def _distribution(cls: type) -> str:
    """The distribution that registered ``cls``, or a base class of it defined in its module (a variant the plugin
    builds itself, such as a problem on a device mesh)."""
    try:
        registered = {entry.obj: entry.plugin for entry in entries()}
    except GdlaError:  # a registry that cannot list itself still lets the error name the class
        registered = {}
    found = [registered[base] for base in cls.__mro__ if base in registered and base.__module__ == cls.__module__]
    return f"distribution {found[0]!r}" if found else "not registered"


def with_distribution(error: PluginError, subject: Any) -> PluginError | None:
    """``error`` naming ``subject``'s distribution too, where it names the class alone (as the contracts' layer, below
    the registry, does: ``optimizer 'x' (pkg.mod.Cls): ...``); ``None`` where there is nothing to add."""
    cls = subject if isinstance(subject, type) else type(subject)
    plain = f"({cls.__module__}.{cls.__qualname__})"
    text = str(error)
    if plain not in text:
        return None
    return PluginError(text.replace(plain, f"({cls.__module__}.{cls.__qualname__}, {_distribution(cls)})", 1))


def broken(subject: Any, method: str, rule: str, received: str) -> PluginError:
    """The error for ``subject``'s ``method`` breaking ``rule`` (``"return a scalar tensor"``), having returned
    ``received``."""
    return PluginError(f"{describe(subject)}: {method}() must {rule}, returned {received}")


def raised(subject: Any, method: str, exc: BaseException, rule: str = "") -> PluginError:
    """The error for ``subject``'s ``method`` raising ``exc`` (its ``__cause__``), on one line."""
    detail = " ".join(str(exc).split()) or "(no message)"
    text = f"{describe(subject)}: {method}() raised {type(exc).__name__}: {detail}"
    error = PluginError(text + (f"; it must {rule}" if rule else ""))
    error.__cause__ = exc
    return error


def shown(value: Any) -> str:
    """A value as a message shows what a plugin returned: a tensor by dtype, shape and device; else its repr."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def blame(exc: BaseException) -> PluginError | None:
    """A :class:`PluginError` naming the plugin method ``exc`` was raised in, or ``None`` where no method of a
    problem or optimizer defined outside gdla's core is on its traceback (then it is not a plugin's)."""
    found: tuple[type, str] | None = None
    trace = exc.__traceback__
    while trace is not None:  # outermost first: the last match is the innermost
        culprit = _plugin_method(trace.tb_frame)
        if culprit is not None:
            found = culprit
        trace = trace.tb_next
    if found is None:
        return None
    return raised(found[0], found[1], exc)


def _plugin_method(frame: FrameType) -> tuple[type, str] | None:
    """``(class, method)`` where ``frame`` runs a plugin's method (its ``self`` or ``cls`` a problem or optimizer
    class, its code outside the ``gdla`` package), else ``None``."""
    module = str(frame.f_globals.get("__name__", ""))
    if module == "gdla" or module.startswith("gdla."):
        return None
    owner = frame.f_locals.get("self", frame.f_locals.get("cls"))
    cls = owner if isinstance(owner, type) else type(owner)
    if owner is None or not issubclass(cls, (Problem, Optimizer)):
        return None
    # a lambda or nested function is named by the method that made it: "Fit.least_squares.<locals>.<lambda>"
    parts = [part for part in getattr(frame.f_code, "co_qualname", frame.f_code.co_name).split(".") if part[:1] != "<"]
    return cls, parts[1] if len(parts) > 1 else frame.f_code.co_name


def _call(subject: Any, method: str, call: Callable[[], Any], rule: str = "") -> Any:
    """``call()``, with an exception other than gdla's own turned into the plugin's :class:`PluginError`."""
    try:
        return call()
    except GdlaError:
        raise
    except Exception as exc:
        raise raised(subject, method, exc, rule) from exc


# -- the checks ---------------------------------------------------------------------------------
def check_start(problem: Problem, seed: int = 0, *, as_run: bool = False) -> None:
    """Every rule of :mod:`gdla.plugin_checks` on ``problem`` at a starting point, once per instance, for a problem
    from outside gdla (:func:`built_in`: gdla's own are checked by their contract tests instead).

    Run on the caller's problem, whose methods are the plugin's own (the problem a method sees may be gdla's
    normalised wrapper of its declared form, or a normalised copy).

    Args:
        problem: the caller's problem.
        seed: the seed of the starting point the checks draw (``init_params`` with a generator of their own).
        as_run: whether the run solves ``problem`` itself (no normalised copy): only then is its residual, the
            stop test, required to be finite, and only for data of moderate size (:func:`moderate`); beyond,
            over- or underflow is the units' doing, not the plugin's.

    Raises:
        PluginError: a rule broken, or an exception raised by the plugin's code.
    """
    if _PASSED.get(id(problem)) is problem or built_in(type(problem)):
        return
    # the checks draw no random numbers from torch's generators, and a plugin that does leaves them as they were
    devices = [problem.device] if problem.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        params = _call(problem, "init_params", lambda: problem.init_params(torch.Generator().manual_seed(seed)))
        check_params(problem, params)
        loss = check_loss(problem, params)
        check_residual(problem, params, strict=as_run and math.isfinite(loss) and moderate(problem))
        check_solution(problem, _call(problem, "solution", lambda: problem.solution(params)))
        _check_declared_forms(problem, params, loss)
    _PASSED[id(problem)] = problem


def built_in(cls: type) -> bool:
    """Whether ``cls`` is one of gdla's own plugins (defined in its ``gdla_plugins`` package), whose rules their
    contract tests check: :func:`check_start` skips them, sparing a new problem's first solve a loss, a residual and
    the adjoint test's two products (at n = 1024 four matrix products, as many as two steps)."""
    return cls.__module__.split(".", 1)[0] == BUILT_IN_PACKAGE


def moderate(problem: Problem) -> bool:
    """Whether every floating tensor of ``problem``'s data has its largest entry between ``ε`` and ``1/ε`` of its
    dtype: products of a few of them then neither over- nor underflow, so a NaN figure is the code's."""
    for value in problem._data().values():
        info = torch.finfo(value.dtype)
        stored = value.detach()
        if stored.layout != torch.strided:  # sparse data: its stored entries (aten::max has no sparse kernel)
            stored = stored.to_sparse_coo().coalesce().values()
        top = float(full_tensor(stored.abs().max())) if stored.numel() else 0.0
        if not info.eps <= top <= 1 / info.eps:
            return False
    return True


def check_params(problem: Problem, params: Any) -> None:
    """``init_params``'s rule: a non-empty dict of floating tensors in the problem's dtype, on its device."""
    rule = f"return a dict of {problem.dtype} tensors on the problem's device {problem.device} (its data's)"
    if not isinstance(params, Mapping) or not params:
        raise broken(problem, "init_params", rule, shown(params))
    for name, value in params.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise broken(problem, "init_params", rule, f"{name!r}: {shown(value)}")
        if value.dtype != problem.dtype or value.device != problem.device:
            raise broken(problem, "init_params", rule, f"{name!r}: {shown(value)}")


def check_solution(problem: Problem, solution: Any) -> None:
    """``solution``'s rule: a tensor, or a tuple of tensors (what ``--save`` writes, :func:`gdla.io.save_matrix`)."""
    parts = solution if isinstance(solution, tuple) else (solution,)
    if not parts or not all(isinstance(part, torch.Tensor) for part in parts):
        what = f"a {type(solution).__name__}" if isinstance(solution, (list, dict)) else shown(solution)
        raise broken(problem, "solution", "return a tensor or a tuple of tensors (what --save writes)", what)


def _shapes(params: Params) -> str:
    return ", ".join(f"{name!r}: {tuple(value.shape)}" for name, value in params.items())


def check_loss(problem: Problem, params: Params) -> float:
    """``loss``'s rule at ``params``: a real scalar on the problem's device with an autograd graph; its value."""
    with torch.enable_grad():
        leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
        rule = f"accept the parameters init_params() returned ({_shapes(params)})"
        value = _call(problem, "loss", lambda: problem.loss(leaves), rule)
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
        raise broken(problem, "loss", "return a scalar tensor (a real number: the objective)", shown(value))
    if value.device.type != problem.device.type:
        raise broken(problem, "loss", f"return a tensor on the problem's device {problem.device}", shown(value))
    if value.grad_fn is None:
        rule = "be differentiable in the parameters (computed by torch operations on them, not through NumPy)"
        raise broken(problem, "loss", rule, f"{shown(value)} without an autograd graph (no grad_fn)")
    return float(value.detach())


def check_residual(problem: Problem, params: Params, *, strict: bool = True) -> None:
    """``residual``'s rule at ``params``: a real number ``>= 0``, and finite where ``strict``."""
    with torch.no_grad():
        value = _call(problem, "residual", lambda: problem.residual(params))
    number = real(value)
    if number is None:
        rule = "return a scalar tensor >= 0 (the relative residual: the stop test)"
        raise broken(problem, "residual", rule, shown(value))
    if number < 0 or (strict and not math.isfinite(number)):
        received = f"{number!r} (a negative residual would pass any tol)" if number < 0 else repr(number)
        raise broken(problem, "residual", "return a finite number >= 0 (the relative residual)", received)


def real(value: Any) -> float | None:
    """``value`` as a float where it is one real number (a one-entry real tensor, an ``int`` or a ``float``), else
    ``None``."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool or value.device.type == "meta":
            return None
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def checked_condition(problem: Problem) -> float | None:
    """``problem.condition_estimate()`` as a float (or ``None``); anything else is the plugin's :class:`PluginError`."""
    value = _call(problem, "condition_estimate", problem.condition_estimate)
    number = None if value is None else real(value)
    if value is not None and (number is None or number < 0):
        raise broken(problem, "condition_estimate", "return a number >= 1 or None", shown(value))
    return number


def checked_metrics(problem: Problem, figures: Any) -> dict[str, Any]:
    """``problem.metrics(params)``'s ``figures``, each a real number: a given one now, a deferred one (a
    zero-argument callable) when it is computed; anything else is the plugin's :class:`PluginError`."""
    if not isinstance(figures, Mapping):
        raise broken(problem, "metrics", "return a dict of figures {name: number}", shown(figures))

    def figure(key: str, value: Any) -> float:
        number = real(value)
        if number is None:
            rule = "return real numbers (or zero-argument callables that compute them)"
            raise broken(problem, "metrics", rule, f"{key!r}: {shown(value)}")
        return number

    def deferred(key: str, compute: Callable[[], Any]) -> Callable[[], float]:
        def read() -> float:
            try:
                value = compute()
            except GdlaError:
                raise
            except Exception as exc:  # named by the plugin method it was raised in (reference()...), else metrics()
                raise (blame(exc) or raised(problem, "metrics", exc, f"compute figure {key!r}")) from exc
            return figure(key, value)

        return read

    pairs = dict.items(figures) if isinstance(figures, dict) else figures.items()  # a Metrics' pending callables
    return {key: deferred(key, value) if callable(value) else figure(key, value) for key, value in pairs}


def _check_declared_forms(problem: Problem, params: Params, loss: float) -> None:
    """The declared least-squares form's adjoint, a declared sum of squares against the loss, and
    ``quadratic = True`` where no other structure is declared."""
    form = _call(problem, "least_squares", problem.least_squares)
    if form is not None:
        if not isinstance(form, LinearLeastSquares):
            raise broken(problem, "least_squares", "return a gdla.LinearLeastSquares or None", shown(form))
        check_adjoint(problem, form, params)
    squares = _call(problem, "sum_of_squares", problem.sum_of_squares)
    if squares is not None:
        if not isinstance(squares, SumOfSquares):
            raise broken(problem, "sum_of_squares", "return a gdla.SumOfSquares or None", shown(squares))
        _check_sum_of_squares(problem, squares, params, loss)
    quadratic = _call(problem, "quadratic", lambda: problem.quadratic)
    if form is None and quadratic is True and _call(problem, "matrix_inverse", problem.matrix_inverse) is None:
        check_quadratic(problem, params)


def tolerance(dtype: torch.dtype) -> float:
    """The relative disagreement two evaluations of one quantity may show in ``dtype``: ``√ε``."""
    return math.sqrt(torch.finfo(dtype).eps)


def _random_like(value: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random normal entries shaped and placed like ``value`` (dense; a DTensor's the same on every rank)."""
    dense = value.to_dense() if value.layout != torch.strided else value
    drawn = torch.randn(dense.shape, generator=generator, dtype=torch.float64)
    return distribute_like(drawn.to(dtype=dense.dtype, device=dense.device), dense)


def _dot(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``⟨a, b⟩`` and ``⟨|a|, |b|⟩`` (the size its rounding is relative to), in float64."""
    a, b = full_tensor(a).reshape(-1).double(), full_tensor(b).reshape(-1).double()
    return float(torch.dot(a, b)), float(torch.dot(a.abs(), b.abs()))


def _norm(a: torch.Tensor) -> float:
    return float(scaled_norm(a.double()))  # no underflow: the checks run in the caller's units


def check_adjoint(problem: Problem, form: LinearLeastSquares, params: Params) -> None:
    """The dot-product test of a declared ``least_squares()``: ``⟨J d, r⟩ = ⟨d, Jᵀ r⟩`` on random ``d``, ``r``
    (shaped like ``params[form.key]`` and ``form.rhs``), to :func:`tolerance` of ``⟨|J d|, |r|⟩ + ⟨|d|, |Jᵀ r|⟩``."""
    if form.key not in params:
        rule = f"name a parameter of init_params() ({', '.join(map(repr, params))}) as its key"
        raise broken(problem, "least_squares", rule, f"key={form.key!r}")
    x = params[form.key]
    generator = torch.Generator().manual_seed(0)
    d, r = _random_like(x, generator), _random_like(form.rhs, generator)
    with torch.no_grad():
        applied = _call(problem, "least_squares", lambda: form.apply(d), f"apply J to tensors shaped like {form.key!r}")
        adjoint = _call(problem, "least_squares", lambda: form.adjoint(r), "apply Jᵀ to tensors shaped like rhs")
    for what, value, like in (("apply", applied, form.rhs), ("adjoint", adjoint, x)):
        if not isinstance(value, torch.Tensor) or value.shape != like.shape:
            rule = f"give an {what} that returns tensors of shape {tuple(like.shape)}"
            raise broken(problem, "least_squares", rule, shown(value))
    (left, left_size), (right, right_size) = _dot(applied, r), _dot(d, adjoint)
    if not abs(left - right) <= tolerance(x.dtype) * (left_size + right_size):
        raise broken(
            problem, "least_squares", "give an adjoint that is the adjoint of apply (⟨J d, r⟩ = ⟨d, Jᵀ r⟩)",
            f"⟨J d, r⟩ = {left:.6g} but ⟨d, Jᵀ r⟩ = {right:.6g} on random d, r",
        )


def _check_sum_of_squares(problem: Problem, squares: SumOfSquares, params: Params, loss: float) -> None:
    """A declared sum-of-squares form reproduces the loss at ``params``."""
    with torch.no_grad():
        value = _call(problem, "sum_of_squares", lambda: squares.loss_of(squares.residuals(params)))
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise broken(problem, "sum_of_squares", "give a loss_of(residuals(params)) that is a scalar", shown(value))
    form_loss, info = float(value), torch.finfo(problem.dtype)
    slack = info.tiny / info.eps  # below it, losses are subnormal: their digits cannot be compared
    if math.isfinite(loss) and not abs(form_loss - loss) <= tolerance(problem.dtype) * abs(loss) + slack:
        raise broken(
            problem, "sum_of_squares", "reproduce loss(params) as loss_of(residuals(params))",
            f"{form_loss:.9g} where loss() gives {loss:.9g} at the starting point",
        )


def check_quadratic(problem: Problem, params: Params) -> None:
    """``quadratic = True``: the gradient is affine, ``g(p + 2d) − g(p) = 2 (g(p + d) − g(p))`` for a random ``d``,
    to :func:`tolerance` of the gradients' size."""
    generator = torch.Generator().manual_seed(0)
    direction = {name: _random_like(value, generator) for name, value in params.items()}

    def gradient(t: float) -> Params:
        moved = {name: value + t * direction[name] for name, value in params.items()}
        return _call(problem, "loss_and_grad", lambda: problem.loss_and_grad(moved, "autograd"))[1]

    g0, g1, g2 = gradient(0.0), gradient(1.0), gradient(2.0)
    if not all(bool(torch.isfinite(g[n]).all()) for g in (g0, g1, g2) for n in params):
        return  # data at the edge of the range: a probe that overflows tells nothing
    deviation = math.sqrt(sum(_norm(g2[n] - g0[n] - 2 * (g1[n] - g0[n])) ** 2 for n in params))
    size = math.sqrt(sum(_norm(g0[n]) ** 2 + _norm(g1[n]) ** 2 + _norm(g2[n]) ** 2 for n in params))
    if not deviation <= tolerance(problem.dtype) * size:
        raise PluginError(
            f"{describe(problem)}: quadratic = True declares a quadratic loss (an affine gradient), but "
            f"g(p + 2d) − g(p) differs from 2 (g(p + d) − g(p)) by {deviation / max(size, 1e-300):.3g} of the "
            "gradients' size at the starting point; declare quadratic = False (or None)"
        )
