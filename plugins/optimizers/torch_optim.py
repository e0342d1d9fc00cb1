r"""The ``torch.optim`` methods as gdla optimizers: ``sgd``, ``adam``, ``adagrad``, ``rmsprop``, ``lbfgs``.

Each one is a row of declarations (:class:`TorchOptimizer`): the ``torch.optim`` class, the options
it accepts with a validator and a default each, and a rule for its default learning rate. Options
are checked here, with gdla's wording, before torch sees them.

Default learning rates come from a cheap probe of the problem at its starting point
(:func:`gdla_plugins.optimizers._scales.estimate_scales`): ``sgd`` uses ``lr = 1 / L``, ``momentum``
``0.5 / L``, the adaptive methods a multiple of the distance ``D`` a first step covers.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

import gdla
from gdla.capabilities import InverseMSE, MaskedOperatorLoss, SvdPenaltyLoss
from gdla.errors import InputError
from gdla.optimizer import GradientOptimizer, Suitability, TestedRun
from gdla.options import Option
from gdla.problem import Params, Problem
from gdla.stopping import BLOW_UP
from gdla.validation import check_choice, check_int, check_nonnegative, check_positive, check_probability
from gdla_plugins.optimizers._scales import Scales, estimate_scales

__all__ = [
    "SGD",
    "LBFGS",
    "Adagrad",
    "Adam",
    "Option",
    "RMSprop",
    "Scales",
    "TorchOptimizer",
    "estimate_scales",
    "validate_options",
]

#: Options every gradient optimizer takes besides its own (handled by :class:`~gdla.GradientOptimizer`).
COMMON_OPTIONS = ("schedule", "schedule_options")


# -- option validators: (value, name) -> the value torch receives ------------------------------
def flag(value: Any, name: str) -> bool:
    """A boolean (not a number that happens to be 0 or 1)."""
    if not isinstance(value, bool):
        raise InputError(f"{name}: expected True or False, received {value!r}")
    return value


def unit_interval(value: Any, name: str) -> float:
    """A number in ``[0, 1)`` (momentum, averaging constants)."""
    return check_probability(value, name)


def count(value: Any, name: str) -> int:
    """An integer >= 1."""
    return check_int(value, name, minimum=1)


def betas(value: Any, name: str) -> tuple[float, float]:
    """A pair ``(beta1, beta2)`` of numbers in ``[0, 1)``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InputError(f"{name}: expected a pair (beta1, beta2) of numbers in [0, 1), received {value!r}")
    return (check_probability(value[0], f"{name}[0]"), check_probability(value[1], f"{name}[1]"))


def optional_count(value: Any, name: str) -> int | None:
    """``None`` or an integer >= 1."""
    return None if value is None else count(value, name)


def line_search(value: Any, name: str) -> str | None:
    """``"strong_wolfe"`` or ``None`` (the two line searches ``torch.optim.LBFGS`` knows)."""
    return check_choice(value, name, ("strong_wolfe", None))


def validate_options(optimizer: str, accepted: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Return every option of ``accepted``, validated, with defaults filled in.

    Raises:
        InputError: for an unknown option name (listing the accepted ones) or an invalid value.
    """
    for key in given:
        if key not in accepted:
            names = sorted(accepted) + list(COMMON_OPTIONS)
            hint = difflib.get_close_matches(str(key), names, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise InputError(
                f"{key}: optimizer {optimizer!r} has no option {key!r}{suggestion}; "
                f"accepted options: lr, max_steps, {', '.join(names)}"
            )
    return {key: option.check(given.get(key, option.default), key) for key, option in accepted.items()}


# -- the shared adapter ---------------------------------------------------------------------------
class TorchOptimizer(GradientOptimizer):
    """A ``torch.optim.Optimizer`` declared by class attributes; subclasses are declarations.

    Class attributes: ``torch_class``; ``accepted`` (option name → :class:`Option`);
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
    #: Whether :meth:`run` takes ``stop_loss`` (the inverse whole-run kernels' residual test), for :meth:`run_tested`.
    runs_tested: ClassVar[bool] = False
    #: The declared loss a whole-run kernel serves in this run (set by subclasses that have one), else ``None``.
    _whole_run: Any = None

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

    def __init__(self, problem: Problem, params: Params, **options: Any) -> None:
        if self.default_schedule is not None and "schedule" not in options:
            options["schedule"] = self.default_schedule
        self._first_loss = math.nan  # see run_scheduled
        super().__init__(problem, params, **options)

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
        self.settings = validate_options(self.name, self.accepted, options)
        self.resolve(self.settings)
        return self.torch_class(tensors, lr=lr, **self.settings)

    def expected_steps(self, tol: float) -> float | None:
        """Iterations a fixed-step method needs on a quadratic loss, from its Hessian's extremes."""
        if not self.fixed_step or self.scheduler is not None or self.lr is None:
            return None
        if any(self.settings.get(key) for key in ("nesterov", "dampening", "weight_decay")):
            return None
        from gdla_plugins.optimizers._spectral import fixed_step_expected_steps

        return fixed_step_expected_steps(self.problem, self.params, self.lr, self.settings.get("momentum", 0.0), tol)

    def resolve(self, settings: dict[str, Any]) -> None:
        """Check options against each other and fill defaults derived from others (default: nothing)."""

    def step(self) -> torch.Tensor:
        """One step: through :meth:`run` where a whole-run kernel takes this run (so a step-by-step run and a
        bulk run give the same bits), else ``torch.optim``'s."""
        losses = self.run(1)
        return super().step() if losses is None else losses[0]

    def run_scheduled(
        self, steps: int, kernel: Callable[[torch.Tensor], torch.Tensor], *, extra: int = 0
    ) -> torch.Tensor:
        """``kernel(lrs)``, a whole-run kernel given the rate of each of the next ``steps`` steps.

        The rates are the schedule's, replayed bit for bit (:func:`gdla.schedules.upcoming_rates`);
        afterwards the schedule is moved past the steps the kernel took (its losses but the last
        ``extra`` entries, which are no steps), and the run's first loss (the kernels' divergence
        reference, ``_first_loss``) is kept. Returns the kernel's losses.
        """
        from gdla.schedules import advance, upcoming_rates

        rates = upcoming_rates(self.scheduler, self.torch_optimizer.param_groups[0]["lr"], steps)
        losses = kernel(torch.from_numpy(rates[:steps]))
        taken = len(losses) - extra
        advance(self.scheduler, rates, taken)
        if math.isnan(self._first_loss) and taken:
            self._first_loss = float(losses[0])
        return losses

    def run_tested(self, steps: int, tol: float) -> TestedRun | None:
        """:meth:`run` with the kernel's ``stop_loss`` test, where the problem's
        :class:`~gdla.capabilities.InverseMSE` declares its residual a function of the loss
        (``residual_factor``) and this method's :meth:`run` takes ``stop_loss`` (:attr:`runs_tested`).
        The residual after each step is the next step's loss, and after the last, the loss the
        kernel returns last; ``tol`` becomes the equivalent bound on the loss
        (:meth:`~gdla.capabilities.InverseMSE.loss_tolerance`), so the test is the loop's, bit for bit."""
        form = self._whole_run
        if not self.runs_tested or not isinstance(form, InverseMSE) or form.residual_factor is None:
            return None
        out = self.run(steps, stop_loss=form.loss_tolerance(tol))
        return None if out is None else TestedRun(out[:-1], form.residuals(out[1:]))

    def inverse_run_form(self, max_n: int) -> InverseMSE | None:
        """The problem's fused inverse MSE where a whole-run kernel can take this run, else ``None``.

        That is: ``backend="fused"``, the problem declares :class:`~gdla.capabilities.InverseMSE`,
        and its one parameter tensor and ``A`` are contiguous square ``n × n`` matrices, ``n <= max_n``.
        """
        form = self.problem.fused_loss()
        if self.backend != "fused" or not isinstance(form, InverseMSE) or len(self.params) != 1:
            return None
        X, A = self.params.get(form.key), form.A
        if X is None or not X.is_contiguous() or not A.is_contiguous() or A.layout != torch.strided:
            return None
        if A.shape[-1] != A.shape[-2] or A.shape[-1] > max_n or X.shape != A.shape:
            return None
        return form

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "lr": self.lr}
        info.update({key: list(v) if isinstance(v, tuple) else v for key, v in self.settings.items()})
        if self.schedule is not None:
            info["schedule"] = self.schedule
        return info


_WEIGHT_DECAY = Option(check_nonnegative, 0.0)
_EPS = Option(check_positive, 1e-8)


class SGD(TorchOptimizer):
    r"""``torch.optim.SGD``: :math:`v \leftarrow \mu v + (1 - \tau) g`, :math:`x \leftarrow x - \mathrm{lr}\, v`.

    ``μ`` is ``momentum``, ``τ`` ``dampening``. Default ``lr = 1 / L`` (see the module docstring),
    no momentum.
    """

    name = "sgd"
    summary = "torch.optim.SGD: gradient descent, optional (Nesterov) momentum; default lr 1/L from a curvature probe"
    default_lr = 1e-2
    torch_class = torch.optim.SGD
    fixed_step = True
    accepted = {
        "momentum": Option(unit_interval, 0.0),
        "dampening": Option(unit_interval, 0.0),
        "nesterov": Option(flag, False),
        "weight_decay": _WEIGHT_DECAY,
    }
    lr_rule = ("inverse_lipschitz", 1.0)
    lr_units = "curvature"
    state_attributes = ("_first_loss",)

    def __init__(self, problem: Problem, params: Params, **options: Any) -> None:
        super().__init__(problem, params, **options)
        self._whole_run = self._run_form()

    def _run_form(self) -> SvdPenaltyLoss | MaskedOperatorLoss | None:
        """The problem's fused loss where a whole-run kernel (``gdla.ops.svd_sgd_run``, ``masked_sgd_run``)
        can take the run: ``backend="fused"``, no weight decay, small contiguous tensors. Else ``None``."""
        form = self.problem.fused_loss()
        if self.backend != "fused" or self.settings["weight_decay"] != 0:
            return None
        from gdla import ops  # the compiled extension loads only when asked for

        if isinstance(form, SvdPenaltyLoss):
            data, keys = [form.M], form.keys
            fits = form.M.dim() == 2 and max(form.M.shape) <= ops.SMALL_MAX_N
        elif isinstance(form, MaskedOperatorLoss):
            data, keys = [form.init, form.omega, form.X, form.Y], (form.key,)
            fits = form.X.dim() == 2 and form.X.shape[0] <= ops.SMALL_MAX_N and form.X.shape[1] <= ops.RUN_MAX_COLUMNS
            fits = fits and form.hops <= ops.RUN_MAX_HOPS and all(t.layout == torch.strided for t in data)
        else:
            return None
        tensors = [self.params.get(key) for key in keys]
        if not fits or set(self.params) != set(keys) or any(t is None or not t.is_contiguous() for t in tensors):
            return None
        return form if all(t.is_contiguous() for t in data) else None

    @property
    def projects_in_run(self) -> bool:
        """The SVD run applies the problem's projection (the sign fix) after each of its steps."""
        return isinstance(self._whole_run, SvdPenaltyLoss)

    def run(self, steps: int) -> torch.Tensor | None:
        """``steps`` SGD steps in one call of the problem's whole-run kernel (the SVD's sign fix included).

        Keeps torch's state (``momentum_buffer``) and moves the schedule as ``steps`` calls of
        :meth:`step` would.
        """
        form = self._whole_run
        if form is None:
            return None
        from gdla import ops

        keys = form.keys if isinstance(form, SvdPenaltyLoss) else (form.key,)
        tensors = [self.params[key] for key in keys]
        group = self.torch_optimizer.param_groups[0]
        momentum = group["momentum"]
        states = [self.torch_optimizer.state[t] for t in tensors]
        started = all(state.get("momentum_buffer") is not None for state in states)
        if momentum:
            for state, tensor in zip(states, tensors, strict=True):
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(tensor)
            buffers = tuple(state["momentum_buffer"] for state in states)
        else:  # plain SGD keeps no buffer: scratch space the kernel leaves unused
            buffers = tuple(torch.zeros_like(t) for t in tensors)
        rule = {
            "momentum": momentum, "dampening": group["dampening"], "nesterov": group["nesterov"], "started": started,
            "first_loss": self._first_loss, "blow_up": BLOW_UP,
        }

        def kernel(lrs: torch.Tensor) -> torch.Tensor:
            if isinstance(form, SvdPenaltyLoss):
                return ops.svd_sgd_run(form.M, *tensors, buffers, lrs, weight_u=form.weight_u,
                                       weight_v=form.weight_v, sign_fix=True, **rule)
            return ops.masked_sgd_run(form.init, form.omega, form.X, form.Y, tensors[0], buffers[0], lrs,
                                      hops=form.hops, activation=form.activation, loss=form.loss, **rule)

        return self.run_scheduled(steps, kernel)

    def resolve(self, settings: dict[str, Any]) -> None:
        if settings["nesterov"] and (settings["momentum"] == 0 or settings["dampening"] != 0):
            raise InputError(
                "nesterov: expected momentum > 0 and dampening = 0 with nesterov=True, received "
                f"momentum={settings['momentum']!r}, dampening={settings['dampening']!r}"
            )


class Adam(TorchOptimizer):
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
    torch_class = torch.optim.Adam
    accepted = {
        "betas": Option(betas, (0.9, 0.999)),
        "eps": _EPS,
        "weight_decay": _WEIGHT_DECAY,
        "amsgrad": Option(flag, False),
    }
    lr_rule = ("distance", 1.0)
    lr_units = "distance"
    runs_tested = True
    default_schedule = "exponential"

    state_attributes = ("_first_loss",)

    def __init__(self, problem: Problem, params: Params, **options: Any) -> None:
        super().__init__(problem, params, **options)
        self._whole_run = None
        if self.backend == "fused" and not self.settings["amsgrad"] and self.settings["weight_decay"] == 0:
            from gdla import ops  # the compiled extension loads only when asked for

            self._whole_run = self.inverse_run_form(ops.SMALL_MAX_N)

    @classmethod
    def suitability(cls, problem: Problem) -> Suitability | None:
        return Suitability(90, "nonlinear loss: adam, the first-order fallback")

    def run(self, steps: int, *, stop_loss: float | None = None) -> torch.Tensor | None:
        """``steps`` Adam steps (with the schedule's rate at each) in one ``gdla.ops.inverse_adam_run`` call.

        Serves the fused backend on a problem that declares the inverse MSE (``n <= 16``) without
        weight decay or amsgrad; it keeps torch's state (``step``, ``exp_avg``, ``exp_avg_sq``) and
        moves the schedule as ``steps`` calls of :meth:`step` would. ``stop_loss``: the kernel's
        residual test (:meth:`run_tested`); the losses then end with the loss at the final iterate.
        """
        form = self._whole_run
        if form is None:
            return None
        from gdla import ops

        X = self.params[form.key]
        group = self.torch_optimizer.param_groups[0]
        state = self.torch_optimizer.state[X]
        if not state:  # as torch.optim.Adam starts it
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(X, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(X, memory_format=torch.preserve_format)
        extra = int(stop_loss is not None)
        losses = self.run_scheduled(steps, lambda lrs: ops.inverse_adam_run(
            form.A, X, state["exp_avg"], state["exp_avg_sq"], form.side, lrs, betas=group["betas"],
            eps=group["eps"], step0=int(state["step"]), first_loss=self._first_loss, blow_up=BLOW_UP,
            stop_loss=stop_loss,
        ), extra=extra)
        state["step"] += len(losses) - extra
        return losses


class Adagrad(TorchOptimizer):
    """``torch.optim.Adagrad`` (seed 004's method). Default ``lr = 3 D``.

    Its first step moves every entry by exactly ``lr``; as the squared gradients accumulate the
    step settles to plain gradient descent with a per-entry rate, so it converges without a schedule.
    """

    name = "adagrad"
    summary = "torch.optim.Adagrad: per-entry rates from accumulated squared gradients (seed 004's method)"
    default_lr = 0.1
    torch_class = torch.optim.Adagrad
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
    torch_class = torch.optim.RMSprop
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
    torch_class = torch.optim.LBFGS
    accepted = {
        "history_size": Option(count, 20),
        "line_search_fn": Option(line_search, "strong_wolfe"),
        "max_iter": Option(count, 1),
        "max_eval": Option(optional_count, None),
        "tolerance_grad": Option(check_nonnegative, 0.0),
        "tolerance_change": Option(check_nonnegative, 0.0),
    }

    def resolve(self, settings: dict[str, Any]) -> None:
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

    def __init__(self, problem: Problem, params: Params, **options: Any) -> None:
        schedule = options.get("schedule")
        if schedule not in (None, "none") and options.get("line_search_fn", "strong_wolfe") is not None:
            raise InputError(
                f"schedule: optimizer 'lbfgs' with line_search_fn='strong_wolfe' chooses each step length "
                f"itself, so a learning-rate schedule cannot act on it; received schedule={schedule!r}: "
                "drop the schedule or pass line_search_fn=None"
            )
        super().__init__(problem, params, **options)


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    for cls in (SGD, Adam, Adagrad, RMSprop, LBFGS):
        register(cls)
