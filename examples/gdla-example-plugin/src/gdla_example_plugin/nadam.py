r"""NAdam: Adam with Nesterov momentum, as a gdla optimizer plugin.

A thin adapter to ``torch.optim.NAdam`` through :class:`gdla.GradientOptimizer`, which feeds it
``problem.loss_and_grad`` and adds the learning-rate schedules. With gradient ``g_t``,

.. math::

    m_t = β_1 m_{t-1} + (1-β_1) g_t, \quad v_t = β_2 v_{t-1} + (1-β_2) g_t^2, \quad
    x_{t+1} = x_t - \text{lr}\, \frac{μ_{t+1} \hat m_t + (1 - μ_t)\, g_t / (1 - \prod μ)}{\sqrt{\hat v_t} + ε}

(``μ_t`` the momentum schedule set by ``momentum_decay``; see the PyTorch documentation).
Its options are checked here, so a wrong one is a clear error rather than a ``TypeError``
deep inside ``torch.optim``.
"""

from __future__ import annotations

from typing import Any

import torch

import gdla
from gdla.errors import InputError
from gdla.validation import check_nonnegative, check_positive, check_probability

__all__ = ["NAdam"]

OPTIONS = ("betas", "eps", "momentum_decay", "weight_decay", "decoupled_weight_decay")


class NAdam(gdla.GradientOptimizer):
    """``torch.optim.NAdam``; options ``betas``, ``eps``, ``momentum_decay``, ``weight_decay``,
    ``decoupled_weight_decay`` (and gdla's ``schedule``/``schedule_options``)."""

    name = "nadam"
    summary = "Adam with Nesterov momentum (torch.optim.NAdam)"
    default_lr = 1e-2
    default_max_steps = 20_000

    def build(self, tensors: list[torch.Tensor], lr: float | None, **options: Any) -> torch.optim.Optimizer:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise InputError(f"nadam: unknown option(s) {', '.join(unknown)}; expected some of {', '.join(OPTIONS)}")
        betas = options.get("betas", (0.9, 0.999))
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise InputError(f"betas: expected a pair of numbers in [0, 1), received {betas!r}")
        beta1, beta2 = (check_probability(b, "betas") for b in betas)
        decoupled = options.get("decoupled_weight_decay", False)
        if not isinstance(decoupled, bool):
            raise InputError(f"decoupled_weight_decay: expected True or False, received {decoupled!r}")
        return torch.optim.NAdam(
            tensors,
            lr=check_positive(lr, "lr"),
            betas=(beta1, beta2),
            eps=check_positive(options.get("eps", 1e-8), "eps"),
            momentum_decay=check_nonnegative(options.get("momentum_decay", 4e-3), "momentum_decay"),
            weight_decay=check_nonnegative(options.get("weight_decay", 0.0), "weight_decay"),
            decoupled_weight_decay=decoupled,
        )


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    register(NAdam)
