r"""Whole runs in one kernel call: what :meth:`~gdla.Optimizer.advance` of ``momentum``, ``adam`` and ``sgd`` runs
under ``backend="fused"``.

A problem that declares a fused loss (:meth:`~gdla.Problem.fused_loss`) lets these methods run many
steps in one call of a compiled kernel (``gdla.ops.inverse_momentum_run``, ``inverse_adam_run``,
``svd_sgd_run``, ``masked_sgd_run``), bit for bit what as many single steps give: a single step is
the same kernel run for one step. :class:`WholeRun` is the plumbing they share (the rates of a
schedule replayed for the kernel, the divergence reference, the residual test the inverse kernels
make on their own losses); :class:`SGDWholeRun` and :class:`AdamWholeRun` are the two
``torch.optim`` methods' kernels, kept apart from their declarations in
:mod:`gdla_plugins.optimizers.torch_optim`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from gdla.capabilities import InverseMSE, MaskedOperatorLoss, SvdPenaltyLoss
from gdla.optimizer import Stretch
from gdla.problem import Params, Problem
from gdla.stopping import BLOW_UP

__all__ = ["AdamWholeRun", "SGDWholeRun", "WholeRun"]


class WholeRun:
    """Mixin, before :class:`~gdla_plugins.optimizers.torch_optim.TorchOptimizer` in the bases, for a method
    with a whole-run kernel.

    Subclasses implement :meth:`_run_form` (the declared fused loss the kernel serves in this run, or
    ``None``) and :meth:`_kernel`. :meth:`step` is the kernel's one-step run where it serves the run,
    so that :meth:`advance` in bulk and step by step give the same bits.
    """

    #: The run's first loss (the kernels' divergence reference) carries from call to call.
    state_attributes: ClassVar[tuple[str, ...]] = ("_first_loss",)
    #: Whether the kernel applies the problem's projection after each of its steps (the SVD's sign fix).
    _kernel_projects: ClassVar[bool] = False
    problem: Problem
    params: Params
    backend: str
    torch_optimizer: torch.optim.Optimizer
    scheduler: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._first_loss = math.nan  # set by the first kernel run (see _scheduled)
        super().__init__(*args, **kwargs)
        self._whole_run = self._run_form()

    def _run_form(self) -> Any:
        """The problem's fused loss where this method's kernel can take the run, else ``None``."""
        raise NotImplementedError

    def _kernel(self, steps: int, stop_loss: float | None = None) -> torch.Tensor:
        """Run ``steps`` steps in one kernel call; their losses (and, with ``stop_loss``, the final iterate's)."""
        raise NotImplementedError

    def step(self) -> torch.Tensor:
        """One step: the kernel's one-step run where it serves this run, else ``torch.optim``'s."""
        if self._whole_run is None:
            return super().step()  # type: ignore[misc]
        return self._kernel(1)[0]

    def advance(self, steps: int, tol: float = 0.0) -> Stretch:
        """Up to ``steps`` steps in one kernel call where the kernel serves the run (:meth:`gdla.Optimizer.advance`).

        With ``tol > 0`` the inverse kernels test the residual themselves where the problem's
        :class:`~gdla.capabilities.InverseMSE` declares it a function of the loss (``residual_factor``):
        the residual after each step is the next step's loss, and after the last, the loss the kernel
        returns last; ``tol`` becomes the equivalent bound on the loss
        (:meth:`~gdla.capabilities.InverseMSE.loss_tolerance`), so the test is the loop's, bit for bit.
        Otherwise a run with a tolerance takes one step a call.
        """
        form = self._whole_run
        if form is None or (self.problem.needs_projection() and not self._kernel_projects):
            return super().advance(steps, tol)  # type: ignore[misc]
        if tol > 0:
            if isinstance(form, InverseMSE) and form.residual_factor is not None:
                out = self._kernel(steps, stop_loss=form.loss_tolerance(tol))
                return Stretch(out[:-1], form.residuals(out[1:]))
            steps = 1
        return Stretch(self._kernel(steps))

    def _scheduled(self, steps: int, kernel: Callable[[torch.Tensor], torch.Tensor], *, extra: int = 0) -> torch.Tensor:
        """``kernel(lrs)``, a whole-run kernel given the rate of each of the next ``steps`` steps.

        The rates are the schedule's, replayed bit for bit (:func:`gdla.schedules.upcoming_rates`);
        afterwards the schedule is moved past the steps the kernel took (its losses but the last
        ``extra`` entries, which are no steps), and the run's first loss is kept. Returns the kernel's losses.
        """
        from gdla.schedules import advance, upcoming_rates

        rates = upcoming_rates(self.scheduler, self.torch_optimizer.param_groups[0]["lr"], steps)
        losses = kernel(torch.from_numpy(rates[:steps]))
        taken = len(losses) - extra
        advance(self.scheduler, rates, taken)
        if math.isnan(self._first_loss) and taken:
            self._first_loss = float(losses[0])
        return losses

    def _inverse_run_form(self, max_n: int) -> InverseMSE | None:
        """The problem's fused inverse MSE where an inverse whole-run kernel can take this run, else ``None``.

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


class SGDWholeRun(WholeRun):
    """``sgd``'s kernels: ``gdla.ops.svd_sgd_run`` (the SVD's sign fix included) and ``masked_sgd_run``.

    They keep torch's state (``momentum_buffer``) and move the schedule as single steps would.
    """

    options: dict[str, Any]

    @property
    def _kernel_projects(self) -> bool:  # type: ignore[override]
        return isinstance(self._whole_run, SvdPenaltyLoss)

    def _run_form(self) -> SvdPenaltyLoss | MaskedOperatorLoss | None:
        """The problem's fused loss where a kernel can take the run: ``backend="fused"``, no weight decay,
        small contiguous tensors. Else ``None``."""
        form = self.problem.fused_loss()
        if self.backend != "fused" or self.options["weight_decay"] != 0:
            return None
        from gdla import limits  # the compiled extension loads only when asked for

        if isinstance(form, SvdPenaltyLoss):
            data, keys = [form.M], form.keys
            fits = form.M.dim() == 2 and max(form.M.shape) <= limits.SMALL_MAX_N
        elif isinstance(form, MaskedOperatorLoss):
            data, keys = [form.init, form.omega, form.X, form.Y], (form.key,)
            fits = form.X.dim() == 2 and form.X.shape[0] <= limits.SMALL_MAX_N
            fits = fits and form.X.shape[1] <= limits.RUN_MAX_COLUMNS and form.hops <= limits.RUN_MAX_HOPS
            fits = fits and all(t.layout == torch.strided for t in data)
        else:
            return None
        tensors = [self.params.get(key) for key in keys]
        if not fits or set(self.params) != set(keys) or any(t is None or not t.is_contiguous() for t in tensors):
            return None
        return form if all(t.is_contiguous() for t in data) else None

    def _kernel(self, steps: int, stop_loss: float | None = None) -> torch.Tensor:
        form = self._whole_run
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

        return self._scheduled(steps, kernel)


class AdamWholeRun(WholeRun):
    """``adam``'s kernel, ``gdla.ops.inverse_adam_run``, with the schedule's rate at each step.

    Serves the fused backend on a problem that declares the inverse MSE (``n <= gdla.limits.SMALL_MAX_N``) without
    weight decay or amsgrad; it keeps torch's state (``step``, ``exp_avg``, ``exp_avg_sq``).
    """

    options: dict[str, Any]

    def _run_form(self) -> InverseMSE | None:
        if self.backend != "fused" or self.options["amsgrad"] or self.options["weight_decay"] != 0:
            return None
        from gdla import limits  # the compiled extension loads only when asked for

        return self._inverse_run_form(limits.SMALL_MAX_N)

    def _kernel(self, steps: int, stop_loss: float | None = None) -> torch.Tensor:
        form = self._whole_run
        from gdla import ops

        X = self.params[form.key]
        group = self.torch_optimizer.param_groups[0]
        state = self.torch_optimizer.state[X]
        if not state:  # as torch.optim.Adam starts it
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(X, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(X, memory_format=torch.preserve_format)
        extra = int(stop_loss is not None)
        losses = self._scheduled(steps, lambda lrs: ops.inverse_adam_run(
            form.A, X, state["exp_avg"], state["exp_avg_sq"], form.side, lrs, betas=group["betas"],
            eps=group["eps"], step0=int(state["step"]), first_loss=self._first_loss, blow_up=BLOW_UP,
            stop_loss=stop_loss,
        ), extra=extra)
        state["step"] += len(losses) - extra
        return losses
