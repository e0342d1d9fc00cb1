"""gdla's custom ops under torch.library.opcheck and torch.compile(fullgraph=True).

opcheck verifies the schema (mutation annotations), the fake kernels against the real ones, and
the autograd registrations; the compile tests run whole gradient steps through dynamo and AOT
autograd, once with the "aot_eager" backend and once with "inductor". Kept few and small: each
compile costs seconds on two cores.
"""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

ops = pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")

CUDA_READY = torch.cuda.is_available() and ops.has_cuda_kernels()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA device")]),
]


def _rand(*shape: int, device: str, grad: bool = False) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, device=device).requires_grad_(grad)


def _samples(device: str) -> list[tuple[str, tuple]]:
    """(op name, arguments) pairs covering every op, batched and not, with and without grad."""
    A, M = _rand(2, 4, 3, device=device, grad=True), _rand(2, 3, 4, device=device, grad=True)
    S = _rand(3, 3, device=device, grad=True)
    U, G, buf = _rand(4, 5, device=device), _rand(4, 5, device=device), _rand(4, 5, device=device)
    omega = (torch.rand(4, 5, device=device) > 0.5).double()
    small = torch.eye(3, dtype=torch.float64, device=device) + 0.1 * _rand(5, 3, 3, device=device)
    svd = [_rand(5, 4, device=device, grad=True), _rand(5, 2, device=device, grad=True)]
    svd += [_rand(2, device=device, grad=True), _rand(4, 2, device=device, grad=True)]
    cpu_only = [("small_inverse_newton_schulz_run", (small, small.mT.contiguous(), 6, 1e-8, float("nan"), 1e12, True))]
    return (cpu_only if device == "cpu" else []) + [
        ("inverse_mse", (A, M, "right")),
        ("inverse_mse", (S, S.detach().clone().requires_grad_(True), "both")),
        ("inverse_mse_and_grad", (A.detach(), M.detach(), "left")),
        ("inverse_mse_backward", (_rand(device=device), A.detach(), M.detach(), "right", True)),
        ("inverse_mse_backward", (_rand(device=device), S.detach(), S.detach(), "both", False)),
        ("masked_hadamard", (U.clone().requires_grad_(True), omega, G.clone().requires_grad_(True))),
        ("masked_update_", (U, omega, G, 0.1, 0.9, buf)),
        ("masked_update_", (U, omega, G, 0.1, 0.0, None)),
        ("svd_loss", (*svd, 0.3, 0.1)),
        ("svd_loss_and_grad", (*(t.detach() for t in svd), 0.3, 0.1)),
        ("small_inverse_residuals", (small, small.mT.contiguous(), "right")),
        ("small_inverse_residuals", (small, small.mT.contiguous(), "left")),
        ("small_inverse_newton_schulz", (small, None, 30, 1e-10)),
        ("small_inverse_newton_schulz", (small, small.mT.contiguous(), 3, 0.0)),
        ("small_inverse_momentum", (small, torch.zeros_like(small), 0.2, 0.5, 10)),
        ("inverse_momentum_run", (small, small.mT.contiguous(), torch.zeros_like(small), "left", 0.2, 0.5, 10,
                                  False, float("nan"), 1e12)),
        ("inverse_momentum_run", (small[0], small[0].clone(), torch.ones_like(small[0]), "both", 0.1, 0.0, 3,
                                  True, 1.0, 1e12)),
        ("inverse_adam_run", (small, small.mT.contiguous(), torch.zeros_like(small), torch.zeros_like(small), "right",
                              torch.linspace(0.1, 0.01, 7, dtype=torch.float64), 0.9, 0.999, 1e-8, 0, float("nan"),
                              1e12)),
        ("inverse_adam_run", (small[0], small[0].clone(), torch.ones_like(small[0]), torch.ones_like(small[0]), "both",
                              torch.full((3,), 0.05, dtype=torch.float64), 0.5, 0.9, 1e-6, 4, 1.0, 1e12)),
        ("inverse_momentum_run", (small[1], small[1].mT.contiguous(), torch.zeros_like(small[1]), "right", 0.3, 0.8, 40,
                                  False, float("nan"), 1e12, 1e-3)),
        ("inverse_adam_run", (small[1], small[1].mT.contiguous(), torch.zeros_like(small[1]),
                              torch.zeros_like(small[1]), "left", torch.full((6,), 0.05, dtype=torch.float64), 0.9,
                              0.999, 1e-8, 0, float("nan"), 1e12, 0.0)),
        ("masked_sgd_run", (S.detach(), (S.detach() > 0).double(), _rand(3, 2, device=device),
                            _rand(3, 2, device=device), torch.zeros(3, 3, dtype=torch.float64, device=device),
                            torch.zeros(3, 3, dtype=torch.float64, device=device),
                            torch.full((5,), 0.01, dtype=torch.float64), 2, "tanh", "frobenius", 0.9, 0.0, False, False,
                            float("nan"), 1e12)),
        ("svd_sgd_run", (*(t.detach().clone() for t in svd), *(torch.zeros_like(t) for t in svd[1:]),
                         torch.full((4,), 0.05, dtype=torch.float64), 0.01, 0.01, 0.9, 0.0, True, False, True,
                         float("nan"), 1e12)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device: str) -> None:
    checked = set()
    for name, args in _samples(device):
        opcheck(getattr(torch.ops.gdla, name).default, args)
        checked.add(name)
    defined = {name for name in dir(torch.ops.gdla) if hasattr(getattr(torch.ops.gdla, name), "default")}
    # The whole Newton-Schulz run has a CPU kernel only: on CUDA the method steps with small_inverse_newton_schulz.
    cpu_only = {"small_inverse_newton_schulz_run"} if device != "cpu" else set()
    assert checked == defined - {"openmp_max_threads", "limits"} - cpu_only, "every op with tensors gets a sample"


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_fused_step_matches_eager(device: str) -> None:
    """A momentum step on the inverse-MSE loss, fused loss+grad and fused in-place update, in one graph."""

    def step(A, M, mask, buf):
        loss, grad = ops.inverse_mse_and_grad(A, M, "right")
        ops.masked_update_(M, mask, grad, 0.5, 0.9, buf)
        small, steps = ops.small_inverse_newton_schulz(A[..., :2, :2], None, 20, 1e-10)
        return loss, small, steps

    A = torch.eye(4, dtype=torch.float64, device=device) + 0.1 * _rand(3, 4, 4, device=device)
    mask = torch.ones_like(A)
    eager_M, eager_buf = torch.zeros_like(A), torch.zeros_like(A)
    compiled_M, compiled_buf = torch.zeros_like(A), torch.zeros_like(A)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for _ in range(3):
        eager = step(A, eager_M, mask, eager_buf)
        result = compiled(A, compiled_M, mask, compiled_buf)
        for got, want in zip(result, eager, strict=True):
            torch.testing.assert_close(got, want)
    torch.testing.assert_close(compiled_M, eager_M)
    torch.testing.assert_close(compiled_buf, eager_buf)
    assert float(eager[0]) < float(ops.inverse_mse(A, torch.zeros_like(A))), "the steps lowered the loss"


def test_inductor_compiles_the_forward_ops_and_their_backward() -> None:
    def loss_fn(A, M, init, omega, U):
        return ops.inverse_mse(A, M, "both") + ops.masked_hadamard(init, omega, U).square().sum()

    args = [torch.randn(3, 3, dtype=torch.float64, requires_grad=True) for _ in range(5)]
    compiled = torch.compile(loss_fn, fullgraph=True, backend="inductor")
    loss = compiled(*args)
    grads = torch.autograd.grad(loss, args)
    expected_loss = loss_fn(*args)
    expected = torch.autograd.grad(expected_loss, args)
    torch.testing.assert_close(loss, expected_loss)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
