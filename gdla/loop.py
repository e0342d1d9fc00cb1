"""The solve loop: one problem, one optimizer, iterate until a stop rule fires."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from gdla.backend import resolve_backend
from gdla.errors import ConvergenceWarning, GdlaError, InputError
from gdla.optimizer import Optimizer
from gdla.problem import Params, Problem
from gdla.registry import get_optimizer, get_problem, optimizers
from gdla.result import STOP_REASONS, Result
from gdla.validation import (
    as_device,
    as_dtype,
    check_callable,
    check_int,
    check_nonnegative,
    check_positive,
)

__all__ = ["default_tol", "solve"]

#: Loss growth over the starting loss that counts as divergence.
BLOW_UP = 1e12
#: A stall: neither the best loss nor the best residual improved by this fraction in ``patience`` steps.
STALL_IMPROVEMENT = 1e-3

Callback = Callable[[int, float, Params], Any]


def default_tol(dtype: torch.dtype) -> float:
    """Relative-residual tolerance used when ``tol`` is not given: about 100 ulps of ``dtype``."""
    return 1e-10 if dtype == torch.float64 else 1e-5


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
        backend: ``"auto"``, ``"autograd"`` or ``"fused"`` (see :mod:`gdla.backend`).
        dtype, device: convert the problem's data first (``None`` keeps them).
        callback: ``callback(step, loss, params)`` after every step; returning ``True`` stops.
        progress: show a progress bar.
        patience: steps without a 0.1% improvement of the best loss or best residual before ``stalled``
            (default ``max(100, max_steps // 10)``).
        **optimizer_options: passed to the optimizer (``momentum=0.9``, ``schedule="cosine"``...).
    """
    called = time.perf_counter()
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
    steps_budget = check_int(
        optimizer_cls.default_max_steps if max_steps is None else max_steps, "max_steps", minimum=1
    )
    tol = default_tol(problem.dtype) if tol is None else check_nonnegative(tol, "tol")
    seed = check_int(seed, "seed")
    if not -(2**63) <= seed < 2**64:
        raise InputError(f"seed: expected an integer that fits in 64 bits, received {seed}")
    check_callable(callback, "callback")
    patience = max(100, steps_budget // 10) if patience is None else check_int(patience, "patience", minimum=1)
    chosen_backend = resolve_backend(backend, problem)

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        params = problem.init_params(generator)
        opt = optimizer_cls(problem, params, lr=lr, backend=chosen_backend, max_steps=steps_budget, **optimizer_options)

    notes: list[str] = []
    expected = opt.expected_steps(tol) if tol > 0 else None
    if expected is not None and expected > steps_budget:
        need = (
            "is expected to diverge at this learning rate"
            if math.isinf(expected)
            else f"is expected to need about {expected:.3g} steps to reach tol={tol:g} on this problem, "
            f"more than max_steps={steps_budget}"
        )
        text = f"optimizer {opt.name!r} {need}; {_better_method(problem, opt, tol, steps_budget)}"
        notes.append(text)
        warnings.warn(text, ConvergenceWarning, stacklevel=2)

    bar = _progress_bar(steps_budget, enabled=progress)
    losses: list[float] = []
    best_loss = best_residual = mark_loss = mark_residual = math.inf
    mark_step = 0
    stop = "max_steps"
    start = time.perf_counter()
    setup_seconds = start - called
    with torch.no_grad():
        for step in range(1, steps_budget + 1):
            loss = float(opt.step())
            problem.project(params)
            losses.append(loss)
            if bar is not None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss:.3e}", refresh=False)
            if not math.isfinite(loss) or (step > 1 and loss > BLOW_UP * max(losses[0], 1e-30)):
                stop = "diverged"
                break
            if callback is not None and callback(step, loss, params) is True:
                stop = "callback"
                break
            if tol > 0:
                residual = float(problem.residual(params))
                if residual <= tol:
                    stop = "converged"
                    break
                # Progress is measured against a checkpoint, so slow steady progress counts; either
                # the loss or the residual may make it (a least-squares loss levels off at its
                # nonzero minimum while the residual still falls).
                best_loss, best_residual = min(best_loss, loss), min(best_residual, residual)
                if best_loss < mark_loss * (1 - STALL_IMPROVEMENT) or best_residual < mark_residual * (
                    1 - STALL_IMPROVEMENT
                ):
                    mark_loss, mark_residual, mark_step = best_loss, best_residual, step
                elif step - mark_step >= patience:
                    stop = "stalled"
                    break
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()

    params_out = {key: value.detach() for key, value in params.items()}
    finite = all(bool(torch.isfinite(v).all()) for v in params_out.values())
    metrics = problem.metrics(params_out) if finite else {"residual": math.nan, "error": math.nan}
    settings = {"lr": opt.lr, "max_steps": steps_budget, "tol": tol, "seed": seed, "dtype": problem.dtype}
    settings.update({f"optimizer.{k}": v for k, v in opt.describe().items() if k not in ("name", "lr")})
    return Result(
        solution=problem.solution(params_out),
        params=params_out,
        losses=losses,
        steps=len(losses),
        stop_reason=stop,
        seconds=seconds,
        setup_seconds=setup_seconds,
        backend=opt.ran_backend,
        metrics=metrics,
        problem=problem.name,
        optimizer=opt.name,
        message=STOP_REASONS[stop],
        condition=problem.condition_estimate(),
        settings=settings,
        warnings=notes,
    )


def _bad_optimizer(value: Any) -> Any:
    raise InputError(f"optimizer: expected a registered optimizer name (str), received {type(value).__name__}")


def _better_method(problem: Problem, opt: Optimizer, tol: float, budget: int) -> str:
    """Advice for a run that will not converge: a method expected to make it within ``budget``."""
    running = {opt.name, opt.describe().get("method")}
    for candidate in ("newton-schulz", "cg", "line-search", "heavy-ball", "lbfgs"):
        if candidate in running or candidate not in optimizers():
            continue
        cls = get_optimizer(candidate)
        if cls.unsupported_reason(problem) is not None:
            continue
        try:  # on copies: constructors may write a starting point into the parameters
            trial = cls(problem, {k: v.clone() for k, v in opt.params.items()}, max_steps=budget)
            need = trial.expected_steps(tol)
        except GdlaError:
            continue
        if need is not None and need <= budget:
            return f"optimizer={candidate!r} should need about {need:.3g} steps"
    return "raise max_steps"


def _progress_bar(total: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", mininterval=0.2, leave=False)
