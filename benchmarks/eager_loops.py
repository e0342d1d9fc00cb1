"""Eager PyTorch loops that benchmarks time gdla against, in a module that does not import gdla.

``momentum_kernel.py --library SO`` loads an extension file of its own, which must not meet gdla's (two extensions
cannot register the same operators in one process), and still times the same eager loop as ``notebooks.py``.
"""

from __future__ import annotations

import torch


def batch_momentum_eager(A: torch.Tensor, start: torch.Tensor, steps: int) -> None:
    """``steps`` steps of ``torch.optim.SGD`` (lr 0.5, momentum 0.9) on ``Σ_b mean((A_b X_b − I)²)`` by ``torch.bmm``
    autograd: the batch of tiny inverses the way a PyTorch user writes it."""
    X = start.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([X], lr=0.5, momentum=0.9)
    eye = torch.eye(A.shape[-1])
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (torch.bmm(A, X) - eye).square().mean(dim=(-2, -1)).sum()
        loss.backward()
        optimizer.step()
