"""The whole-run kernel of the masked operator (``gdla.ops.masked_sgd_run``) against the sparse problem run by
torch's SGD."""

from __future__ import annotations

import math

import pytest
import torch

ops = pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")

CUDA_READY = torch.cuda.is_available() and ops.has_cuda_kernels()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA device")]),
]
TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-6}, torch.float64: {"rtol": 1e-11, "atol": 1e-13}}


# -- masked_sgd_run -------------------------------------------------------------------------------------
def masked_system(dtype: torch.dtype, device: str, n: int = 4, p: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    init = 0.3 * torch.randn(n, n, generator=g, dtype=torch.float64)
    omega = (torch.rand(n, n, generator=g) > 0.4).double()
    X, Y = torch.randn(n, p, generator=g, dtype=torch.float64), torch.randn(n, p, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype=dtype, device=device) for t in (init, omega, X, Y))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("hops", "activation", "loss"), [(1, None, "mse"), (2, None, "frobenius"),
                                                          (2, "tanh", "mse"), (3, "relu", "frobenius"),
                                                          (2, "sigmoid", "frobenius"), (2, "cube", "mse")])
def test_masked_run_matches_the_sparse_problem_with_torch_sgd(device, dtype, hops, activation, loss) -> None:
    from gdla_plugins.problems.sparse import SparseProblem

    init, omega, X, Y = masked_system(dtype, device)
    problem = SparseProblem(X, Y, init=init, omega=omega, hops=hops, activation=activation, loss=loss)
    rates = [(0.002 if activation == "cube" else 0.05) * 0.98**k for k in range(30)]  # cubes grow fast
    leaf = torch.zeros_like(init).requires_grad_(True)
    optimizer = torch.optim.SGD([leaf], lr=rates[0], momentum=0.9)
    expected = []
    for rate in rates:
        optimizer.param_groups[0]["lr"] = rate
        optimizer.zero_grad()
        value = problem.loss({"U": leaf})
        value.backward()
        expected.append(float(value.detach()))
        optimizer.step()
    U, buf = torch.zeros_like(init), torch.zeros_like(init)
    losses = ops.masked_sgd_run(init, omega, X, Y, U, buf, torch.tensor(rates, dtype=torch.float64), hops=hops,
                                activation=activation, loss=loss, momentum=0.9)
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=torch.float64, device=device), **TOL[dtype])
    torch.testing.assert_close(U, leaf.detach(), **TOL[dtype])


def test_masked_run_in_one_call_equals_step_by_step_bitwise_and_names_bad_arguments() -> None:
    init, omega, X, Y = masked_system(torch.float32, "cpu")
    U, buf, U_steps, buf_steps = (torch.zeros_like(init) for _ in range(4))
    rates = torch.linspace(0.05, 0.01, 40, dtype=torch.float64)
    whole = ops.masked_sgd_run(init, omega, X, Y, U, buf, rates, hops=2, momentum=0.5)
    first, single = math.nan, []
    for step in range(40):
        loss = ops.masked_sgd_run(init, omega, X, Y, U_steps, buf_steps, rates[step : step + 1], hops=2, momentum=0.5,
                                  started=step > 0, first_loss=first)
        first = float(loss[0]) if step == 0 else first
        single.append(float(loss[0]))
    assert whole.tolist() == single and torch.equal(U, U_steps) and torch.equal(buf, buf_steps)
    with pytest.raises(ValueError, match="hops must be in 1..4"):
        ops.masked_sgd_run(init, omega, X, Y, U, buf, rates, hops=5)
    with pytest.raises(ValueError, match="activation must be"):
        ops.masked_sgd_run(init, omega, X, Y, U, buf, rates, activation="gelu")
    with pytest.raises(ValueError, match="Y must have shape"):
        ops.masked_sgd_run(init, omega, X, Y[:, :2], U, buf, rates)
