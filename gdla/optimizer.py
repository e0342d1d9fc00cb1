"""The interface every optimizer plugin implements, and the adapter for ``torch.optim``.

An optimizer is built for one problem and one set of parameters and advances them one iteration
per :meth:`Optimizer.step`; :meth:`Optimizer.advance` is what :func:`gdla.solve` calls: up to
``steps`` steps under the stop rules, one by default, many in one call where a method has a
whole-run kernel. Gradient methods subclass :class:`GradientOptimizer` and only say which
``torch.optim.Optimizer`` to build; problem-aware solvers subclass :class:`Optimizer`.
"""

from __future__ import annotations

import abc
import copy
import math
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from gdla.errors import InputError, PluginError
from gdla.options import resolve
from gdla.problem import Params, Problem
from gdla.schedules import make_schedule
from gdla.validation import check_positive

__all__ = ["GradientOptimizer", "Optimizer", "Stretch", "Suitability", "TestedRun"]


@dataclass(frozen=True)
class Stretch:
    """What :meth:`Optimizer.advance` returns: each step's loss, and the residual after each step where the
    optimizer tested it."""

    losses: torch.Tensor  # shape: (steps,), one entry per step taken (at least one)
    residuals: torch.Tensor | None = None  # shape: (steps,), or None


#: Deprecated: what the old :meth:`Optimizer.run_tested` returned; now a :class:`Stretch` with residuals.
TestedRun = Stretch


@dataclass(frozen=True)
class Suitability:
    """How well an optimizer fits a problem, as :meth:`Optimizer.suitability` declares it for ``auto``.

    Attributes:
        rank: lower is preferred. Bands: 0-19 a direct method for the problem's declared structure
            (Newton-Schulz on a matrix inverse), 20-39 exact least-squares methods (CG), 40-59
            second-order methods on residuals or manifolds, 60-79 quasi-Newton on any smooth loss,
            80-99 first-order fallbacks.
        reason: one sentence saying why, shown in ``Result.settings["optimizer.reason"]``.
        options: options ``auto`` passes to the optimizer unless the caller set them.
    """

    rank: int
    reason: str
    options: dict[str, Any] = field(default_factory=dict)


class Optimizer(abc.ABC):
    """Base class of an optimizer plugin.

    Class attributes: ``name`` (registry name), ``summary`` (one line), ``default_lr`` (``None``
    for methods without a learning rate: an ``lr`` is then refused) and ``default_max_steps``.
    Built as ``Optimizer(problem, params, *, lr=None, backend="autograd", max_steps=None, **options)``;
    ``self.options`` then holds every declared option (:attr:`options`), given or defaulted, checked.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    default_lr: ClassVar[float | None] = 1e-2
    default_max_steps: ClassVar[int] = 10_000
    #: Names of the attributes that carry the method's state from step to step (momentum buffers,
    #: previous directions...): what :meth:`state_dict` saves and :meth:`load_state_dict` restores.
    state_attributes: ClassVar[tuple[str, ...]] = ()
    #: The options the method accepts (name -> :class:`gdla.options.Option`, with its validator and
    #: default): checked once when built (:func:`gdla.options.resolve`), shown by ``gdla plugins --json``,
    #: checked by ``gdla solve -o``; empty: not declared, the constructor takes what it is given.
    options: ClassVar[dict[str, Any]] = {}
    #: How the learning rate scales with the data's units: ``"curvature"`` (a step ``lr · g`` that
    #: must stay below ``2/L``: gradient descent, momentum), ``"distance"`` (a step of about ``lr``
    #: in parameter units: Adam, Adagrad, RMSprop) or ``None`` (unit-free, or no learning rate).
    lr_units: ClassVar[str | None] = None
    #: Why the method has no fused path whatever the problem (it computes in plain tensor algebra),
    #: as the end of a sentence after its quoted name; ``None``: fused exactly when the problem is.
    kernel_free: ClassVar[str | None] = None
    #: The loss at the current parameters where the method's last call already evaluated it there (a whole-run
    #: kernel's final pass), else ``None``: the report then computes the loss at the answer only when
    #: ``Result.losses`` is first read. A method that sets it must reset it to ``None`` whenever it moves the
    #: parameters without evaluating the loss at the new point.
    final_loss: float | None = None

    def __init__(
        self,
        problem: Problem,
        params: Params,
        *,
        lr: float | None = None,
        backend: str = "autograd",
        max_steps: int | None = None,
        **options: Any,
    ) -> None:
        if lr is not None and self.default_lr is None:
            raise InputError(
                f"lr: optimizer {self.name!r} has no learning rate (it sizes its steps itself), received {lr!r}; "
                "leave it out"
            )
        reason = self.unsupported_reason(problem)
        if reason is not None:
            raise InputError(f"optimizer: {self.name!r} cannot solve problem {problem.name!r}: {reason}")
        self.problem = problem
        self.params = params
        self.backend = backend
        self.max_steps = max_steps
        self.options = resolve("optimizer", self.name, type(self).options, options)
        if lr is None:
            lr = self.default_lr_for(problem)
        self.lr = None if lr is None else check_positive(lr, "lr")

    @classmethod
    def unsupported_reason(cls, problem: Problem) -> str | None:
        """Why this optimizer cannot solve ``problem``, or ``None`` if it can."""
        return None

    @classmethod
    def starting_point(cls, problem: Problem, options: Mapping[str, Any]) -> Params | None:
        """The start this method computes for itself (Newton-Schulz's safe start), where the problem's own
        ``init_params`` draw would only be overwritten: the plan then draws none. ``None`` (the default): the
        problem's start. Not asked when the caller gives ``init``."""
        return None

    @classmethod
    def estimated_bytes(cls, problem: Problem, params: Params, options: Mapping[str, Any]) -> int | None:
        """Bytes of the dense matrices this method would form on ``problem`` with ``options``, or ``None``.

        Declare it when the method allocates more than a few copies of the parameters (a
        Jacobian, a Gram matrix, an ``n × n`` factor): the run plan checks the chosen method
        against the memory available before building it (:func:`gdla.memory.check_method_fits`),
        and one that would not fit is refused with a :class:`~gdla.errors.ResourceError` naming a
        method that fits. Default: ``None`` (only vectors the size of the parameters).

        Args:
            problem: the problem to solve.
            params: its starting parameters (their sizes are the unknowns; do not change them).
            options: the options the method would be built with (unvalidated: return ``None`` for
                ones it cannot read, the constructor reports them).
        """
        return None

    @classmethod
    def suitability(cls, problem: Problem) -> Suitability | None:
        """How well this method fits ``problem`` (``None``: ``auto`` never picks it).

        Decided from the problem's declared capabilities (``least_squares()``, ``matrix_inverse()``...)
        only, never from its name.
        """
        return None

    @classmethod
    def in_normalized_units(
        cls, lr: float | None, options: dict[str, Any], param_exponent: int, loss_exponent: int
    ) -> tuple[float | None, dict[str, Any]]:
        """``lr`` and ``options`` given in the data's units, converted for a problem normalised by
        parameters ``· 2^param_exponent`` and loss ``· 2^loss_exponent`` (exact powers of two).

        Gradients scale by ``2^(j − p)``, curvatures by ``2^(j − 2p)``: a curvature-limited ``lr``
        becomes ``lr · 2^(2p − j)`` and a distance-like one ``lr · 2^p``, so every step is the
        original one times ``2^p``. Override for options in data units (``heavy-ball``'s ``L``).
        """
        if lr is None or cls.lr_units is None:
            return lr, options
        shift = 2 * param_exponent - loss_exponent if cls.lr_units == "curvature" else param_exponent
        return math.ldexp(lr, shift), options

    @classmethod
    def fused_reason(cls, problem: Problem, options: Mapping[str, Any]) -> str | None:
        """Why this method, run with ``options`` on ``problem``, has no fused path; ``None`` if it has one.

        The default: :attr:`kernel_free`'s sentence where the method declares one, else the problem's
        answer (right for methods that evaluate ``problem.loss_and_grad``: fused exactly when the problem
        is). Override where the answer depends on the options.
        """
        if cls.kernel_free is not None:
            return f"{cls.name!r} {cls.kernel_free}"
        return problem.fused_reason()

    @classmethod
    def default_lr_for(cls, problem: Problem) -> float | None:
        """Learning rate used when the caller gives none."""
        return cls.default_lr

    @abc.abstractmethod
    def step(self) -> torch.Tensor:
        """Advance ``self.params`` in place by one iteration; return the loss it evaluated."""

    def advance(self, steps: int, tol: float = 0.0) -> Stretch:
        """Take between 1 and ``steps`` steps, applying the problem's projection after each; their losses.

        Stops early after a step whose loss is not finite or exceeds ``gdla.stopping.BLOW_UP`` times
        the run's first loss. With ``tol > 0`` it either tests the residual after every step itself
        (returning ``residuals``) and stops after the first one ``<= tol``, or takes exactly one step
        and returns ``residuals=None`` (the loop then asks the problem). With ``tol == 0`` it may run
        all ``steps``. ``advance(n)`` must give the same bits as ``n`` calls of ``advance(1)``.

        Default: one :meth:`step` (its loss checked to be a scalar), then the projection. A method
        with a whole-run kernel overrides this to run many steps in one call.

        Raises:
            PluginError: :meth:`step` returned something other than a scalar loss.
        """
        legacy = self._legacy_stretch(steps, tol)
        if legacy is not None:
            return legacy
        value = _loss_value(self.step(), self)
        if self.problem.needs_projection():
            self.problem.project(self.params)
        return Stretch(losses=torch.from_numpy(np.array([value])))  # float64 on the CPU, the cheapest to build

    def expected_steps(self, tol: float) -> float | None:
        """Estimated iterations to reach relative residual ``tol``, or ``None`` if unknown.

        Asked before the run (the advice when the budget looks too small): where a cheap bound
        already fits the budget (``self.max_steps``), returning it spares a costlier estimate.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts about this run's settings (and choices made, for ``auto``)."""
        return {"name": self.name, "lr": self.lr}

    def state_dict(self) -> dict[str, Any]:
        """A copy of the state that carries from step to step (see :attr:`state_attributes`).

        An optimizer built on the same problem and on parameters equal to this one's, given this
        state through :meth:`load_state_dict`, continues with exactly the same steps.
        """
        return {key: copy.deepcopy(getattr(self, key)) for key in self.state_attributes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; a missing or unknown entry is an :class:`~gdla.errors.InputError`."""
        if not isinstance(state, Mapping) or set(state) != set(self.state_attributes):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise InputError(
                f"state: optimizer {self.name!r} expected a state_dict with entries {sorted(self.state_attributes)}, "
                f"received {got}"
            )
        for key in self.state_attributes:
            setattr(self, key, copy.deepcopy(state[key]))

    # -- deprecated: the protocol before advance() ----------------------------------------------
    @classmethod
    def refuse_unknown_options(cls, options: Mapping[str, Any]) -> None:
        """Deprecated: the base constructor checks the declared :attr:`options` (:func:`gdla.options.resolve`)."""
        resolve("optimizer", cls.name, cls.options, {k: v for k, v in options.items() if k != "max_steps"})

    @property
    def projects_in_run(self) -> bool:
        """Deprecated (see :meth:`advance`): whether an old-style :meth:`run` applies the problem's projection."""
        return False

    def run(self, steps: int) -> torch.Tensor | None:
        """Deprecated: implement :meth:`advance`. Up to ``steps`` steps' losses, or ``None`` (default)."""
        return None

    def run_tested(self, steps: int, tol: float) -> Stretch | None:
        """Deprecated: implement :meth:`advance`. :meth:`run` with the residual test, or ``None`` (default)."""
        return None

    def _legacy_stretch(self, steps: int, tol: float) -> Stretch | None:
        """:meth:`advance` through an old-style :meth:`run`/:meth:`run_tested` override, under their old rules
        (``run`` without a tolerance, where the projection is not needed or it applies it; ``run_tested``
        with one); ``None`` where the class overrides neither or they decline (then: one step)."""
        cls = type(self)
        runs = cls.run is not Optimizer.run
        tests = cls.run_tested is not Optimizer.run_tested
        if not (runs or tests):
            return None
        _warn_legacy(cls)
        unprojected = self.problem.needs_projection() and not self.projects_in_run
        if tol > 0:
            tested = self.run_tested(1 if unprojected else steps, tol) if tests else None
            if tested is None:
                return None
            if unprojected:
                self.problem.project(self.params)
            return Stretch(tested.losses, tested.residuals)
        losses = self.run(steps) if runs and not unprojected else None
        return None if losses is None else Stretch(losses)


_WARNED: weakref.WeakSet[type] = weakref.WeakSet()


def _warn_legacy(cls: type[Optimizer]) -> None:
    """One :class:`DeprecationWarning` per class that still implements ``run``/``run_tested``."""
    if cls in _WARNED:
        return
    _WARNED.add(cls)
    warnings.warn(
        f"optimizer {cls.name!r} ({cls.__module__}.{cls.__qualname__}) implements run()/run_tested(), which are "
        "deprecated: implement advance(steps, tol) instead (see gdla.Optimizer.advance)",
        DeprecationWarning,
        stacklevel=4,
    )


def _loss_value(value: Any, opt: Optimizer) -> float:
    """A step's loss as a float, or a :class:`PluginError` naming whose rule was broken."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        if not value.is_complex() and value.device.type != "meta":  # what float() reads: a real number, here
            return float(value)
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return float(value)
    shape = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
    cls = type(opt)
    raise PluginError(
        f"optimizer {opt.name!r} ({cls.__module__}.{cls.__qualname__}): step() must return the loss it evaluated "
        f"as a scalar tensor, returned {shape} (problem {opt.problem.name!r})"
    )


class GradientOptimizer(Optimizer):
    """An optimizer that feeds ``problem.loss_and_grad`` to a ``torch.optim.Optimizer``.

    Subclasses implement :meth:`build`. Options ``schedule`` (``"step"``, ``"multistep"``,
    ``"exponential"``, ``"cosine"``) and ``schedule_options`` (a dict) add a learning-rate schedule;
    the other options go to :meth:`build`.
    """

    def __init__(self, problem: Problem, params: Params, **options: Any) -> None:
        """See :class:`Optimizer` (``lr``, ``backend``, ``max_steps`` and the options travel in ``options``)."""
        super().__init__(problem, params, **options)
        torch_options = dict(self.options)
        schedule = torch_options.pop("schedule", None)
        schedule_options = torch_options.pop("schedule_options", None) or {}
        if not isinstance(schedule_options, Mapping):
            raise InputError(
                f"schedule_options: expected a mapping such as {{'gamma': 0.99}}, received {schedule_options!r}"
            )
        self.torch_optimizer = self.build(list(params.values()), self.lr, **torch_options)
        self.schedule = schedule
        self.scheduler = make_schedule(schedule, self.torch_optimizer, max_steps=self.max_steps, **schedule_options)

    @abc.abstractmethod
    def build(self, tensors: list[torch.Tensor], lr: float | None, **options: Any) -> torch.optim.Optimizer:
        """Return the ``torch.optim.Optimizer`` over ``tensors``; validate undeclared ``options`` here."""

    def _closure(self) -> torch.Tensor:
        loss, grads = self.problem.loss_and_grad(self.params, self.backend)
        for key, tensor in self.params.items():
            tensor.grad = grads[key]
        return loss

    def step(self) -> torch.Tensor:
        loss = self.torch_optimizer.step(self._closure)
        if self.scheduler is not None:
            self.scheduler.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The ``torch.optim`` state (and the schedule's), plus any :attr:`state_attributes`."""
        state = super().state_dict()
        state["torch_optimizer"] = copy.deepcopy(self.torch_optimizer.state_dict())
        state["scheduler"] = None if self.scheduler is None else copy.deepcopy(self.scheduler.state_dict())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or "torch_optimizer" not in state or "scheduler" not in state:
            raise InputError(
                f"state: optimizer {self.name!r} expected a state_dict with 'torch_optimizer' and 'scheduler' "
                f"entries, received {sorted(state) if isinstance(state, Mapping) else type(state).__name__}"
            )
        own = {key: value for key, value in state.items() if key not in ("torch_optimizer", "scheduler")}
        super().load_state_dict(own)
        saved = copy.deepcopy(state["torch_optimizer"])
        self.torch_optimizer.load_state_dict(saved)
        # torch casts floating state to the parameters' dtype on load (NAdam's float32 mu_product
        # becomes float64), which changes later bits: put the saved tensors back as they were
        ordered = [param for group in self.torch_optimizer.param_groups for param in group["params"]]
        for index, value in saved["state"].items():
            self.torch_optimizer.state[ordered[index]] = copy.deepcopy(value)
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            {
                key: value
                for key, value in self.options.items()
                if key not in ("schedule", "schedule_options") and isinstance(value, (int, float, str, bool))
            }
        )
        if self.schedule is not None:
            info["schedule"] = self.schedule
        return info
