"""The solve loop: plan a run (:mod:`gdla.plan`), execute it, report it (:mod:`gdla.report`).

Execution has one path: the loop asks the optimizer to :meth:`~gdla.Optimizer.advance` up to as
many steps as nothing needs to see one by one (the whole budget, or up to where the stall test
could fire; one step when a callback, a progress bar or other ranks watch), and replays the stop
rules over the losses (and residuals) it hands back. The step-by-step run is its one-step case.
No built-in name appears here.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from gdla.agreement import tell_setup_failure
from gdla.differentiation import check_unroll
from gdla.errors import GdlaError, PluginError
from gdla.memory import allocation_error
from gdla.optimizer import Optimizer, Stretch
from gdla.plan import Plan, make_plan
from gdla.plugin_checks import blame, describe, with_distribution
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
    init: Result | Params | torch.Tensor | None = None,
    backward: str = "auto",
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
        callback: ``callback(step, loss, params)`` after every step, with the loss and the parameters in the
            caller's units (those of ``problem``: :meth:`gdla.plan.Plan.caller_view` undoes the normalisation
            exactly), as ``Result.losses`` records them; a truthy return (``bool(...)``) stops.
        progress: show a progress bar.
        patience: steps without a 0.1% improvement of the best loss or best residual before ``stalled``
            (default ``max(100, max_steps // 10)``, at most 10,000).
        distributed: shard a batched problem over the ranks of the initialised default process group
            (:mod:`gdla.distributed`); every rank gets the whole result.
        init: start from these parameters instead of the seeded start: a previous :class:`~gdla.Result` (its
            ``params``), a dict of parameter tensors in the caller's units (same names, shapes, dtype and
            device as the problem's; see :mod:`gdla.warm_start`), or one tensor for a problem with one parameter.
            Newton-Schulz uses it as ``X₀`` where ``‖I − A X₀‖ < 1`` and otherwise its safe start, saying so in
            ``Result.warnings``.
        backward: how ``Result.params`` and ``Result.solution`` depend on the problem's data that requires grad
            (see :mod:`gdla.differentiation`): ``"auto"`` (``"implicit"`` where some data requires grad, else
            ``"none"``), ``"implicit"`` (the optimality condition at the answer: cost independent of the steps),
            ``"unroll"`` (autograd through the steps taken) or ``"none"`` (detached).
        **optimizer_options: passed to the optimizer (``momentum=0.9``, ``schedule="cosine"``...).
    """
    if torch.is_inference_mode_enabled():  # gradient methods need autograd: leave inference mode for the solve
        with torch.inference_mode(False):
            return solve(
                problem, optimizer=optimizer, lr=lr, max_steps=max_steps, tol=tol, seed=seed, backend=backend,
                dtype=dtype, device=device, callback=callback, progress=progress, patience=patience,
                distributed=distributed, init=init, backward=backward, **optimizer_options,
            )
    called = time.perf_counter()
    try:
        try:
            plan = make_plan(
                problem, optimizer, lr=lr, max_steps=max_steps, tol=tol, seed=seed, backend=backend, dtype=dtype,
                device=device, callback=callback, progress=progress, patience=patience, distributed=distributed,
                options=optimizer_options, init=init, backward=backward,
            )
            opt, params = plan.start()
            if plan.backward == "unroll":
                check_unroll(opt)
            plan.advise(opt)
        except BaseException as exc:
            if distributed is True:  # the other ranks wait in a comparison before the run: they raise at once too
                tell_setup_failure(exc)
            raise
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
        blamed = blame(exc)  # raised in a plugin's method: a PluginError naming the plugin, the method and why
        if blamed is not None:
            raise blamed from exc
        raise


def execute(plan: Plan, opt: Optimizer, params: Params) -> tuple[LossHistory, str]:
    """Run ``plan`` with ``opt`` until a stop rule fires; the losses of the steps taken and the stop reason."""
    rules, budget, work, callback, sharding = plan.rules, plan.budget, plan.work, plan.callback, plan.sharding
    watched = plan.watched
    # the optimizer tests the residual itself where it can (not for a shard: the ranks decide together)
    tol = rules.tol if rules.checks_residual and sharding is None else 0.0
    # a shard's step: a failure on this rank is told to the others (at the agreement they wait in), which raise too
    guard = sharding.guard if sharding is not None else (lambda step: nullcontext())
    if sharding is not None:  # the same stop rules and agreements a step on every rank, or an InputError on each
        settings = {"optimizer": plan.method.name, "max_steps": budget, "tol": rules.tol, "patience": rules.patience}
        sharding.check_run({**settings, "callback": callback is not None})
    # after one agreement a step (loss and residual together) where no callback needs the agreed loss first
    early = sharding is not None and callback is None and rules.checks_residual

    def measured(stretch: Stretch) -> float:
        """This rank's residual after the step."""
        if stretch.residuals is not None:
            return float(loss_array(stretch.residuals)[0])
        return float(work.residual(params))

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
                with guard(taken + 1):
                    stretch = _checked(opt, want, tol)
                values = loss_array(stretch.losses)
                count = len(values)
                if count > 1:  # a bulk call: size the next one to return within STRETCH_SECONDS
                    per_step = (time.perf_counter() - began) / count
                    cap = max(1, min(2**40, int(STRETCH_SECONDS / max(per_step, 1e-12))))
                if count == 1:  # the plain float path: a watched run's step costs little
                    loss = float(values[0])
                    residual = None
                    if sharding is not None:  # the loss summed over the ranks (and the worst residual, early)
                        with guard(taken + 1):
                            local = measured(stretch) if early and math.isfinite(loss) else math.nan
                        agreed = sharding.agree(taken + 1, loss=loss, residual=local)
                        loss, residual = agreed.loss, agreed.residual if early else None
                    losses.append(loss)
                    taken += 1
                    if bar is not None:
                        bar.update(1)
                        if taken % 50 == 0:
                            bar.set_postfix(loss=f"{loss:.3e}", refresh=False)
                    hit = rules.on_loss(taken, loss)
                    if hit is None and callback is not None:
                        with guard(taken):
                            asked = bool(callback(taken, *plan.caller_view(loss, params)))  # in the caller's units
                            local = measured(stretch) if sharding is not None and rules.checks_residual else math.nan
                        if sharding is not None:  # one rank's stop stops them all, with the worst residual
                            agreed = sharding.agree(taken, residual=local, stop=asked)
                            asked, residual = agreed.stop, agreed.residual if rules.checks_residual else None
                        if asked:
                            hit = "callback"
                    if hit is None and rules.checks_residual:
                        if residual is None:
                            residual = measured(stretch)
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
                f"{describe(opt)}: advance() ran {len(values)} steps, past step {taken + hit[0] + 1}, "
                f"where the loop stops ({hit[1]}); it must stop there itself"
            )
    if hit is None and diverged is not None:
        hit = (diverged - 1, "diverged")
    return hit


def _checked(opt: Optimizer, want: int, tol: float) -> Stretch:
    """``opt.advance(want, tol)`` if it keeps :meth:`~gdla.Optimizer.advance`'s rules, else a :class:`PluginError`
    naming the optimizer (its distribution too), the rule and what it returned."""
    try:
        stretch = opt.advance(want, tol)
    except PluginError as exc:  # the default advance's check of step() (in gdla.optimizer) names no distribution
        named = with_distribution(exc, opt)
        if named is None:
            raise
        raise named from exc

    def broken(rule: str) -> PluginError:  # the message is built only for a broken rule (naming costs a lookup)
        return PluginError(f"{describe(opt)}: advance({want}, tol={tol:g}) {rule}")

    if not isinstance(stretch, Stretch):
        raise broken(f"must return a gdla.Stretch, returned {stretch!r}")
    count = stretch.losses.numel() if isinstance(stretch.losses, torch.Tensor) else -1
    if count < 1 or count > want or stretch.losses.dim() != 1:
        raise broken(f"must return a 1-D tensor of 1 to {want} losses, returned {stretch.losses!r}")
    if stretch.residuals is not None and stretch.residuals.shape != stretch.losses.shape:
        raise broken(
            f"must return one residual per step or None, returned {tuple(stretch.residuals.shape)} "
            f"residuals for {count} steps"
        )
    if stretch.residuals is None and tol > 0 and count > 1:
        raise broken(f"ran {count} steps without testing the residual; with tol > 0 it must run one")
    return stretch


def _progress_bar(total: int, *, enabled: bool) -> Any:
    """A tqdm bar on ``sys.stderr``; none where there is no stderr to draw on (``None`` or closed)."""
    if not enabled or sys.stderr is None or getattr(sys.stderr, "closed", False):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", mininterval=0.2, leave=False)
