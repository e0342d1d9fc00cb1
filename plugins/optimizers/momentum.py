r"""Seed notebook 000's gradient descent with momentum, reproduced to the last bit.

The notebook kept the gradient buffer between steps: after each update it multiplied the buffer
by ``momentum`` and let the next ``backward()`` add the new gradient to it. With ``g_t`` the
gradient at step ``t`` and ``v_1 = g_1``:

.. math::

    v_t = \mu\, v_{t-1} + g_t, \qquad x_t = x_{t-1} - \mathrm{lr}\; v_t

It is the recursion of ``torch.optim.SGD(momentum=μ, dampening=0)``; :class:`SeedMomentum`
exists to round like the notebook: it forms ``lr · v`` and subtracts it (``x − (lr·v)``), where
torch's fused ``x + (−lr)·v`` may differ in the last bit.

The notebook used ``lr=0.9, momentum=0.9`` on a 4×4 ``torch.rand`` matrix. That rate suits that
matrix only; gdla's default is ``lr = 0.5 / L`` with ``L`` the curvature probed at the start
(:func:`gdla_plugins.optimizers._scales.estimate_scales`). On a quadratic the recursion
diverges once ``lr · L > 2 (1 + momentum)``, so this leaves a margin of 7.6 at ``momentum=0.9``
for losses whose curvature grows away from the start: on the ``svd`` example ``1 / L`` diverged
within 40 steps, ``0.5 / L`` reached a relative residual of 2e-9 in 10,000. On a quadratic
with ``L / λ_min < 190`` the rate per step is ``sqrt(momentum)`` either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

import gdla
from gdla.capabilities import InverseMSE
from gdla.stopping import BLOW_UP
from gdla.validation import check_positive, check_probability
from gdla_plugins.optimizers._whole_run import WholeRun
from gdla_plugins.optimizers.torch_optim import EagerOptimizer, Option, TorchOptimizer, unit_interval

__all__ = ["Momentum", "SeedMomentum"]

#: The seed notebook's settings (on its 4×4 matrix).
SEED_LR = 0.9
SEED_MOMENTUM = 0.9


class SeedMomentum(EagerOptimizer, torch.optim.Optimizer):
    r"""Heavy-ball momentum as seed 000 wrote it: :math:`v \leftarrow \mu v + g,\ x \leftarrow x - \mathrm{lr}\,v`.

    The buffer (``state[p]["velocity"]``) starts as the first gradient, undamped. Built without importing
    ``torch._dynamo`` (:class:`~gdla_plugins.optimizers.torch_optim.EagerOptimizer`).

    Args:
        params: tensors (or parameter groups) to update in place.
        lr: learning rate, > 0.
        momentum: buffer decay ``μ`` in ``[0, 1)``; 0 gives plain gradient descent.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = SEED_MOMENTUM,
        masks: dict[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        defaults = {"lr": check_positive(lr, "lr"), "momentum": check_probability(momentum, "momentum")}
        super().__init__(params, defaults)
        #: parameter -> 0/1 mask: such parameters take the fused ``gdla.ops.masked_update_`` step
        self.masks = masks or {}

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One update from the gradients in ``.grad`` (re-evaluated first by ``closure``, if given)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                velocity = state.get("velocity")
                mask = self.masks.get(param)
                if mask is not None:
                    from gdla import ops  # only reached when the fused backend was chosen

                    if velocity is None:
                        velocity = state["velocity"] = torch.zeros_like(param)
                    # v <- μ v + Ω ⊙ g; x <- x − lr v in one pass (g is already zero outside Ω)
                    ops.masked_update_(param, mask, param.grad, lr, momentum, velocity)
                    continue
                if velocity is None:
                    velocity = state["velocity"] = param.grad.detach().clone()
                else:
                    # the notebook's `grad *= momentum` then backward()'s `grad += g`, in that order
                    velocity.mul_(momentum).add_(param.grad)
                param.sub_(velocity * lr)
        return loss


class Momentum(WholeRun, TorchOptimizer):
    """Seed 000's momentum method (:class:`SeedMomentum`); option ``momentum`` (default 0.9).

    Under ``backend="fused"`` a fixed rate on a declared inverse MSE (``n <= gdla.limits.RUN_MAX_N``)
    runs whole runs in one call of ``gdla.ops.inverse_momentum_run``
    (:class:`~gdla_plugins.optimizers._whole_run.WholeRun`).
    """

    name = "momentum"
    summary = "seed 000's gradient descent with momentum: v <- momentum*v + grad, x <- x - lr*v; default lr 0.5/L"
    default_lr = 1e-2
    torch_class = SeedMomentum
    fixed_step = True
    accepted = {"momentum": Option(unit_interval, SEED_MOMENTUM)}
    lr_rule = ("inverse_lipschitz", 0.5)
    lr_units = "curvature"

    def build(self, tensors: list[torch.Tensor], lr: float | None, **options: Any) -> torch.optim.Optimizer:
        optimizer = super().build(tensors, lr, **options)
        if self.backend == "fused":  # masked parameters take the fused masked-update kernel
            masks = self.problem.update_masks()
            optimizer.masks = {self.params[key]: mask for key, mask in masks.items() if key in self.params}
        return optimizer

    def _run_form(self) -> InverseMSE | None:
        """The fused inverse MSE where the whole-run kernel serves it: a fixed rate, ``n <= gdla.limits.RUN_MAX_N``."""
        if self.backend != "fused" or self.scheduler is not None:
            return None
        from gdla import limits

        return self._inverse_run_form(limits.RUN_MAX_N)

    def _kernel(self, steps: int, stop_loss: float | None = None) -> torch.Tensor:
        """Seed 000's update, ``steps`` times in one call of ``gdla.ops.inverse_momentum_run``.

        ``stop_loss``: the kernel's residual test; the losses then end with the loss at the final iterate.
        """
        form = self._whole_run
        from gdla import ops

        X = self.params[form.key]
        state = self.torch_optimizer.state[X]  # the same velocity SeedMomentum keeps: the two paths agree
        velocity = state.get("velocity")
        started = velocity is not None
        if velocity is None:
            velocity = state["velocity"] = torch.zeros_like(X)
        group = self.torch_optimizer.param_groups[0]  # a fixed rate: the form refuses schedules
        return self._scheduled(steps, lambda lrs: ops.inverse_momentum_run(
            form.A, X, velocity, form.side, group["lr"], group["momentum"], len(lrs),
            started=started, first_loss=self._first_loss, blow_up=BLOW_UP, stop_loss=stop_loss,
        ), extra=int(stop_loss is not None))

    def unrolled(self, problem: gdla.Problem, params: gdla.Params, steps: int) -> gdla.Params:
        """``steps`` of seed 000's recursion from ``params``, out of place, for ``backward="unroll"``: that of
        ``torch.optim.SGD(momentum=μ, dampening=0)`` (the rounding of ``x − (lr·v)`` aside)."""
        from gdla.differentiation import sgd_unrolled

        group = self.torch_optimizer.param_groups[0]
        return sgd_unrolled(problem, params, steps, lr=group["lr"], momentum=group["momentum"])


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(Momentum)
