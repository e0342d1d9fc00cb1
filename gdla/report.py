"""The report of a run: what :func:`gdla.solve` hands back, in the caller's units, as a :class:`~gdla.Result`.

It reads the plan (for ``Result.settings``), the executed steps and the final parameters; relative
metrics are computed in the normalised units, where nothing over- or underflows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from gdla.declared_units import unconfirmed
from gdla.differentiation import differentiable_params, solution_of
from gdla.errors import InputError
from gdla.mesh import full_tensor
from gdla.optimizer import Optimizer
from gdla.plan import Plan
from gdla.plugin_checks import checked_condition, checked_metrics
from gdla.problem import Params, Problem
from gdla.result import STOP_REASONS, Metrics, Result
from gdla.stopping import LossHistory

__all__ = ["report"]


def report(
    plan: Plan, opt: Optimizer, params: Params, losses: LossHistory, stop: str, *, setup_seconds: float, seconds: float
) -> Result:
    """The :class:`~gdla.Result` of ``plan`` run by ``opt`` from ``params`` (now the final ones)."""
    began = time.perf_counter()
    work_params = {key: value.detach() for key, value in params.items()}
    if plan.sharding is not None:  # every rank reports the whole batch
        work_params = plan.sharding.gather_params(work_params)
    held = work_params  # as the problem holds them (a DTensor stays one: its loss runs on the mesh)
    work_params = {key: full_tensor(value) for key, value in work_params.items()}  # a DTensor: whole, every rank
    params_out = plan.restore(work_params)
    members, status, finite = _batch_status(plan.full, work_params, plan.rules.tol)
    notes = list(plan.notes)
    if stop == "converged" and finite and plan.full is plan.problem:  # solved as given: confirm from its form
        doubt = unconfirmed(plan.full, work_params, plan.rules.tol)
        if doubt is not None:
            stop = "stalled"
            notes.append(doubt)
    steps = len(losses)
    differentiable = plan.backward != "none"
    if differentiable:  # the answer with a grad_fn to the problem's data (gdla.differentiation)
        params_out = differentiable_params(plan, opt, params_out, steps, notes)
    # the last entry, at the answer: known, or computed now on every rank of a sharded run, or else when first read
    known = _known_loss(plan, opt, held) if finite else math.nan
    if known is not None:
        losses.append(known)
    losses.scale_by_power_of_two(-plan.loss_exponent)  # recorded in the normalised units: into the caller's
    last = None if known is not None else _loss_on_read(plan.full, held)
    if finite:
        metrics = Metrics(_guarded(checked_metrics(plan.problem, plan.full.metrics(work_params)), plan.full), notes)
    else:
        notes.append("the parameters are not finite: every metric is NaN")
        metrics = Metrics({"residual": math.nan, "error": math.nan})
    return Result(
        solution=solution_of(plan.problem, params_out, differentiable),
        params=params_out,
        losses=losses.view(last, -plan.loss_exponent),
        steps=steps,
        stop_reason=stop,
        seconds=seconds,
        setup_seconds=setup_seconds,
        summary_seconds=time.perf_counter() - began,
        backend=plan.backend,
        metrics=metrics,
        problem=plan.problem.name,
        optimizer=plan.requested,
        message=_message(plan, stop, status),
        condition=_condition_on_read(plan.problem),
        settings=settings(plan, opt),
        warnings=notes,
        batch_status=status,
        member_residuals=members,
    )


def _guarded(
    figures: dict[str, Any], problem: Problem, what: str = "metrics", params: Params | None = None
) -> dict[str, Any]:
    """``figures`` whose deferred ones refuse to run once the problem's data changed in place since the solve.

    A deferred figure (an error against a reference) reads the problem's tensors when it is read; the caller
    may have changed them since (``A.copy_(...)``), and the figure would then describe other data. Tensor
    version counters tell: such a read is an :class:`InputError` naming the tensors, never a silent answer
    about different data.
    """
    data = {key: value for key, value in problem._data().items() if not value.is_inference()}
    data.update({f"the answer's {key!r}": value for key, value in (params or {}).items() if not value.is_inference()})
    versions = {key: value._version for key, value in data.items()}

    def guard(compute: Callable[[], Any]) -> Callable[[], Any]:
        def read() -> Any:
            changed = sorted(key for key, value in data.items() if value._version != versions[key])
            if changed:
                raise InputError(
                    f"{what}: expected the data that was solved, received problem {problem.name!r} with "
                    f"{', '.join(changed)} changed in place since the solve; read the {what} before changing the "
                    "data, or solve again"
                )
            return compute()

        return read

    return {key: guard(value) if callable(value) else value for key, value in dict.items(figures)}


def _condition_on_read(problem: Problem) -> Callable[[], float | None]:
    """``Result.condition``, computed when first read (the exact estimate may cost a factorisation: at n = 1024,
    six products, which a caller who never reads it should not pay), of the data that was solved."""
    return _guarded({"condition": lambda: checked_condition(problem)}, problem, "condition")["condition"]


def _known_loss(plan: Plan, opt: Optimizer, params: Params) -> float | None:
    """The loss at ``params`` (the answer) where it is known now: a method whose last call already evaluated it there
    (a whole-run kernel's final pass) says so in its ``final_loss`` attribute (a float, else ``None``), and a sharded
    run computes it now, its ranks together (a shard's own is its part); else ``None``: computed when first read."""
    if plan.sharding is not None:
        return _loss_at(plan.full, params)
    return opt.final_loss if isinstance(opt.final_loss, float) else None


def _loss_on_read(problem: Problem, params: Params) -> Callable[[], float]:
    """The loss at the answer, computed when ``Result.losses`` is first read (at n = 1024 a product, which a caller
    who never reads it should not pay), of the data and the answer that were solved."""
    return _guarded({"losses": lambda: _loss_at(problem, params)}, problem, "losses", params)["losses"]


def _loss_at(problem: Problem, params: Params) -> float:
    """The loss at ``params``, as the run's losses were recorded: in the normalised units, the whole batch's (a sum
    over members, as the ranks' losses are agreed)."""
    with torch.no_grad():
        return float(problem.loss(params))


def settings(plan: Plan, opt: Optimizer) -> dict[str, object]:
    """``Result.settings``: the plan's decisions (in the data's units) and the method's own facts."""
    out: dict[str, object] = {
        "lr": plan.reported_lr(opt.lr),
        "max_steps": plan.budget,
        "tol": plan.rules.tol,
        "seed": plan.seed,
        "dtype": plan.problem.dtype,
    }
    if plan.reason is not None:  # "auto": what it picked and why
        out["optimizer.method"] = plan.method.name
        out["optimizer.reason"] = plan.reason
    out.update({f"optimizer.{k}": v for k, v in opt.describe().items() if k not in ("name", "lr")})
    return out


def _batch_status(
    problem: Problem, params: Params, tol: float
) -> tuple[torch.Tensor | None, torch.Tensor | None, bool]:
    """Each member's residual and verdict (0 converged, 1 not converged, 2 non-finite), where declared, and
    whether every parameter is finite."""
    members = problem.member_residuals(params)
    if members is None or members.dim() == 0:
        return None, None, all(_all_finite(value) for value in params.values())
    members = members.detach()
    finite, finite_members = True, None  # None: every member's parameters are finite
    for value in params.values():
        if value.shape[: members.dim()] == members.shape:
            if _all_finite(value):  # one reduction over the whole tensor: the usual case needs no row-wise pass
                continue
            rows = _finite_rows(value.flatten(members.dim()))
            finite_members = rows if finite_members is None else finite_members & rows
            finite = finite and bool(rows.all())
        else:
            finite = finite and _all_finite(value)
    status = (members > tol).view(torch.int8)  # 0 where members <= tol (a bool's bytes); NaN members: 2 below
    if finite_members is not None or not _all_finite(members):  # (the usual case: nothing to mark)
        healthy = torch.isfinite(members) if finite_members is None else finite_members & torch.isfinite(members)
        status.masked_fill_(~healthy, 2)
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


def _message(plan: Plan, stop: str, status: torch.Tensor | None) -> str:
    """The stop reason's sentence, with what the problem and the numbers add (as lsqr's ``istop`` does)."""
    text = STOP_REASONS[stop]
    if stop == "converged" and plan.full.residual_kind() == "normal-equations":
        text += " (of the normal equations: the equation has no exact solution, the answer is the least-squares one)"
    if status is not None and stop != "converged":
        done = int((status == 0).sum())
        text += f"; {done} of {status.numel()} batch members converged (Result.batch_status)"
    return text
