r"""The ``torch.optim`` methods as gdla optimizers: ``sgd``, ``adam``, ``adagrad``, ``rmsprop``, ``lbfgs``.

Each one is a row of declarations (:class:`TorchOptimizer`): the ``torch.optim`` class, the options
it accepts with a validator and a default each, and a rule for its default learning rate. Options
are checked once, against that schema and with gdla's wording, before torch sees them. ``sgd`` and
``adam`` also run whole runs in one kernel call under ``backend="fused"``
(:mod:`gdla_plugins.optimizers._whole_run`). The ``torch.optim`` classes are used through
:class:`EagerOptimizer`, which spares a fresh process the ``torch._dynamo`` import (1.5-2.5 s) that
torch's own guards make on first use; the steps are torch's, bit for bit.

Default learning rates come from a cheap probe of the problem at its starting point
(:func:`gdla_plugins.optimizers._scales.estimate_scales`): ``sgd`` uses ``lr = 1 / L``, ``momentum``
``0.5 / L``, the adaptive methods a multiple of the distance ``D`` a first step covers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar

import torch

import gdla
from gdla.errors import InputError
from gdla.optimizer import GradientOptimizer, Suitability
from gdla.options import Option, count, flag, optional_count
from gdla.problem import Problem
from gdla.validation import check_choice, check_nonnegative, check_positive, check_probability
from gdla_plugins.optimizers._scales import Scales, estimate_scales
from gdla_plugins.optimizers._whole_run import AdamWholeRun, SGDWholeRun

__all__ = [
    "SGD",
    "EagerOptimizer",
    "LBFGS",
    "Adagrad",
    "Adam",
    "Option",
    "RMSprop",
    "Scales",
    "TorchOptimizer",
    "estimate_scales",
]


# -- option validators: (value, name) -> the value torch receives ------------------------------
def unit_interval(value: Any, name: str) -> float:
    """A number in ``[0, 1)`` (momentum, averaging constants)."""
    return check_probability(value, name)


def betas(value: Any, name: str) -> tuple[float, float]:
    """A pair ``(beta1, beta2)`` of numbers in ``[0, 1)``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InputError(f"{name}: expected a pair (beta1, beta2) of numbers in [0, 1), received {value!r}")
    return (check_probability(value[0], f"{name}[0]"), check_probability(value[1], f"{name}[1]"))


def line_search(value: Any, name: str) -> str | None:
    """``"strong_wolfe"`` or ``None`` (the two line searches ``torch.optim.LBFGS`` knows)."""
    return check_choice(value, name, ("strong_wolfe", None))


# -- torch.optim without torch._dynamo --------------------------------------------------------------
def _dynamo_loaded() -> bool:
    return "torch._dynamo" in sys.modules


def _use_grad_code() -> Any:
    """The code of the wrapper ``torch.optim``'s ``@_use_grad_for_differentiable`` puts around ``step``
    (``None`` where this torch has no such decorator: then every step goes through torch's own path)."""
    try:
        from torch.optim.optimizer import _use_grad_for_differentiable
    except ImportError:
        return None
    return _use_grad_for_differentiable(lambda: None).__code__


_USE_GRAD = _use_grad_code()


def _torch_step(cls: type, unguarded: bool) -> Callable[..., Any]:
    """The ``step`` that ``cls`` (a ``torch.optim`` class) defines, without the profiler hook an earlier instance
    put on the class, and with ``unguarded`` also without its ``_use_grad`` wrapper where it has one
    (``LBFGS``'s is ``torch.no_grad``, which imports nothing)."""
    step = next(klass.__dict__["step"] for klass in cls.__mro__ if "step" in klass.__dict__)
    while getattr(step, "hooked", False):
        step = step.__wrapped__
    if unguarded and _USE_GRAD is not None and getattr(step, "__code__", None) is _USE_GRAD:
        return step.__wrapped__
    return step


class EagerOptimizer:
    """Mixin, before a ``torch.optim.Optimizer`` class in the bases: its methods without torch's dynamo guards.

    ``torch.optim`` wraps ``add_param_group`` (hence the constructor), ``state_dict``,
    ``load_state_dict``, ``zero_grad`` and each method's ``step`` in guards that import ``torch._dynamo`` on their
    first call (1.5-2.5 s in a fresh process) only to tell a ``torch.compile`` trace to leave them
    alone. While ``torch._dynamo`` is not loaded nothing is being traced, so the guards are the
    identity: these overrides call the guarded functions directly, with the grad mode ``step``'s guard
    sets (``defaults["differentiable"]``). Once ``torch._dynamo`` is loaded they call torch's own.
    Same steps, same bits; ``isinstance`` of the ``torch.optim`` class still holds.
    """

    defaults: dict[str, Any]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _unguarded(torch.optim.Optimizer.add_param_group)(self, param_group)

    def state_dict(self) -> dict[str, Any]:
        return _unguarded(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _unguarded(torch.optim.Optimizer.load_state_dict)(self, state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _unguarded(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        mro = type(self).__mro__
        torch_class = mro[mro.index(EagerOptimizer) + 1]
        guarded = _torch_step(torch_class, unguarded=False)
        plain = guarded if _dynamo_loaded() else _torch_step(torch_class, unguarded=True)
        if plain is guarded:
            return guarded(self, closure)
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return plain(self, closure)


def _unguarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (a ``torch.optim.Optimizer`` method under ``@torch._disable_dynamo``) without the guard while
    ``torch._dynamo`` is not loaded; the guarded method otherwise."""
    return method if _dynamo_loaded() else getattr(method, "__wrapped__", method)


class EagerSGD(EagerOptimizer, torch.optim.SGD):
    """``torch.optim.SGD`` behind :class:`EagerOptimizer`."""


class EagerAdam(EagerOptimizer, torch.optim.Adam):
    """``torch.optim.Adam`` behind :class:`EagerOptimizer`."""


class EagerAdagrad(EagerOptimizer, torch.optim.Adagrad):
    """``torch.optim.Adagrad`` behind :class:`EagerOptimizer`."""


class EagerRMSprop(EagerOptimizer, torch.optim.RMSprop):
    """``torch.optim.RMSprop`` behind :class:`EagerOptimizer`."""


class EagerLBFGS(EagerOptimizer, torch.optim.LBFGS):
    """``torch.optim.LBFGS`` behind :class:`EagerOptimizer`."""


# -- the shared adapter ---------------------------------------------------------------------------
class TorchOptimizer(GradientOptimizer):
    """A ``torch.optim.Optimizer`` declared by class attributes; subclasses are declarations.

    Class attributes: ``torch_class``; ``accepted`` (option name → :class:`Option`, the options
    torch receives; the schema :attr:`options` adds ``schedule`` and ``schedule_options``);
    ``lr_rule``, ``("inverse_lipschitz", c)`` for ``lr = c / L``, ``("distance", c)`` for
    ``lr = c · D``, or ``None`` for the fixed ``default_lr``; ``default_schedule``. Checks
    that involve several options go in :meth:`resolve`.
    """

    torch_class: ClassVar[type[torch.optim.Optimizer]]
    accepted: ClassVar[dict[str, Option]] = {}
    lr_rule: ClassVar[tuple[str, float] | None] = None
    #: Schedule used when the caller passes no ``schedule`` option (``schedule=None`` turns it off).
    default_schedule: ClassVar[str | None] = None
    #: A fixed step (and fixed momentum): its iteration count is predictable on quadratics.
    fixed_step: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # the declared schema: the torch options, plus the schedule every gradient method takes
        cls.options = {
            **cls.accepted,
            "schedule": Option(
                default=cls.default_schedule, doc="learning-rate schedule: step, multistep, exponential, cosine"
            ),
            "schedule_options": Option(default=None, doc="the schedule's options, e.g. {'gamma': 0.99}"),
        }

    @classmethod
    def default_lr_for(cls, problem: Problem) -> float | None:
        if cls.lr_rule is None:
            return cls.default_lr
        kind, factor = cls.lr_rule
        scales = estimate_scales(problem, distance=kind == "distance")
        if scales is None:
            return cls.default_lr
        if kind == "inverse_lipschitz":
            return factor / scales.lipschitz
        return cls.default_lr if scales.distance is None else factor * scales.distance

    def build(self, tensors: list[torch.Tensor], lr: float | None, **options: Any) -> torch.optim.Optimizer:
        """``torch_class`` over ``tensors`` with the declared options (checked), after :meth:`resolve`."""
        self.resolve(options)
        self.options.update(options)  # with what resolve derived, for describe()
        return self.torch_class(tensors, lr=lr, **options)

    def expected_steps(self, tol: float) -> float | None:
        """Iterations a fixed-step method needs on a quadratic loss, from its Hessian's extremes."""
        if not self.fixed_step or self.scheduler is not None or self.lr is None:
            return None
        if any(self.options.get(key) for key in ("nesterov", "dampening", "weight_decay")):
            return None
        from gdla_plugins.optimizers._spectral import fixed_step_expected_steps

        return fixed_step_expected_steps(self.problem, self.params, self.lr, self.options.get("momentum", 0.0), tol)

    def resolve(self, settings: dict[str, Any]) -> None:
        """Check ``settings`` (the torch options) against each other and fill defaults derived from others
        (default: nothing)."""

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "lr": self.lr}
        info.update({key: list(v) if isinstance(v, tuple) else v for key, v in self.options.items()
                     if key in self.accepted})
        if self.schedule is not None:
            info["schedule"] = self.schedule
        return info


_WEIGHT_DECAY = Option(check_nonnegative, 0.0)
_EPS = Option(check_positive, 1e-8)


class SGD(SGDWholeRun, TorchOptimizer):
    r"""``torch.optim.SGD``: :math:`v \leftarrow \mu v + (1 - \tau) g`, :math:`x \leftarrow x - \mathrm{lr}\, v`.

    ``μ`` is ``momentum``, ``τ`` ``dampening``. Default ``lr = 1 / L`` (see the module docstring),
    no momentum. Under ``backend="fused"`` the SVD penalty and masked-operator losses run whole runs
    in one kernel call (:class:`~gdla_plugins.optimizers._whole_run.SGDWholeRun`).
    """

    name = "sgd"
    summary = "torch.optim.SGD: gradient descent, optional (Nesterov) momentum; default lr 1/L from a curvature probe"
    default_lr = 1e-2
    torch_class = EagerSGD
    fixed_step = True
    accepted = {
        "momentum": Option(unit_interval, 0.0),
        "dampening": Option(unit_interval, 0.0),
        "nesterov": Option(flag, False),
        "weight_decay": _WEIGHT_DECAY,
    }
    lr_rule = ("inverse_lipschitz", 1.0)
    lr_units = "curvature"

    def resolve(self, settings: dict[str, Any]) -> None:
        if settings["nesterov"] and (settings["momentum"] == 0 or settings["dampening"] != 0):
            raise InputError(
                "nesterov: expected momentum > 0 and dampening = 0 with nesterov=True, received "
                f"momentum={settings['momentum']!r}, dampening={settings['dampening']!r}"
            )


class Adam(AdamWholeRun, TorchOptimizer):
    """``torch.optim.Adam`` (seed 003's method), by default with ``schedule="exponential"`` (``gamma=0.999``).

    Default ``lr = D``: the first steps move each entry by about ``D``. Once the gradients
    vanish, Adam's bias-corrected second moment decays like ``1 / t`` and its effective step
    grows like ``sqrt(t)`` until the iterate is thrown off the minimiser (a 16×16 inverse at
    ``lr = D`` and a constant rate: loss 4e-11 after 200 steps, then back up, and stalled at a
    relative error of 2e-2). The exponential decay outpaces that growth; pass ``schedule=None``
    for torch's constant rate, or ``schedule="multistep"`` for seed 003's 0.05 → 0.025 → 0.01
    (with ``lr=0.05``).
    """

    name = "adam"
    summary = "torch.optim.Adam (seed 003's method), exponential lr decay by default; lr from the problem's scale"
    default_lr = 1e-2
    torch_class = EagerAdam
    accepted = {
        "betas": Option(betas, (0.9, 0.999)),
        "eps": _EPS,
        "weight_decay": _WEIGHT_DECAY,
        "amsgrad": Option(flag, False),
    }
    lr_rule = ("distance", 1.0)
    lr_units = "distance"
    default_schedule = "exponential"

    @classmethod
    def suitability(cls, problem: Problem) -> Suitability | None:
        return Suitability(90, "nonlinear loss: adam, the first-order fallback")


class Adagrad(TorchOptimizer):
    """``torch.optim.Adagrad`` (seed 004's method). Default ``lr = 3 D``.

    Its first step moves every entry by exactly ``lr``; as the squared gradients accumulate the
    step settles to plain gradient descent with a per-entry rate, so it converges without a schedule.
    """

    name = "adagrad"
    summary = "torch.optim.Adagrad: per-entry rates from accumulated squared gradients (seed 004's method)"
    default_lr = 0.1
    torch_class = EagerAdagrad
    accepted = {
        "lr_decay": Option(check_nonnegative, 0.0),
        "eps": Option(check_positive, 1e-10),
        "initial_accumulator_value": Option(check_nonnegative, 0.0),
        "weight_decay": _WEIGHT_DECAY,
    }
    lr_rule = ("distance", 3.0)
    lr_units = "distance"


class RMSprop(TorchOptimizer):
    """``torch.optim.RMSprop`` with defaults fit for deterministic problems: ``alpha=0.999``, ``momentum=0.9``.

    With torch's defaults (``alpha=0.99``, no momentum) the step stays about ``lr`` long however
    small the gradient gets, so the iterate circles the minimiser at a distance proportional to
    ``lr`` (on a 16×16 inverse: residual 4e-3 after 10,000 steps at ``lr=1e-3``, 4e-2 at
    ``1e-2``). The longer average and momentum let it converge like Adam. Its first step is
    ``lr / sqrt(1 - alpha)`` per entry, hence the default ``lr = 0.02 D ≈ D sqrt(1 - 0.999) / 1.6``.
    """

    name = "rmsprop"
    summary = "torch.optim.RMSprop (alpha 0.999, momentum 0.9 by default, so it converges on deterministic losses)"
    default_lr = 1e-3
    torch_class = EagerRMSprop
    accepted = {
        "alpha": Option(unit_interval, 0.999),
        "eps": _EPS,
        "momentum": Option(unit_interval, 0.9),
        "centered": Option(flag, False),
        "weight_decay": _WEIGHT_DECAY,
    }
    lr_rule = ("distance", 0.02)
    lr_units = "distance"


#: Loss evaluations per L-BFGS iteration allowed by default (the first plus the line search's).
LINE_SEARCH_EVALS = 25


class LBFGS(TorchOptimizer):
    """``torch.optim.LBFGS``; one gdla step is ``max_iter`` L-BFGS iterations (default 1).

    With the default ``line_search_fn="strong_wolfe"`` the line search chooses each step length
    and ``lr`` (default 1) only scales its first trial; with ``line_search_fn=None`` every step
    has length ``lr``. ``max_eval`` (loss evaluations per step) defaults to ``25 * max_iter``:
    torch's default, ``max_iter * 5 // 4``, leaves a one-iteration step no evaluation for the
    line search, which then refuses every step that does not lower the loss outright and the
    run freezes. torch's own stop tests (``tolerance_grad``, ``tolerance_change``) default
    to 0 here so that gdla's stop rules decide: torch's ``tolerance_grad=1e-7`` would freeze a
    mean-squared loss long before a float64 tolerance. Fixed limits remain inside torch: its
    line search gives up on steps shorter than 1e-9 and curvature pairs with ``y·s <= 1e-10``
    are skipped, so on a badly scaled problem progress can end near a relative residual of
    1e-9 (the 4×4 ``inverse`` example, condition 19: stalled at 3e-10). A learning-rate
    ``schedule`` is refused with the line search, whose steps it would not control.
    """

    name = "lbfgs"
    summary = "torch.optim.LBFGS with a strong-Wolfe line search; one gdla step = max_iter (1) L-BFGS iterations"
    default_lr = 1.0
    torch_class = EagerLBFGS
    accepted = {
        "history_size": Option(count, 20),
        "line_search_fn": Option(line_search, "strong_wolfe"),
        "max_iter": Option(count, 1),
        "max_eval": Option(optional_count, None),
        "tolerance_grad": Option(check_nonnegative, 0.0),
        "tolerance_change": Option(check_nonnegative, 0.0),
    }

    def resolve(self, settings: dict[str, Any]) -> None:
        schedule = self.options["schedule"]
        if schedule not in (None, "none") and settings["line_search_fn"] is not None:
            raise InputError(
                f"schedule: optimizer 'lbfgs' with line_search_fn='strong_wolfe' chooses each step length "
                f"itself, so a learning-rate schedule cannot act on it; received schedule={schedule!r}: "
                "drop the schedule or pass line_search_fn=None"
            )
        if settings["max_eval"] is None:
            settings["max_eval"] = LINE_SEARCH_EVALS * settings["max_iter"]
        elif settings["max_eval"] <= settings["max_iter"]:
            raise InputError(
                f"max_eval: expected more loss evaluations than max_iter={settings['max_iter']} "
                f"(the line search needs some), received {settings['max_eval']}"
            )

    @classmethod
    def suitability(cls, problem: Problem) -> Suitability | None:
        memory = problem.quasi_newton_memory
        return Suitability(
            60,
            "nonlinear loss: L-BFGS with a strong-Wolfe line search converged fastest in measurements"
            + (f" ({memory} curvature pairs, as the problem advises)" if memory else ""),
            {"history_size": memory} if memory else {},
        )


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    for cls in (SGD, Adam, Adagrad, RMSprop, LBFGS):
        register(cls)
