"""The solve loop: plan a run (:mod:`gdla.plan`), execute it, report it (:mod:`gdla.report`).

Execution has one path: the loop asks the optimizer to :meth:`~gdla.Optimizer.advance` up to as
many steps as nothing needs to see one by one (the whole budget, or up to where the stall test
could fire; one step when a callback, a progress bar or other ranks watch), and replays the stop
rules over the losses (and residuals) it hands back. The step-by-step run is its one-step case.
No built-in name appears here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from gdla.errors import GdlaError, PluginError
from gdla.memory import allocation_error
from gdla.optimizer import Optimizer, Stretch
from gdla.plan import Plan, make_plan
from gdla.problem import Params, Problem
from gdla.report import report
from gdla.result import Result
from gdla.stopping import BLOW_UP, LossHistory, default_tol, loss_array

__all__ = ["BLOW_UP", "default_tol", "execute", "solve"]

Callback = Callable[[int, float, Params], Any]

#: Unknown-steps (parameters × steps) the first call of a bulk run may take, before the loop knows what a
#: step costs: about 2e7 at a nanosecond or so each.
FIRST_STRETCH_WORK = 2**24
#: About how long one call of ``advance`` may run, so that Ctrl-C (handled between calls) stops a whole-run
#: kernel within a fraction of a second; the steps a call takes never change the bits (``advance(n)`` is ``n``
#: calls of ``advance(1)``).
STRETCH_SECONDS = 0.25


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
        callback: ``callback(step, loss, params)`` after every step, with the parameters of the problem the
            optimizer sees (normalised units: see :meth:`~gdla.Problem.normalized`); a truthy return stops.
        progress: show a progress bar.
        patience: steps without a 0.1% improvement of the best loss or best residual before ``stalled``
            (default ``max(100, max_steps // 10)``, at most 10,000).
        distributed: shard a batched problem over the ranks of the initialised default process group
            (:mod:`gdla.distributed`); every rank gets the whole result.
        **optimizer_options: passed to the optimizer (``momentum=0.9``, ``schedule="cosine"``...).
    """
    if torch.is_inference_mode_enabled():  # gradient methods need autograd: leave inference mode for the solve
        with torch.inference_mode(False):
            return solve(
                problem, optimizer=optimizer, lr=lr, max_steps=max_steps, tol=tol, seed=seed, backend=backend,
                dtype=dtype, device=device, callback=callback, progress=progress, patience=patience,
                distributed=distributed, **optimizer_options,
            )
    called = time.perf_counter()
    try:
        plan = make_plan(
            problem, optimizer, lr=lr, max_steps=max_steps, tol=tol, seed=seed, backend=backend, dtype=dtype,
            device=device, callback=callback, progress=progress, patience=patience, distributed=distributed,
            options=optimizer_options,
        )
        opt, params = plan.start()
        plan.advise(opt)
        start = time.perf_counter()
        losses, stop = execute(plan, opt, params)
        seconds = time.perf_counter() - start
        return report(plan, opt, params, losses, stop, setup_seconds=start - called, seconds=seconds)
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


def execute(plan: Plan, opt: Optimizer, params: Params) -> tuple[LossHistory, str]:
    """Run ``plan`` with ``opt`` until a stop rule fires; the losses of the steps taken and the stop reason."""
    rules, budget, work, callback, sharding = plan.rules, plan.budget, plan.work, plan.callback, plan.sharding
    watched = plan.watched
    # the optimizer tests the residual itself where it can (not for a shard: the ranks decide together)
    tol = rules.tol if rules.checks_residual and sharding is None else 0.0
    losses = LossHistory()
    bar = _progress_bar(budget, enabled=plan.progress)
    unknowns = sum(value.numel() for value in params.values())
    taken, stop, cap = 0, "max_steps", max(1, FIRST_STRETCH_WORK // max(unknowns, 1))
    try:
        with torch.no_grad():
            while taken < budget:
                if watched:
                    want = 1
                elif rules.checks_residual:
                    want = min(budget - taken, rules.steps_before_stall(taken), cap)
                else:
                    want = min(budget - taken, cap)
                began = time.perf_counter()
                stretch = _checked(opt.advance(want, tol), opt, want, tol)
                values = loss_array(stretch.losses)
                count = len(values)
                if count > 1:  # a bulk call: size the next one to return within STRETCH_SECONDS
                    per_step = (time.perf_counter() - began) / count
                    cap = max(1, min(2**40, int(STRETCH_SECONDS / max(per_step, 1e-12))))
                if count == 1:  # the plain float path: a watched run's step costs little
                    loss = float(values[0])
                    if sharding is not None:
                        loss = sharding.reduce_loss(loss)
                    losses.append(loss)
                    taken += 1
                    if bar is not None:
                        bar.update(1)
                        if taken % 50 == 0:
                            bar.set_postfix(loss=f"{loss:.3e}", refresh=False)
                    hit = rules.on_loss(taken, loss)
                    if hit is None and callback is not None:
                        asked = bool(callback(taken, loss, params))
                        if sharding is not None:  # one rank's stop stops them all (none waits forever)
                            asked = sharding.any_rank(asked)
                        if asked:
                            hit = "callback"
                    if hit is None and rules.checks_residual:
                        if stretch.residuals is not None:
                            residual = float(loss_array(stretch.residuals)[0])
                        else:
                            residual = float(work.residual(params))
                        if sharding is not None:
                            residual = sharding.reduce_residual(residual)
                        hit = rules.on_residual(taken, loss, residual)
                    if hit is not None:
                        stop = hit
                        break
                    continue
                hit_at = _replay(plan, opt, stretch, values, taken)
                if hit_at is not None:
                    position, stop = hit_at
                    losses.extend(values[: position + 1])
                    taken += position + 1
                    break
                losses.extend(values)
                taken += count
    finally:
        if bar is not None:
            bar.close()
    return losses, stop


def _replay(plan: Plan, opt: Optimizer, stretch: Stretch, values: Any, taken: int) -> tuple[int, str] | None:
    """The stop rules over a stretch of several steps: where the first stop falls in it, and why, or ``None``.

    The loop's order per step: the loss rule, then the residual's; a diverged step ends the replay.
    """
    rules = plan.rules
    diverged = rules.on_bulk(values, first_step=taken + 1)
    upto = len(values) if diverged is None else diverged - 1
    hit = None
    if rules.checks_residual:
        residuals = loss_array(stretch.residuals)  # present: _checked refused a stretch without them
        hit = rules.on_residuals(taken + 1, values[:upto].tolist(), residuals[:upto].tolist())
        if hit is not None and hit[0] + 1 < len(values):  # the parameters are those after the last step
            raise PluginError(
                f"optimizer {opt.name!r}: advance() ran {len(values)} steps, past step {taken + hit[0] + 1}, "
                f"where the loop stops ({hit[1]}); it must stop there itself"
            )
    if hit is None and diverged is not None:
        hit = (diverged - 1, "diverged")
    return hit


def _checked(stretch: Any, opt: Optimizer, want: int, tol: float) -> Stretch:
    """``stretch`` if it keeps :meth:`~gdla.Optimizer.advance`'s rules, else a :class:`PluginError` naming the rule."""
    cls = type(opt)
    where = f"optimizer {opt.name!r} ({cls.__module__}.{cls.__qualname__}): advance({want}, tol={tol:g})"
    if not isinstance(stretch, Stretch):
        raise PluginError(f"{where} must return a gdla.Stretch, returned {stretch!r}")
    count = stretch.losses.numel() if isinstance(stretch.losses, torch.Tensor) else -1
    if count < 1 or count > want or stretch.losses.dim() != 1:
        raise PluginError(f"{where} must return a 1-D tensor of 1 to {want} losses, returned {stretch.losses!r}")
    if stretch.residuals is not None and stretch.residuals.shape != stretch.losses.shape:
        raise PluginError(
            f"{where} must return one residual per step or None, returned {tuple(stretch.residuals.shape)} "
            f"residuals for {count} steps"
        )
    if stretch.residuals is None and tol > 0 and count > 1:
        raise PluginError(f"{where} ran {count} steps without testing the residual; with tol > 0 it must run one")
    return stretch


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


def _progress_bar(total: int, *, enabled: bool) -> Any:
    """A tqdm bar on ``sys.stderr``; none where there is no stderr to draw on (``None`` or closed)."""
    if not enabled or sys.stderr is None or getattr(sys.stderr, "closed", False):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", mininterval=0.2, leave=False)
