"""Fused ops of gdla._C against the eager PyTorch (autograd) code they replace.

One benchmark group per op and size (``"<op> n=<n>"``, and ``"<op> B=10000 n=4"`` for a batch of
10,000 4x4 problems) with the implementation as a parameter, so the two share a table.
``extra_info`` holds each output's relative error against a float64 eager reference.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

ops = pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")

BATCH = 10_000
IMPLS = ("eager", "fused")


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.double()
    scale = float(torch.linalg.vector_norm(reference)) or 1.0
    return float(torch.linalg.vector_norm(value.double() - reference)) / scale


def bench(benchmark, run, group: str, impl: str, fns: dict[str, Callable], reference: Callable) -> None:
    """Times ``fns[impl]`` in ``group``; records the error of a separate call against ``reference()``."""
    benchmark.group = group
    outputs = fns[impl]()
    expected = reference()
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for index, (got, want) in enumerate(zip(outputs, expected, strict=True)):
        benchmark.extra_info[f"rel_err_{index}"] = relative_error(got, want)
    run(fns[impl])


def eye_like(P: torch.Tensor) -> torch.Tensor:
    return torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)


# -- inverse MSE: loss and gradient w.r.t. M ------------------------------------------------------
def eager_inverse_mse_and_grad(A: torch.Tensor, M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = M.detach().requires_grad_(True)
    P = A @ leaf
    loss = (P - eye_like(P)).square().mean(dim=(-2, -1)).sum()
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def _inverse_case(benchmark, run, group: str, impl: str, A: torch.Tensor) -> None:
    M = A.mT / torch.linalg.matrix_norm(A, ord="fro").square()[..., None, None]
    fns = {"eager": lambda: eager_inverse_mse_and_grad(A, M), "fused": lambda: ops.inverse_mse_and_grad(A, M, "right")}
    bench(benchmark, run, group, impl, fns, lambda: eager_inverse_mse_and_grad(A.double(), M.double()))


@pytest.mark.parametrize("impl", IMPLS)
def test_inverse_mse_and_grad(benchmark, run, device, dtype, n, impl) -> None:
    A = torch.randn(n, n, device=device, dtype=dtype) / n**0.5 + torch.eye(n, device=device, dtype=dtype)
    _inverse_case(benchmark, run, f"inverse_mse_and_grad n={n}", impl, A)


@pytest.mark.parametrize("impl", IMPLS)
def test_inverse_mse_and_grad_batched(benchmark, run, device, dtype, impl) -> None:
    A = torch.randn(BATCH, 4, 4, device=device, dtype=dtype) / 2 + torch.eye(4, device=device, dtype=dtype)
    _inverse_case(benchmark, run, f"inverse_mse_and_grad B={BATCH} n=4", impl, A)


# -- SVD loss: loss and gradients w.r.t. U, s, V --------------------------------------------------
def eager_svd_loss_and_grad(M, U, s, V, weight_u: float, weight_v: float):
    leaves = [t.detach().requires_grad_(True) for t in (U, s, V)]
    u, s_, v = leaves
    fit = ((u * (s_ * s_).unsqueeze(-2)) @ v.mT - M).square().mean(dim=(-2, -1))
    gram_u = (u.mT @ u - eye_like(u.mT @ u)).square().mean(dim=(-2, -1))
    gram_v = (v.mT @ v - eye_like(v.mT @ v)).square().mean(dim=(-2, -1))
    loss = (fit + weight_u * gram_u + weight_v * gram_v).sum()
    return (loss.detach(), *torch.autograd.grad(loss, leaves))


def _svd_case(benchmark, run, group: str, impl: str, shape: tuple[int, ...], device, dtype) -> None:
    *batch, n = shape[:-1]
    M = torch.rand(*shape, device=device, dtype=dtype)
    U, V = (torch.randn(*shape, device=device, dtype=dtype) / n**0.5 for _ in range(2))
    s = torch.rand(*batch, n, device=device, dtype=dtype) + 0.5
    args = (M, U, s, V, 0.01, 0.01)
    fns = {"eager": lambda: eager_svd_loss_and_grad(*args), "fused": lambda: ops.svd_loss_and_grad(*args)}
    bench(benchmark, run, group, impl, fns, lambda: eager_svd_loss_and_grad(*(t.double() for t in args[:4]), *args[4:]))


@pytest.mark.parametrize("impl", IMPLS)
def test_svd_loss_and_grad(benchmark, run, device, dtype, n, impl) -> None:
    _svd_case(benchmark, run, f"svd_loss_and_grad n={n}", impl, (n, n), device, dtype)


@pytest.mark.parametrize("impl", IMPLS)
def test_svd_loss_and_grad_batched(benchmark, run, device, dtype, impl) -> None:
    _svd_case(benchmark, run, f"svd_loss_and_grad B={BATCH} n=4", impl, (BATCH, 4, 4), device, dtype)


# -- masked Hadamard and the masked momentum update -----------------------------------------------
def _masked_tensors(shape, device, dtype) -> tuple[torch.Tensor, ...]:
    omega = (torch.rand(shape, device=device) > 0.7).to(dtype)
    return omega, *(torch.randn(shape, device=device, dtype=dtype) for _ in range(3))


def hadamard_forward_backward(op: Callable, init, omega, U, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """S = op(init, omega, U) and dL/dU for L = sum(weight * S): the sparse problem's use, under autograd."""
    leaf = U.detach().requires_grad_(True)
    S = op(init, omega, leaf)
    (grad,) = torch.autograd.grad(S, leaf, weight)
    return S.detach(), grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_masked_hadamard(benchmark, run, device, dtype, n, impl, batched) -> None:
    if batched and n != 4:
        pytest.skip("the batched case is B=10000 n=4 only")
    shape = (BATCH, 4, 4) if batched else (n, n)
    omega, init, U, weight = _masked_tensors(shape, device, dtype)
    ops_of = {"eager": lambda i, o, u: i + o * u, "fused": ops.masked_hadamard}
    fns = {impl_: (lambda op=op: hadamard_forward_backward(op, init, omega, U, weight)) for impl_, op in ops_of.items()}
    group = f"masked_hadamard B={BATCH} n=4" if batched else f"masked_hadamard n={n}"
    doubles = [t.double() for t in (init, omega, U, weight)]
    bench(benchmark, run, group, impl, fns, lambda: hadamard_forward_backward(ops_of["eager"], *doubles))


FLOORS = ("harness", "aten-op", "custom-op")


@pytest.mark.parametrize("part", FLOORS)
def test_masked_hadamard_floor(benchmark, run, device, dtype, n, part) -> None:
    """What :func:`test_masked_hadamard`'s fused side cannot go below: the harness (``torch.autograd.grad`` of a
    leaf with a tensor seed, no op at all), one aten op under it (``torch.add``), and a call of the custom op
    through the dispatcher without autograd (``torch.ops.gdla.masked_hadamard``: schema parsing, the C++
    autograd function, the output's allocation), each in group ``masked_hadamard floor n=<n>``."""
    omega, init, U, weight = _masked_tensors((n, n), device, dtype)
    fns = {
        "harness": lambda: (lambda leaf: torch.autograd.grad(leaf, leaf, weight))(U.detach().requires_grad_(True)),
        "aten-op": lambda: hadamard_forward_backward(lambda i, o, u: torch.add(i, u), init, omega, U, weight),
        "custom-op": lambda: torch.ops.gdla.masked_hadamard(init, omega, U),
    }
    benchmark.group = f"masked_hadamard floor n={n}"
    run(fns[part])


def eager_masked_update_(U, omega, G, lr: float, momentum: float, buf) -> tuple[torch.Tensor, torch.Tensor]:
    buf.mul_(momentum).add_(omega * G)
    U.sub_(lr * buf)
    return U, buf


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_masked_update(benchmark, run, device, dtype, n, impl, batched) -> None:
    if batched and n != 4:
        pytest.skip("the batched case is B=10000 n=4 only")
    shape = (BATCH, 4, 4) if batched else (n, n)
    omega, U, G, buf = _masked_tensors(shape, device, dtype)
    start = (U.clone(), buf.clone())

    def reset() -> None:  # the same start every round: a decaying buf would reach denormals
        U.copy_(start[0])
        buf.copy_(start[1])

    fns = {
        "eager": lambda: eager_masked_update_(U, omega, G, 0.01, 0.9, buf),
        "fused": lambda: (ops.masked_update_(U, omega, G, 0.01, 0.9, buf), buf),
    }
    benchmark.group = f"masked_update_ B={BATCH} n=4" if batched else f"masked_update_ n={n}"
    reset()
    checked = tuple(t.clone() for t in fns[impl]())
    expected = eager_masked_update_(*(t.double() for t in (start[0], omega, G)), 0.01, 0.9, start[1].double())
    for index, (got, want) in enumerate(zip(checked, expected, strict=True)):
        benchmark.extra_info[f"rel_err_{index}"] = relative_error(got, want)
    run(fns[impl], setup=reset)


# -- a batch of tiny inverses, each to residual 1e-6 ----------------------------------------------
def well_conditioned(batch: int, n: int, device, dtype) -> torch.Tensor:
    """Singular values uniform in [0.5, 2]: condition numbers up to 4."""
    Q1 = torch.linalg.qr(torch.randn(batch, n, n, dtype=torch.float64)).Q
    Q2 = torch.linalg.qr(torch.randn(batch, n, n, dtype=torch.float64)).Q
    sigma = torch.empty(batch, n, dtype=torch.float64).uniform_(0.5, 2.0)
    return ((Q1 * sigma.unsqueeze(-2)) @ Q2).to(device=device, dtype=dtype)


def eager_newton_schulz(A: torch.Tensor, tol: float, max_steps: int = 100) -> torch.Tensor:
    """Batched Newton-Schulz in PyTorch: every problem steps until the worst one converges."""
    norms = torch.linalg.matrix_norm(A, ord=1) * torch.linalg.matrix_norm(A, ord=float("inf"))
    X = A.mT / norms[..., None, None]
    eye = eye_like(A)
    for _ in range(max_steps):
        T = A @ X
        if float(torch.linalg.matrix_norm(T - eye).max()) <= tol * A.shape[-1] ** 0.5:
            break
        X = 2 * X - X @ T
    return X


@pytest.mark.parametrize("impl", ["linalg_inv", "eager_newton_schulz", "fused_newton_schulz"])
def test_small_inverse(benchmark, run, device, dtype, impl) -> None:
    A = well_conditioned(BATCH, 4, device, dtype)
    fns = {
        "linalg_inv": lambda: torch.linalg.inv(A),
        "eager_newton_schulz": lambda: eager_newton_schulz(A, 1e-6),
        "fused_newton_schulz": lambda: ops.small_inverse_newton_schulz(A, None, 100, 1e-6)[0],
    }
    X = fns[impl]()
    residual = torch.linalg.matrix_norm(A.double() @ X.double() - eye_like(A.double())) / 2
    benchmark.extra_info["max_residual"] = float(residual.max())
    benchmark.extra_info["fraction_residual_le_1e-6"] = float((residual <= 1e-6).double().mean())
    bench(benchmark, run, f"small_inverse B={BATCH} n=4", impl, fns, lambda: torch.linalg.inv(A.double()))


# -- ||P - I||_F of each tiny problem: the inverse problem's residuals -----------------------------
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("impl", ["eager", "fused"])
def test_small_inverse_residuals(benchmark, run, device, dtype, impl, batched) -> None:
    A = well_conditioned(BATCH if batched else 1, 4, device, dtype)
    A = A if batched else A[0]
    X = torch.linalg.inv(A) + 1e-3
    fns = {
        "eager": lambda: torch.linalg.matrix_norm(A @ X - eye_like(A)),
        "fused": lambda: ops.small_inverse_residuals(A, X, "right"),
    }
    group = f"small_inverse_residuals B={BATCH} n=4" if batched else "small_inverse_residuals n=4"
    reference = lambda: torch.linalg.matrix_norm(A.double() @ X.double() - eye_like(A.double()))  # noqa: E731
    bench(benchmark, run, group, impl, fns, reference)
