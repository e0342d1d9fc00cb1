"""The solve loop: prepare a run, iterate until a stop rule fires, summarise it in a :class:`~gdla.Result`.

The loop knows problems and optimizers only through their interfaces: it asks the problem for
normalised units and its residual, the optimizer for steps, and the plugins (through
``suitability`` and ``expected_steps``) for advice. No built-in name appears here.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gdla.backend import resolve_backend
from gdla.errors import ConvergenceWarning, GdlaError, InputError, PluginError
from gdla.memory import allocation_error
from gdla.mesh import full_tensor
from gdla.optimizer import Optimizer
from gdla.problem import Params, Problem
from gdla.registry import get_optimizer, get_problem, optimizers
from gdla.result import STOP_REASONS, Metrics, Result
from gdla.stopping import BLOW_UP, LossHistory, StopRules, default_patience, default_tol, loss_array
from gdla.validation import as_device, as_dtype, check_callable, check_int, check_nonnegative, check_positive

__all__ = ["BLOW_UP", "default_tol", "solve"]

Callback = Callable[[int, float, Params], Any]


@dataclass
class Run:
    """Everything :func:`solve` prepared before the first step."""

    problem: Problem  # the problem as the caller gave it (converted)
    full: Problem  # the problem in normalised units (the whole batch)
    work: Problem  # the problem the optimizer sees: normalised units, this rank's shard
    restore: Callable[[Params], Params]  # work params -> the caller's problem's params
    optimizer: Optimizer
    params: Params
    backend: str
    budget: int
    rules: StopRules
    seed: int
    callback: Callback | None
    progress: bool
    sharding: Any = None
    notes: list[str] = field(default_factory=list)
    #: ``(param_exponent, loss_exponent)`` of the normalisation, to report settings in the data's units.
    units: tuple[int, int] | None = None


def solve(
    problem: Problem | str,
    *,
    optimizer: str = "auto",
    lr: float | None = None,
    max_steps: int | None = None,
    tol: float | None = None,
    seed: int = 0,
    backend: str = "auto",
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    patience: int | None = None,
    distributed: bool = False,
    **optimizer_options: Any,
) -> Result:
    """Minimise ``problem``'s loss with ``optimizer`` and return a :class:`~gdla.Result`.

    Args:
        problem: a problem instance, or a registered name (its seed scenario is used).
        optimizer: registered optimizer name (``gdla.optimizers()``); ``"auto"`` picks one.
        lr: learning rate; ``None`` takes the optimizer's default for this problem.
        max_steps: iteration budget; ``None`` takes the optimizer's default.
        tol: stop once the relative residual is ``<= tol``; ``None`` takes :func:`default_tol`;
            ``0`` runs all ``max_steps`` (only divergence stops early).
        seed: seeds the starting point; the same seed and inputs give identical results.
        backend: ``"auto"``, ``"autograd"`` or ``"fused"`` (see :mod:`gdla.backend`), decided once before the run.
        dtype, device: convert the problem's data first (``None`` keeps them).
        callback: ``callback(step, loss, params)`` after every step; returning ``True`` stops.
        progress: show a progress bar.
        patience: steps without a 0.1% improvement of the best loss or best residual before ``stalled``
            (default ``max(100, max_steps // 10)``, at most 10,000).
        distributed: shard a batched problem over the ranks of the initialised default process group
            (:mod:`gdla.distributed`); every rank gets the whole result.
        **optimizer_options: passed to the optimizer (``momentum=0.9``, ``schedule="cosine"``...).
    """
    called = time.perf_counter()
    try:
        run = _prepare(
            problem, optimizer, lr, max_steps, tol, seed, backend, dtype, device, callback, progress, patience,
            distributed, optimizer_options,
        )
        start = time.perf_counter()
        losses, stop = _iterate(run)
        seconds = time.perf_counter() - start
        return _summarise(run, losses, stop, setup_seconds=start - called, seconds=seconds)
    except GdlaError:
        raise
    except Exception as exc:
        name = problem.name if isinstance(problem, Problem) else problem
        error = allocation_error(exc, f"solving problem {name!r}")  # an allocation anywhere in the run
        if error is not None:
            raise error from exc
        if isinstance(problem, Problem):
            _blame_problem(problem, exc)  # a plugin's broken rule is the likely cause: name it
        raise


# -- prepare ------------------------------------------------------------------------------------
def _prepare(
    problem: Problem | str,
    optimizer: str,
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
) -> Run:
    if isinstance(problem, str):
        problem = get_problem(problem).example()
    if not isinstance(problem, Problem):
        raise InputError(
            f"problem: expected a gdla.Problem instance or a problem name, received {type(problem).__name__}"
        )
    problem = problem.to(dtype=as_dtype(dtype), device=as_device(device))
    optimizer_cls = get_optimizer(optimizer) if isinstance(optimizer, str) else _bad_optimizer(optimizer)
    if lr is not None:
        check_positive(lr, "lr")
    budget = check_int(optimizer_cls.default_max_steps if max_steps is None else max_steps, "max_steps", minimum=1)
    tol = default_tol(problem.dtype) if tol is None else check_nonnegative(tol, "tol")
    seed = check_int(seed, "seed")
    if not -(2**63) <= seed < 2**64:
        raise InputError(f"seed: expected an integer that fits in 64 bits, received {seed}")
    check_callable(callback, "callback")
    patience = default_patience(budget) if patience is None else check_int(patience, "patience", minimum=1)
    if not isinstance(distributed, bool):
        raise InputError(f"distributed: expected True or False, received {distributed!r}")

    work, restore, units = problem, _identity, None
    normalization = problem.normalized()
    if normalization is not None:
        work, restore = normalization.problem, normalization.restore
        if normalization.param_exponent is not None:  # what the caller gave in the data's units
            units = (normalization.param_exponent, normalization.loss_exponent)
            lr, options = optimizer_cls.method_class(work).in_normalized_units(lr, dict(options), *units)
    full, sharding = work, None
    if distributed:
        from gdla.distributed import Sharding

        sharding = Sharding(work)
        work = sharding.local
    chosen_backend = resolve_backend(backend, work, optimizer_cls, options)

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        # the CPU generator alone on CPU (seeding every device's generator costs a stack trace each)
        torch.default_generator.manual_seed(seed) if work.device.type == "cpu" else torch.manual_seed(seed)
        params = work.init_params(generator)
        opt = optimizer_cls(work, params, lr=lr, backend=chosen_backend, max_steps=budget, **options)
    run = Run(
        problem=problem, full=full, work=work, restore=restore, optimizer=opt, params=params, backend=chosen_backend,
        budget=budget, rules=StopRules(tol, patience), seed=seed, callback=callback, progress=progress,
        sharding=sharding, units=units,
    )
    _advise(run)
    return run


def _identity(params: Params) -> Params:
    return params


def _bad_optimizer(value: Any) -> Any:
    raise InputError(f"optimizer: expected a registered optimizer name (str), received {type(value).__name__}")


def _advise(run: Run) -> None:
    """Warn before the run when the chosen method is not expected to reach ``tol`` within the budget."""
    tol, budget, opt = run.rules.tol, run.budget, run.optimizer
    if tol <= 0:
        return
    bound = opt.steps_bound(tol)
    if bound is not None and bound <= budget:  # fits for sure: no estimate needed
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
    text = f"optimizer {opt.name!r} {need}; {_better_method(run.work, opt, tol, budget)}"
    run.notes.append(text)
    warnings.warn(text, ConvergenceWarning, stacklevel=4)


def _better_method(problem: Problem, opt: Optimizer, tol: float, budget: int) -> str:
    """Advice for a run that will not converge: a registered method expected to make it within ``budget``."""
    running = {opt.name, opt.describe().get("method")}
    candidates: list[tuple[int, str, type[Optimizer]]] = []
    for name in optimizers():
        try:
            cls = get_optimizer(name)
            fit = cls.suitability(problem)
        except GdlaError:
            continue
        # methods that declare themselves suitable first, best first; then any other that accepts the problem
        candidates.append((fit.rank if fit is not None else 1000, name, cls))
    for _, candidate, cls in sorted(candidates, key=lambda item: (item[0], item[1])):
        if candidate in running:
            continue
        try:
            if cls.unsupported_reason(problem) is not None:
                continue
            # on copies: constructors may write a starting point into the parameters
            trial = cls(problem, {k: v.clone() for k, v in opt.params.items()}, max_steps=budget)
            need = trial.expected_steps(tol)
        except GdlaError:
            continue
        if need is not None and need <= budget:
            return f"optimizer={candidate!r} should need about {need:.3g} steps"
    return "raise max_steps"


# -- iterate ------------------------------------------------------------------------------------
def _iterate(run: Run) -> tuple[LossHistory, str]:
    opt, work, params, rules, callback, sharding = (
        run.optimizer, run.work, run.params, run.rules, run.callback, run.sharding
    )
    losses = LossHistory()
    if _runs_in_bulk(run):
        with torch.no_grad():
            if rules.checks_residual:
                tested = _tested_in_bulk(run, losses)
                if tested is not None:
                    return losses, tested
            else:
                bulk = opt.run(run.budget)
                if bulk is not None:
                    return _replay(bulk, run, losses)
    bar = _progress_bar(run.budget, enabled=run.progress)
    stop = "max_steps"
    # the optimizer's own residual test, where it has one (the same bits one step a call as in bulk)
    tests_itself = rules.checks_residual and sharding is None
    with torch.no_grad():
        for step in range(1, run.budget + 1):
            residual = None
            if tests_itself:
                tested = opt.run_tested(1, rules.tol)
                tests_itself = tested is not None
                if tested is not None:
                    loss, residual = float(tested.losses[0]), float(tested.residuals[0])
            if residual is None:
                loss = _first_step(opt, work) if step == 1 else float(opt.step())
            work.project(params)
            if sharding is not None:
                loss = sharding.reduce_loss(loss)
            losses.append(loss)
            if bar is not None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss:.3e}", refresh=False)
            stop_now = rules.on_loss(step, loss)
            if stop_now is None and callback is not None and callback(step, loss, params) is True:
                stop_now = "callback"
            if stop_now is None and rules.checks_residual:
                if residual is None:
                    residual = float(work.residual(params))
                if sharding is not None:
                    residual = sharding.reduce_residual(residual)
                stop_now = rules.on_residual(step, loss, residual)
            if stop_now is not None:
                stop = stop_now
                break
    if bar is not None:
        bar.close()
    return losses, stop


def _runs_in_bulk(run: Run) -> bool:
    """Whether nothing needs to see the steps one by one, so the optimizer may run them all in one call
    (a residual test too, where the optimizer makes it: :func:`_tested_in_bulk`)."""
    return (
        run.callback is None
        and not run.progress
        and run.sharding is None
        and (not run.work.needs_projection() or run.optimizer.projects_in_run)
    )


def _tested_in_bulk(run: Run, losses: LossHistory) -> str | None:
    """A run with a tolerance through :meth:`~gdla.Optimizer.run_tested`, many steps a call; the stop reason,
    or ``None`` (nothing run) where the optimizer does not test the residual itself.

    Each call stops at a converged or diverged step itself and runs no further than the stall test
    allows (:meth:`~gdla.stopping.StopRules.steps_before_stall`); the loop's rules, replayed over
    the returned losses and residuals, then find the stop exactly where the loop would.
    """
    opt, rules = run.optimizer, run.rules
    taken = 0
    while taken < run.budget:
        tested = opt.run_tested(min(run.budget - taken, rules.steps_before_stall(taken)), rules.tol)
        if tested is None:
            if taken == 0:
                return None
            raise PluginError(f"optimizer {opt.name!r}: run_tested() returned None after it had run steps")
        values, residuals = loss_array(tested.losses), loss_array(tested.residuals)
        if len(values) == 0 or len(residuals) != len(values):
            raise PluginError(
                f"optimizer {opt.name!r}: run_tested() must return at least one step with a residual for each, "
                f"returned {len(values)} losses and {len(residuals)} residuals"
            )
        # the loop's order per step: the loss rule, then the residual's; a diverged step ends the replay
        diverged = rules.on_bulk(values, first_step=taken + 1)
        upto = len(values) if diverged is None else diverged - 1
        hit = rules.on_residuals(taken + 1, values[:upto].tolist(), residuals[:upto].tolist())
        if hit is None and diverged is not None:
            hit = (diverged - 1, "diverged")
        losses.extend(values)
        if hit is not None:
            if hit[0] + 1 < len(values):  # the parameters are those after the last step: no way back
                raise PluginError(
                    f"optimizer {opt.name!r}: run_tested() ran {len(values)} steps, past step {taken + hit[0] + 1}, "
                    f"where the loop stops ({hit[1]}); it must stop there itself"
                )
            return hit[1]
        taken += len(values)
    return "max_steps"


def _replay(bulk: torch.Tensor, run: Run, losses: LossHistory) -> tuple[LossHistory, str]:
    """The stop rules over the losses of a bulk run (which, like the loop, stopped after a diverging step)."""
    values = loss_array(bulk)  # converted once, for the stop rules and the history
    diverged = run.rules.on_bulk(values)
    losses.extend(values if diverged is None else values[:diverged])
    return losses, "max_steps" if diverged is None else "diverged"


def _first_step(opt: Optimizer, problem: Problem) -> float:
    """The first step, whose returned loss is checked against the plugin rule (later steps run unchecked)."""
    return _checked_loss(opt.step(), opt, problem)


def _blame_problem(problem: Problem, exc: Exception) -> None:
    """Raise a :class:`PluginError` if ``problem.loss`` breaks its rule (a scalar), the likely cause of ``exc``."""
    try:
        params = problem.init_params(torch.Generator().manual_seed(0))
        with torch.enable_grad():
            value = problem.loss(params)
    except Exception:
        return
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return
    shape = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
    cls = type(problem)
    raise PluginError(
        f"problem {problem.name!r} ({cls.__module__}.{cls.__qualname__}): loss() must return a scalar tensor, "
        f"returned {shape}; the solve failed with {type(exc).__name__}: {exc}"
    ) from exc


def _checked_loss(value: Any, opt: Optimizer, problem: Problem) -> float:
    """The first step's loss as a float, or a :class:`PluginError` naming whose rule was broken."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return float(value)
    shape = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
    cls = type(opt)
    raise PluginError(
        f"optimizer {opt.name!r} ({cls.__module__}.{cls.__qualname__}): step() must return the loss it evaluated "
        f"as a scalar tensor, returned {shape} (problem {problem.name!r})"
    )


def _progress_bar(total: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", mininterval=0.2, leave=False)


# -- summarise ----------------------------------------------------------------------------------
def _summarise(run: Run, losses: LossHistory, stop: str, *, setup_seconds: float, seconds: float) -> Result:
    began = time.perf_counter()
    opt = run.optimizer
    work_params = {key: value.detach() for key, value in run.params.items()}
    if run.sharding is not None:  # every rank reports the whole batch
        work_params = run.sharding.gather_params(work_params)
    work_params = {key: full_tensor(value) for key, value in work_params.items()}  # a DTensor: whole, every rank
    params_out = run.restore(work_params)
    members, status, finite = _batch_status(run.full, work_params, run.rules.tol)
    notes = list(run.notes)
    # relative metrics are free of units: computed in the normalised ones, where nothing over- or underflows
    if finite:
        metrics = Metrics(run.full.metrics(work_params), notes)
    else:
        notes.append("the parameters are not finite: every metric is NaN")
        metrics = Metrics({"residual": math.nan, "error": math.nan})
    condition = run.problem.condition_estimate()
    lr = opt.lr  # reported in the data's units: the inverse conversion is exact
    if run.units is not None:
        lr = type(opt).method_class(run.work).in_normalized_units(lr, {}, -run.units[0], -run.units[1])[0]
    settings = {
        "lr": lr, "max_steps": run.budget, "tol": run.rules.tol, "seed": run.seed, "dtype": run.problem.dtype
    }
    settings.update({f"optimizer.{k}": v for k, v in opt.describe().items() if k not in ("name", "lr")})
    return Result(
        solution=run.problem.solution(params_out),
        params=params_out,
        losses=losses.to_list(),
        steps=len(losses),
        stop_reason=stop,
        seconds=seconds,
        setup_seconds=setup_seconds,
        summary_seconds=time.perf_counter() - began,
        backend=run.backend,
        metrics=metrics,
        problem=run.problem.name,
        optimizer=opt.name,
        message=_message(run, stop, status),
        condition=condition,
        settings=settings,
        warnings=notes,
        batch_status=status,
        member_residuals=members,
    )


def _batch_status(
    problem: Problem, params: Params, tol: float
) -> tuple[torch.Tensor | None, torch.Tensor | None, bool]:
    """Each member's residual and verdict (0 converged, 1 not converged, 2 non-finite), where declared, and
    whether every parameter is finite."""
    members = problem.member_residuals(params)
    if members is None or members.dim() == 0:
        return None, None, all(_all_finite(value) for value in params.values())
    members = members.detach()
    finite, finite_members = True, torch.ones(members.shape, dtype=torch.bool, device=members.device)
    for value in params.values():
        if value.shape[: members.dim()] == members.shape:
            rows = _finite_rows(value.flatten(members.dim()))
            finite_members &= rows
            finite = finite and bool(rows.all())
        else:
            finite = finite and _all_finite(value)
    status = (members > tol).to(torch.int8)  # 0 where members <= tol; NaN members are marked 2 below
    status.masked_fill_(~(finite_members & torch.isfinite(members)), 2)
    return members, status, finite


def _all_finite(value: torch.Tensor) -> bool:
    """Whether every entry of ``value`` is finite (of a real floating tensor: its extremes, which carry NaN, ±inf)."""
    if not value.is_floating_point() or value.numel() == 0:
        return bool(torch.isfinite(value).all())
    low, high = torch.aminmax(value)
    return math.isfinite(float(low)) and math.isfinite(float(high))


def _finite_rows(rows: torch.Tensor) -> torch.Tensor:
    """Whether each row (the last dimension) of ``rows`` is finite throughout, as a boolean tensor."""
    if not rows.is_floating_point() or rows.shape[-1] == 0:
        return torch.isfinite(rows).all(-1)
    low, high = torch.aminmax(rows, dim=-1)
    return torch.isfinite(low) & torch.isfinite(high)


def _message(run: Run, stop: str, status: torch.Tensor | None) -> str:
    """The stop reason's sentence, with what the problem and the numbers add (as lsqr's ``istop`` does)."""
    text = STOP_REASONS[stop]
    if stop == "converged" and run.full.residual_kind() == "normal-equations":
        text += " (of the normal equations: the equation has no exact solution, the answer is the least-squares one)"
    if status is not None and stop != "converged":
        done = int((status == 0).sum())
        text += f"; {done} of {status.numel()} batch members converged (Result.batch_status)"
    return text
