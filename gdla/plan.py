"""The run plan: every decision of a solve, made once, before the first step.

:func:`make_plan` turns what the caller asked for (a problem, an optimizer name or ``"auto"``,
``lr``, options, backend, budget, tolerance) into a :class:`Plan`: the method, ranked once and
with its reason; its learning rate and options in the problem's normalised units; the backend
(:func:`gdla.backend.resolve_backend`); the stop rules; the shard of a distributed batch. The
loop (:mod:`gdla.loop`) executes a plan and :mod:`gdla.report` describes it in
``Result.settings``.

``"auto"`` is a way of planning, not an optimizer: it takes the best of the :class:`Ranking`,
which asks each registered optimizer's ``suitability`` at most once per solve. The pre-run advice
("optimizer=X should need about N steps") and the memory refusal's "use X instead" read the same
ranking.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from gdla.backend import resolve_backend
from gdla.building import build_problem
from gdla.differentiation import resolve_backward, solution_of
from gdla.errors import (
    ConvergenceWarning,
    DuplicateNameError,
    GdlaError,
    InputError,
    PluginError,
    PluginWarning,
    UsageError,
)
from gdla.memory import check_method_fits
from gdla.optimizer import Optimizer, Suitability
from gdla.plugin_checks import check_start
from gdla.problem import Params, Problem
from gdla.registry import clash_message, get_optimizer, named_optimizers, optimizers
from gdla.stopping import StopRules, default_patience, default_tol
from gdla.validation import as_device, as_dtype, check_callable, check_int, check_nonnegative, check_positive
from gdla.warm_start import check_init, given_start

__all__ = ["AUTO", "Candidate", "Plan", "Ranking", "make_plan"]

#: The optimizer name that asks the plan to pick the method.
AUTO = "auto"
#: The step budget of ``optimizer="auto"`` when ``max_steps`` is not given (whatever method it picks).
AUTO_MAX_STEPS = 10_000

Callback = Callable[[int, float, Params], Any]


@dataclass(frozen=True)
class Candidate:
    """One registered optimizer as the ranking sees it: its name, class and declared suitability."""

    name: str
    cls: type[Optimizer]
    fit: Suitability | None
    #: Why it could not be asked (a broken ``suitability``), or ``None``.
    failure: PluginError | None = None


class Ranking:
    """The registered optimizers for one problem, each asked for its ``suitability`` once, best first.

    Computed when first needed (``auto``, advice, a memory refusal) and then only read.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    @functools.cached_property
    def candidates(self) -> list[Candidate]:
        """Every registered optimizer but ``auto`` that loads, with its declared fit, in name order."""
        found: list[Candidate] = []
        for name, entries in named_optimizers():
            if name == AUTO:
                continue
            if len(entries) > 1:  # it cannot be picked by name either: say so, as a broken plugin
                found.append(Candidate(name, Optimizer, None, DuplicateNameError(clash_message(entries))))
                continue
            found.append(_ask(name, entries[0].obj, self.problem))
        return found

    @functools.cached_property
    def suitable(self) -> list[Candidate]:
        """The candidates that declare themselves suitable and accept the problem, best (lowest rank) first."""
        fitting = [
            candidate
            for candidate in self.candidates
            if candidate.fit is not None and _accepts(candidate.cls, self.problem)
        ]
        return sorted(fitting, key=lambda candidate: (candidate.fit.rank, candidate.name))  # type: ignore[union-attr]

    def warn_failures(self) -> None:
        """One :class:`PluginWarning` for each optimizer whose ``suitability`` broke its rule: it is left out of the
        ranking, and the others still rank (one broken plugin does not take ``auto`` down)."""
        for candidate in self.candidates:
            if candidate.failure is not None:
                warnings.warn(f"{candidate.failure}; it is left out of the ranking", PluginWarning, stacklevel=4)

    def best(self) -> Candidate:
        """The method ``auto`` runs (an empty ranking is an error)."""
        self.warn_failures()
        if not self.suitable:
            raise InputError(
                f"optimizer: 'auto' found no method for problem {self.problem.name!r}: no registered optimizer "
                f"declares itself suitable (registered: {', '.join(optimizers())})"
            )
        return self.suitable[0]

    def alternatives(self, *, besides: set[str]) -> Iterator[Candidate]:
        """Methods to advise instead of those in ``besides``: the suitable ones best first, then any other that
        accepts the problem (by name)."""
        seen = set(besides)
        for candidate in self.suitable:
            if candidate.name not in seen:
                seen.add(candidate.name)
                yield candidate
        for candidate in self.candidates:
            if candidate.name not in seen and candidate.failure is None and _accepts(candidate.cls, self.problem):
                seen.add(candidate.name)
                yield candidate


def _ask(name: str, cls: type[Optimizer], problem: Problem) -> Candidate:
    """``cls.suitability(problem)``, with a plugin's broken rule recorded as a :class:`PluginError`."""
    rule = "it must return a gdla.Suitability or None"
    try:
        fit = cls.suitability(problem)
    except Exception as exc:
        ours = isinstance(exc, GdlaError)  # a gdla error says what is wrong itself; anything else is the plugin's bug
        said = exc if ours else f"{type(exc).__name__}: {exc}; {rule}"
        failure = PluginError(f"{_where(name, cls)}: suitability() raised {said}")
        if not ours:
            failure.__cause__ = exc
        return Candidate(name, cls, None, failure)
    if fit is not None and not isinstance(fit, Suitability):
        return Candidate(name, cls, None, PluginError(f"{_where(name, cls)}: suitability() returned {fit!r}; {rule}"))
    return Candidate(name, cls, fit)


def _where(name: str, cls: type[Optimizer]) -> str:  # built for a broken rule only: every solve asks every method
    return f"optimizer {name!r} ({cls.__module__}.{cls.__qualname__})"


def _accepts(cls: type[Optimizer], problem: Problem) -> bool:
    try:
        return cls.unsupported_reason(problem) is None
    except GdlaError:
        return False


@dataclass
class Plan:
    """A decided run: what :func:`gdla.loop.execute` runs and :mod:`gdla.report` reports."""

    problem: Problem  # the problem as the caller gave it (converted)
    full: Problem  # the problem in normalised units (the whole batch)
    work: Problem  # the problem the optimizer sees: normalised units, this rank's shard
    restore: Callable[[Params], Params]  # work params -> the caller's problem's params
    requested: str  # the optimizer name the caller gave ("auto" or a method)
    method: type[Optimizer]  # the class that runs
    reason: str | None  # why "auto" picked it (None for a named method)
    lr: float | None  # in the work problem's units (None: the method's default)
    options: dict[str, Any]  # in the work problem's units
    backend: str
    budget: int
    rules: StopRules
    seed: int
    callback: Callback | None
    progress: bool
    ranking: Ranking
    #: Whether the caller gave options or a learning rate (a method's refusal of them is bad usage).
    settings_given: bool = False
    sharding: Any = None
    #: ``p`` such that every work parameter is the caller's times ``2^p`` (``None``: solved as given, or parameters
    #: that do not all scale alike).
    param_exponent: int | None = None
    #: ``j`` such that the work problem's loss is the caller's times ``2^j`` (0: solved as given, or undeclared).
    loss_exponent: int = 0
    notes: list[str] = field(default_factory=list)
    #: The caller's start (``init``), in the caller's units, or ``None``: the seeded start.
    init: dict[str, torch.Tensor] | None = None
    #: How the answer is differentiated: ``"implicit"``, ``"unroll"`` or ``"none"`` (``"auto"`` decided).
    backward: str = "none"
    #: The start as the run began (work units), kept for ``backward="unroll"`` to replay the steps from.
    start_params: Params | None = None

    @property
    def units(self) -> tuple[int, int] | None:
        """``(param_exponent, loss_exponent)``, where the parameters scale alike: what converts a learning rate or
        curvature bound between the caller's units and the work problem's; ``None`` otherwise."""
        return None if self.param_exponent is None else (self.param_exponent, self.loss_exponent)

    @property
    def watched(self) -> bool:
        """Whether something sees every step (a callback, a progress bar, the other ranks), so steps go one a call."""
        return self.callback is not None or self.progress or self.sharding is not None

    def start(self) -> tuple[Optimizer, Params]:
        """The seeded starting point and the optimizer built on it, after the memory check of the method."""
        work = self.work
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone on CPU (seeding every device's generator costs a stack trace each)
            if work.device.type == "cpu":
                torch.default_generator.manual_seed(self.seed)
            else:
                torch.manual_seed(self.seed)
            # the plugin's rules, once per problem (gdla.plugin_checks), before a normalised copy calls its methods
            check_start(self.problem, self.seed, as_run=work is self.problem)
            # a start the method computes itself (starting_point, as Newton-Schulz's safe start): none drawn for it
            params = self.method.starting_point(work, self.options) if self.init is None else None
            if params is None:
                params = work.init_params(torch.Generator().manual_seed(self.seed))
            if self.init is not None:  # the caller's start, checked against the problem's own and converted
                params = given_start(self.init, params, self.restore)
            if self.backward == "unroll":
                self.start_params = {key: value.clone() for key, value in params.items()}
            if self.backward != "none":  # an answer that leaves autograd is refused now, not after the run
                # parameters with a graph, as the answer's will be (a clone of a leaf: not a leaf itself)
                probe = {key: value.detach().requires_grad_().clone() for key, value in self.restore(params).items()}
                solution_of(self.problem, probe, differentiable=True)
            check_method_fits(self.method, work, params, self.options, self._fitting)
            # with a given start, what the method says when built (a start it cannot use) goes in the Result too
            hearing = warnings.catch_warnings(record=True) if self.init is not None else contextlib.nullcontext([])
            try:
                with hearing as said:
                    if self.init is not None:
                        warnings.simplefilter("always")  # inside catch_warnings: restored on leaving it
                    opt = self.method(
                        work, params, lr=self.lr, backend=self.backend, max_steps=self.budget, **self.options
                    )
            except InputError as exc:
                raise self._refused(exc) from exc
        for warning in said:
            self.notes.append(str(warning.message))
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return opt, params

    def _refused(self, exc: InputError) -> InputError:
        """The method's refusal of the caller's settings: a :class:`UsageError` where the caller gave options or a
        learning rate to a method that declares its options (it checked them against that schema), naming the
        method ``auto`` picked."""
        text = str(exc)
        if self.reason is not None:  # say which method the options went to: the caller asked for 'auto'
            text = f"optimizer 'auto' picked {self.method.name!r} ({self.reason}), which refused the options: {text}"
        if type(exc) is InputError and self.settings_given and self.method.options:
            return UsageError(text)
        return exc if text == str(exc) else type(exc)(text)

    def _fitting(self) -> Iterator[Candidate]:
        """Candidates for the memory refusal's advice: the suitable methods other than this one, best first."""
        return (c for c in self.ranking.suitable if c.cls is not self.method)

    def advise(self, opt: Optimizer) -> None:
        """Warn before the run when the method is not expected to reach ``tol`` in the budget, naming one that is."""
        tol, budget = self.rules.tol, self.budget
        if tol <= 0:
            return
        expected = opt.expected_steps(tol)
        if expected is None or expected <= budget:
            return
        need = (
            "is expected to diverge at this learning rate"
            if math.isinf(expected)
            else f"is expected to need about {expected:.3g} steps to reach tol={tol:g} on this problem, "
            f"more than max_steps={budget}"
        )
        text = f"optimizer {self.requested!r} {need}; {self._better_method(opt)}"
        self.notes.append(text)
        warnings.warn(text, ConvergenceWarning, stacklevel=4)

    def _better_method(self, opt: Optimizer) -> str:
        """A ranked method expected to reach ``tol`` within the budget, as advice; else "raise max_steps"."""
        tol, budget = self.rules.tol, self.budget
        for candidate in self.ranking.alternatives(besides={self.requested, self.method.name}):
            try:
                # on copies: constructors may write a starting point into the parameters
                params = {key: value.clone() for key, value in opt.params.items()}
                check_method_fits(candidate.cls, self.work, params, {})
                need = candidate.cls(self.work, params, max_steps=budget).expected_steps(tol)
            except GdlaError:
                continue
            if need is not None and need <= budget:
                return f"optimizer={candidate.name!r} should need about {need:.3g} steps"
        return "raise max_steps"

    def reported_lr(self, lr: float | None) -> float | None:
        """A learning rate of the work problem in the data's units (the inverse conversion is exact)."""
        if self.units is None:
            return lr
        return self.method.in_normalized_units(lr, {}, -self.units[0], -self.units[1])[0]

    def caller_view(self, loss: float, params: Params) -> tuple[float, Params]:
        """What a callback is handed after a step: the work problem's ``loss`` and ``params`` in the caller's units
        (in the callback's order: ``callback(step, *plan.caller_view(loss, params))``).

        The parameters through :attr:`restore` (exact powers of two; the live tensors themselves where the problem
        is solved as given) and the loss times ``2^-loss_exponent`` where the normalisation declares it
        (:attr:`loss_exponent`); a problem normalised without declaring how its loss scales hands on the loss the
        method sees. Costs one scaling of the parameters: the loop calls it only for a callback.
        """
        return math.ldexp(loss, -self.loss_exponent), self.restore(params)


def make_plan(
    problem: Problem | str,
    optimizer: str,
    *,
    lr: float | None,
    max_steps: int | None,
    tol: float | None,
    seed: int,
    backend: str,
    dtype: torch.dtype | str | None,
    device: torch.device | str | None,
    callback: Callback | None,
    progress: bool,
    patience: int | None,
    distributed: bool,
    options: dict[str, Any],
    init: Any = None,
    backward: str = "auto",
) -> Plan:
    """Decide a run (see the module docstring); every argument is checked here, before any work."""
    if isinstance(problem, str):
        problem = build_problem(problem)  # exactly get_problem(problem).example()
    if not isinstance(problem, Problem):
        raise InputError(
            f"problem: expected a gdla.Problem instance or a problem name, received {type(problem).__name__}"
        )
    problem, stale = _built_from_current_data(problem)
    problem = problem.to(dtype=as_dtype(dtype), device=as_device(device))
    as_device(problem.device, f"problem {problem.name!r}: its data's device")  # a 'meta' tensor, an mps one...
    problem = _outside_inference(problem)
    if not isinstance(optimizer, str):
        raise InputError(f"optimizer: expected a registered optimizer name (str), received {type(optimizer).__name__}")
    if lr is not None:
        check_positive(lr, "lr")
    options = dict(options)
    settings_given = bool(options) or lr is not None
    if optimizer == AUTO:
        get_optimizer(AUTO)  # registered like any optimizer: a missing or clashing one is reported as usual
        default_budget = AUTO_MAX_STEPS
    else:
        default_budget = get_optimizer(optimizer).default_max_steps
    budget = check_int(default_budget if max_steps is None else max_steps, "max_steps", minimum=1)
    tol = default_tol(problem.dtype) if tol is None else check_nonnegative(tol, "tol")
    seed = check_int(seed, "seed")
    if not -(2**63) <= seed < 2**64:
        raise InputError(f"seed: expected an integer that fits in 64 bits, received {seed}")
    check_callable(callback, "callback")
    patience = default_patience(budget) if patience is None else check_int(patience, "patience", minimum=1)
    if not isinstance(distributed, bool):
        raise InputError(f"distributed: expected True or False, received {distributed!r}")
    given = check_init(init)
    backward = resolve_backward(backward, problem)
    if distributed and (given is not None or backward != "none"):
        raise UsageError(
            "distributed: a sharded batch starts from the seeded start and returns detached answers; received "
            + ("init" if given is not None else f"backward={backward!r} (data that requires grad)")
            + "; solve without distributed=True, or leave init out and pass backward='none'"
        )

    work, restore, param_exponent, loss_exponent = problem, _identity, None, 0
    normalization = problem.normalized()
    if normalization is not None:
        work, restore = normalization.problem, normalization.restore
        param_exponent, loss_exponent = normalization.param_exponent, normalization.loss_exponent
    ranking = Ranking(work)  # what the methods will see: the normalised problem
    method, reason = _method(optimizer, ranking)
    if reason is not None:
        pick = ranking.best()
        if lr is not None and method.default_lr is None:
            reason += f"; lr={lr!r} ignored, {method.name} has no learning rate"
            lr = None
        options = {**pick.fit.options, **options}  # type: ignore[union-attr]
    if param_exponent is not None:  # what the caller gave in the data's units
        lr, options = method.in_normalized_units(lr, options, param_exponent, loss_exponent)
    full, sharding = work, None
    if distributed:
        from gdla.distributed import Sharding

        sharding = Sharding(work)
        work = sharding.local
    chosen_backend = resolve_backend(backend, work, method, options)
    return Plan(
        problem=problem, full=full, work=work, restore=restore, requested=optimizer, method=method, reason=reason,
        lr=lr, options=options, backend=chosen_backend, budget=budget, rules=StopRules(tol, patience), seed=seed,
        callback=callback, progress=progress, ranking=ranking, settings_given=settings_given, sharding=sharding,
        param_exponent=param_exponent, loss_exponent=loss_exponent, init=given, backward=backward,
        notes=[] if stale is None else [stale],
    )


def _method(optimizer: str, ranking: Ranking) -> tuple[type[Optimizer], str | None]:
    """The class that runs, and ``auto``'s reason for it (``None`` for a method named by the caller)."""
    if optimizer != AUTO:
        return get_optimizer(optimizer), None
    pick = ranking.best()
    return pick.cls, pick.fit.reason  # type: ignore[union-attr]


def _built_from_current_data(problem: Problem) -> tuple[Problem, str | None]:
    """``problem``, rebuilt from its constructor arguments if the caller changed one of their tensors in place since
    it was built (what the constructor derived, an analysis or a scale, would describe other data), and a note saying
    so (``None`` if nothing changed)."""
    versions = problem.__dict__.get("_constructor_versions") or {}
    arguments = problem.__dict__.get("_constructor_arguments") or {}
    changed = sorted(key for key, version in versions.items() if arguments[key]._version != version)
    if not changed:
        return problem, None
    return problem.rebuild(), (
        f"{', '.join(changed)} changed in place since problem {problem.name!r} was built: solved as rebuilt from "
        "the current data"
    )


def _outside_inference(problem: Problem) -> Problem:
    """``problem`` with its inference tensors (made under ``torch.inference_mode()``) cloned into normal ones,
    which autograd may use; rebuilt from its recorded constructor arguments."""
    if not any(value.is_inference() for value in problem._data().values()):
        return problem
    recorded = problem.__dict__.get("_constructor_arguments")
    if recorded is None:
        raise InputError(
            f"problem: expected data that autograd may use, received problem {problem.name!r} holding tensors made "
            "under torch.inference_mode(); build the problem outside inference mode, or from cloned tensors"
        )
    cloned = {
        key: value.clone()
        for key, value in recorded.items()
        if isinstance(value, torch.Tensor) and value.is_inference()
    }
    return problem.rebuild(**cloned)


def _identity(params: Params) -> Params:
    return params
