"""Differentiable and warm-started solves (pytest-benchmark): the cost of each backward mode, warm vs cold.

Run with ``pytest benchmarks/test_differentiation_bench.py --benchmark-only`` (not part of the test suite).

* ``differentiation 5000 steps``: one 5,000-step ``sgd`` (momentum 0.9, ``tol=0``) solve of a 16×16
  inverse, then a backward pass through its answer: ``forward`` (``backward="none"``: the solve alone),
  ``implicit`` (solve + implicit backward), ``unroll`` (solve + replay of the 5,000 steps with autograd +
  backward). ``extra_info`` has the backward pass alone (``backward_s``) and its ratio to the solve.
* ``warm start newton-schulz``: the answer for ``A + 1e-3 E`` from a cold (safe) start and from the answer
  for ``A`` (``init=``); ``extra_info`` has the steps each took.
* ``svd backward``: the backward pass alone through the ``riemannian-svd`` answer for a 16×12 matrix (float64
  whatever ``--dtype``: the generic path's CG needs it), by the SVD's known adjoint (the declared
  ``params_of``) and by the generic path (CG on the loss's Hessian, ``params_of`` withheld); ``extra_info``
  has each gradient's error against ``torch.linalg.svd``'s and whether the adjoint solve converged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

import gdla
from gdla.capabilities import SingularValueDecomposition
from gdla_plugins.problems.inverse import InverseProblem
from gdla_plugins.problems.svd import SVDProblem

SIDE, STEPS = 16, 5_000


def _matrix(dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    return InverseProblem.well_conditioned(SIDE, seed=seed, dtype=dtype).A.to(device)


def _solve(A: torch.Tensor, backward: str) -> Any:
    return gdla.solve(
        InverseProblem(A), optimizer="sgd", momentum=0.9, max_steps=STEPS, tol=0, backward=backward
    )


@pytest.mark.parametrize("mode", ["forward", "implicit", "unroll"])
def test_backward_modes(benchmark: Any, mode: str, dtype: torch.dtype, device: torch.device) -> None:
    benchmark.group = f"differentiation {STEPS} steps, inverse {SIDE}x{SIDE} sgd"
    A = _matrix(dtype, device)
    weight = torch.randn(SIDE, SIDE, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)

    def forward() -> Any:
        return _solve(A, "none")

    def differentiated() -> tuple[float, float]:
        leaf = A.clone().requires_grad_()
        began = time.perf_counter()
        result = _solve(leaf, mode)
        solved = time.perf_counter()
        (grad,) = torch.autograd.grad((result.solution * weight).sum(), leaf)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return solved - began, time.perf_counter() - solved

    target: Callable[[], Any] = forward if mode == "forward" else differentiated
    out = benchmark.pedantic(target, rounds=3, warmup_rounds=1)
    if mode != "forward":
        solve_s, backward_s = out
        benchmark.extra_info.update(
            {"solve_s": solve_s, "backward_s": backward_s, "backward_over_solve": backward_s / solve_s}
        )
        leaf = A.clone().requires_grad_()
        (grad,) = torch.autograd.grad((_solve(leaf, mode).solution * weight).sum(), leaf)
        inverse = torch.linalg.inv(A.double())
        exact = -(inverse.mT @ weight.double() @ inverse.mT)
        benchmark.extra_info["grad_error_vs_inv"] = float((grad.double() - exact).norm() / exact.norm())


@pytest.mark.parametrize("start", ["cold", "warm"])
def test_warm_start_newton_schulz(benchmark: Any, start: str, dtype: torch.dtype, device: torch.device) -> None:
    benchmark.group = f"warm start newton-schulz {SIDE * 4}x{SIDE * 4}, A + 1e-3 E"
    n = SIDE * 4
    A = InverseProblem.well_conditioned(n, seed=2, dtype=dtype).A.to(device)
    E = torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=dtype).to(device)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    first = gdla.solve(InverseProblem(A), optimizer="newton-schulz", tol=tol)
    init = first if start == "warm" else None
    result = benchmark(lambda: gdla.solve(InverseProblem(A + 1e-3 * E), optimizer="newton-schulz", tol=tol, init=init))
    benchmark.extra_info.update({"steps": result.steps, "stop": result.stop_reason, "tol": tol})


class _GenericSVD(SVDProblem):
    """svd without ``params_of``: the implicit backward takes CG on the loss's Hessian."""

    name = "bench-svd-generic"

    def singular_value_decomposition(self) -> SingularValueDecomposition:
        declared = super().singular_value_decomposition()
        return SingularValueDecomposition(declared.matrix, declared.rank, declared.load, declared.store)


@pytest.mark.filterwarnings("ignore::gdla.errors.ConvergenceWarning")  # the generic path's: said in extra_info
@pytest.mark.parametrize("path", ["adjoint", "generic"])
def test_svd_backward(benchmark: Any, path: str, device: torch.device) -> None:
    m, n = 16, 12
    benchmark.group = f"svd backward {m}x{n} float64, riemannian-svd answer"
    M = torch.rand(m, n, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(device)
    leaf = M.clone().requires_grad_()
    cls = SVDProblem if path == "adjoint" else _GenericSVD
    result = gdla.solve(cls(leaf), optimizer="riemannian-svd", tol=1e-12)
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(part.shape, generator=g, dtype=torch.float64).to(device) for part in result.solution]

    def backward() -> torch.Tensor:
        total = sum((part * weight).sum() for part, weight in zip(result.solution, weights, strict=True))
        (grad,) = torch.autograd.grad(total, leaf, retain_graph=True)
        return grad

    grad = benchmark.pedantic(backward, rounds=3, warmup_rounds=1)
    U, S, Vh = torch.linalg.svd(leaf, full_matrices=False)
    signs = torch.where((U * result.solution[0]).sum(0) < 0, -1.0, 1.0).to(U.dtype)
    total = sum((part * w).sum() for part, w in zip((U * signs, S, Vh.mT * signs), weights, strict=True))
    (exact,) = torch.autograd.grad(total, leaf)
    benchmark.extra_info.update(
        {
            "solve_s": result.seconds,
            "grad_error_vs_torch": float((grad - exact).norm() / exact.norm()),
            "adjoint_converged": not any("conjugate gradients" in note for note in result.warnings),
        }
    )
