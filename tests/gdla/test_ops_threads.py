"""The fused kernels give the same bits at any thread count (their reductions have a fixed order)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

ops = pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")


def at_threads(count: int, fn: Callable[[], object]) -> object:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


def same_bits(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)  # type: ignore[arg-type]
    return all(same_bits(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]


def _cases() -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(300, 300, generator=g, dtype=torch.float64)
    M = torch.randn(300, 300, generator=g, dtype=torch.float64)
    batch = torch.eye(4) + 0.2 * torch.randn(20_000, 4, 4, generator=g)
    U, s, V = (torch.randn(300, 20, generator=g), torch.rand(20, generator=g), torch.randn(250, 20, generator=g))
    target = torch.randn(300, 250, generator=g)
    omega = (torch.rand(400, 400, generator=g) > 0.5).float()
    W, G = torch.randn(400, 400, generator=g), torch.randn(400, 400, generator=g)

    def masked() -> tuple[torch.Tensor, torch.Tensor]:
        Wc, buf = W.clone(), torch.zeros_like(W)
        for _ in range(3):
            ops.masked_update_(Wc, omega, G, 0.1, 0.9, buf)
        return Wc, buf

    def momentum() -> tuple[torch.Tensor, torch.Tensor]:
        X, buf = batch.mT.contiguous() * 0.2, torch.zeros_like(batch)
        return ops.inverse_momentum_run(batch, X, buf, "right", 0.3, 0.9, 20, started=False), X

    return {
        "inverse_mse_and_grad": lambda: ops.inverse_mse_and_grad(big, M, "both"),
        "svd_loss_and_grad": lambda: ops.svd_loss_and_grad(target, U, s, V, 0.01, 0.01),
        "masked_hadamard": lambda: ops.masked_hadamard(W, omega, G),
        "masked_update_": masked,
        "small_inverse_newton_schulz": lambda: ops.small_inverse_newton_schulz(batch, None, 30, 1e-6),
        "inverse_momentum_run": momentum,
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_one_and_two_threads_agree_bitwise(name: str) -> None:
    fn = _cases()[name]
    assert same_bits(at_threads(1, fn), at_threads(2, fn))
