"""The interface every optimizer plugin implements, and the adapter for ``torch.optim``.

An optimizer is built for one problem and one set of parameters and advances them one iteration
per :meth:`Optimizer.step`. Gradient methods subclass :class:`GradientOptimizer` and only say
which ``torch.optim.Optimizer`` to build; problem-aware solvers subclass :class:`Optimizer`.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from gdla.errors import InputError
from gdla.problem import Params, Problem
from gdla.schedules import make_schedule
from gdla.validation import check_positive

__all__ = ["GradientOptimizer", "Optimizer", "Suitability", "TestedRun"]


@dataclass(frozen=True)
class TestedRun:
    """What :meth:`Optimizer.run_tested` returns: each step's loss and the residual where the step left them."""

    losses: torch.Tensor
    residuals: torch.Tensor


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
    for methods without a learning rate) and ``default_max_steps``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    default_lr: ClassVar[float | None] = 1e-2
    default_max_steps: ClassVar[int] = 10_000
    #: Names of the attributes that carry the method's state from step to step (momentum buffers,
    #: previous directions...): what :meth:`state_dict` saves and :meth:`load_state_dict` restores.
    state_attributes: ClassVar[tuple[str, ...]] = ()
    #: The options the method accepts (name -> :class:`gdla.options.Option`): shown by
    #: ``gdla plugins --json`` and checked by ``gdla solve -o``; empty: not declared.
    options: ClassVar[dict[str, Any]] = {}
    #: How the learning rate scales with the data's units: ``"curvature"`` (a step ``lr · g`` that
    #: must stay below ``2/L``: gradient descent, momentum), ``"distance"`` (a step of about ``lr``
    #: in parameter units: Adam, Adagrad, RMSprop) or ``None`` (unit-free, or no learning rate).
    lr_units: ClassVar[str | None] = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Optimizer:
        """Check, before any subclass's ``__init__`` runs, that the dense matrices the method
        declares (:meth:`estimated_bytes`) fit in memory (:func:`gdla.memory.check_method_fits`).

        Raises:
            ResourceError: they would not fit; the message says which method to use instead.
        """
        problem = args[0] if args else kwargs.get("problem")
        params = args[1] if len(args) > 1 else kwargs.get("params")
        if isinstance(problem, Problem) and isinstance(params, dict):
            from gdla.memory import check_method_fits

            options = {key: value for key, value in kwargs.items() if key not in ("problem", "params", "lr", "backend")}
            check_method_fits(cls, problem, params, options)
        return super().__new__(cls)

    def __init__(
        self, problem: Problem, params: Params, *, lr: float | None = None, backend: str = "autograd", **options: Any
    ) -> None:
        reason = self.unsupported_reason(problem)
        if reason is not None:
            raise InputError(f"optimizer: {self.name!r} cannot solve problem {problem.name!r}: {reason}")
        self.problem = problem
        self.params = params
        self.backend = backend
        self.max_steps: int | None = options.pop("max_steps", None)
        if lr is None:
            lr = self.default_lr_for(problem)
        self.lr = None if lr is None else check_positive(lr, "lr")
        self.options = options

    @classmethod
    def unsupported_reason(cls, problem: Problem) -> str | None:
        """Why this optimizer cannot solve ``problem``, or ``None`` if it can."""
        return None

    @classmethod
    def estimated_bytes(cls, problem: Problem, params: Params, options: Mapping[str, Any]) -> int | None:
        """Bytes of the dense matrices this method would form on ``problem`` with ``options``, or ``None``.

        Declare it when the method allocates more than a few copies of the parameters (a
        Jacobian, a Gram matrix, an ``n × n`` factor): every optimizer is checked against the
        memory available before its constructor does any work, and one that would not fit is
        refused with a :class:`~gdla.errors.ResourceError` naming a method that fits. Default:
        ``None`` (only vectors the size of the parameters).

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
    def refuse_unknown_options(cls, options: Mapping[str, Any]) -> None:
        """Raise :class:`~gdla.errors.InputError` naming the ``options`` not in the declared :attr:`options`."""
        unknown = sorted(set(options) - set(cls.options) - {"max_steps"})
        if unknown:
            raise InputError(
                f"options: optimizer {cls.name!r} accepts {', '.join(repr(o) for o in cls.options)}, "
                f"received unknown {', '.join(repr(o) for o in unknown)}"
            )

    @classmethod
    def method_class(cls, problem: Problem) -> type[Optimizer]:
        """The class whose steps actually run on ``problem`` (``auto`` answers with its pick; default: ``cls``)."""
        return cls

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

        The default suits methods that evaluate ``problem.loss_and_grad``: fused exactly when the problem is.
        """
        return problem.fused_reason()

    @classmethod
    def default_lr_for(cls, problem: Problem) -> float | None:
        """Learning rate used when the caller gives none."""
        return cls.default_lr

    @abc.abstractmethod
    def step(self) -> torch.Tensor:
        """Advance ``self.params`` in place by one iteration; return the loss it evaluated."""

    def expected_steps(self, tol: float) -> float | None:
        """Estimated iterations to reach relative residual ``tol``, or ``None`` if unknown."""
        return None

    def steps_bound(self, tol: float) -> float | None:
        """A cheap upper bound on the iterations to reach ``tol`` (``None``: none known).

        :func:`gdla.solve` asks it before the costlier :meth:`expected_steps`, which it then skips
        when the bound already fits the budget.
        """
        return None

    @property
    def projects_in_run(self) -> bool:
        """Whether :meth:`run` applies the problem's :meth:`~gdla.Problem.project` after each of its steps
        (as a whole-run kernel for a problem whose declared fused loss includes its projection may); the loop
        then runs steps in bulk on a problem that needs projection. Default ``False``."""
        return False

    def run(self, steps: int) -> torch.Tensor | None:
        """Advance up to ``steps`` iterations in one call and return each one's loss, or ``None`` if it cannot.

        Optional: a method with a whole-run kernel implements it so that :func:`gdla.solve` need not
        return to Python between steps. It must give exactly what ``steps`` calls of :meth:`step`
        give (the same bits), and stop early after a step whose loss is not finite or exceeds
        ``gdla.stopping.BLOW_UP`` times the run's first loss, as the loop would. The loop calls it
        only when nothing needs to see the steps one by one (no callback, progress bar, residual
        test (see :meth:`run_tested`) or projection). Default: ``None`` (step by step).
        """
        return None

    def run_tested(self, steps: int, tol: float) -> TestedRun | None:
        """:meth:`run`, testing the problem's residual after every step itself; ``None`` if it cannot.

        Optional: for a method whose whole-run kernel finds the residual in what its steps compute
        anyway (a problem whose :class:`~gdla.capabilities.InverseMSE` declares a
        ``residual_factor``), so that runs with a tolerance need not return to Python between steps.
        It stops after the first step that leaves the residual ``<= tol``, or after a diverging step
        as :meth:`run` does, and returns each step's loss with the residual after it, which the loop
        then tests in place of :meth:`~gdla.Problem.residual`. Called one step at a time (as the loop
        does when a callback or a progress bar watches) it must give the same bits. Default: ``None``.
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


class GradientOptimizer(Optimizer):
    """An optimizer that feeds ``problem.loss_and_grad`` to a ``torch.optim.Optimizer``.

    Subclasses implement :meth:`build`. Options ``schedule`` (``"step"``, ``"multistep"``,
    ``"exponential"``, ``"cosine"``) and ``schedule_options`` (a dict) add a learning-rate schedule.
    """

    def __init__(
        self, problem: Problem, params: Params, *, lr: float | None = None, backend: str = "autograd", **options: Any
    ) -> None:
        schedule = options.pop("schedule", None)
        schedule_options = options.pop("schedule_options", None) or {}
        if not isinstance(schedule_options, Mapping):
            raise InputError(
                f"schedule_options: expected a mapping such as {{'gamma': 0.99}}, received {schedule_options!r}"
            )
        max_steps = options.pop("max_steps", None)
        super().__init__(problem, params, lr=lr, backend=backend, max_steps=max_steps, **options)
        self.torch_optimizer = self.build(list(params.values()), self.lr, **options)
        self.schedule = schedule
        self.scheduler = make_schedule(schedule, self.torch_optimizer, max_steps=self.max_steps, **schedule_options)

    @abc.abstractmethod
    def build(self, tensors: list[torch.Tensor], lr: float | None, **options: Any) -> torch.optim.Optimizer:
        """Return the ``torch.optim.Optimizer`` over ``tensors``; validate ``options`` here."""

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
        info.update({key: value for key, value in self.options.items() if isinstance(value, (int, float, str, bool))})
        if self.schedule is not None:
            info["schedule"] = self.schedule
        return info
