"""Differentiable solves (``gdla.solve(..., backward=...)``, :mod:`gdla.differentiation`).

``torch.autograd.gradcheck`` through ``gdla.solve`` for every built-in problem with respect to its data
(float64, tiny sizes, ``fast_mode``), with ``auto`` and two other methods; the modes' rules (auto, none,
unroll, refusals). Third-party problems, batches and unroll-against-eager are in
``test_differentiation_paths.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import gdla
from gdla.errors import InputError, UsageError

DOUBLE = torch.float64


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(name: str) -> tuple[Callable[..., gdla.Problem], tuple[torch.Tensor, ...]]:
    """A tiny float64 instance of a built-in problem as a function of its data (which requires grad)."""
    cls, g = gdla.get_problem(name), _generator(1)
    if name == "inverse":
        A = torch.randn(3, 3, generator=g, dtype=DOUBLE) + 3 * torch.eye(3, dtype=DOUBLE)
        return cls, (A.requires_grad_(),)
    if name == "svd":
        return cls, (torch.rand(3, 2, generator=g, dtype=DOUBLE).requires_grad_(),)
    if name == "toeplitz":
        return cls, (torch.randn(3, 3, generator=g, dtype=DOUBLE).requires_grad_(),)
    if name == "sparse":
        X, Y = torch.randn(2, 5, generator=g, dtype=DOUBLE), torch.randn(2, 5, generator=g, dtype=DOUBLE)
        return cls, (X.requires_grad_(), Y.requires_grad_())
    raise AssertionError(name)


def _answer(solution: Any) -> Any:
    """A solution as gradcheck takes it: a tensor or a tuple of dense tensors."""
    if isinstance(solution, tuple):
        return solution
    return solution.to_dense() if solution.is_sparse else solution


CASES = [
    ("inverse", "auto"),
    ("inverse", "cg"),
    ("inverse", "lbfgs"),
    ("svd", "auto"),
    ("svd", "riemannian-svd"),
    pytest.param("svd", "lbfgs", marks=pytest.mark.slow),  # hundreds of quasi-Newton steps a solve
    ("toeplitz", "auto"),
    ("toeplitz", "cg"),
    ("toeplitz", "levenberg-marquardt"),
    ("sparse", "auto"),
    ("sparse", "cg"),
    ("sparse", "levenberg-marquardt"),
]


@pytest.mark.parametrize(("name", "method"), CASES)
def test_gradcheck_through_solve(name: str, method: str) -> None:
    cls, data = _data(name)

    def solved(*tensors: torch.Tensor) -> Any:
        return _answer(gdla.solve(cls(*tensors), optimizer=method, tol=1e-13).solution)

    assert torch.autograd.gradcheck(solved, data, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_gradcheck_through_an_unrolled_newton_schulz() -> None:
    cls, data = _data("inverse")

    def solved(A: torch.Tensor) -> torch.Tensor:
        return gdla.solve(cls(A), optimizer="newton-schulz", tol=1e-13, backward="unroll").solution

    assert torch.autograd.gradcheck(solved, data, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_auto_is_implicit_and_matches_torch_inv() -> None:
    A = _data("inverse")[1][0]
    result = gdla.solve(gdla.get_problem("inverse")(A), tol=1e-13)
    assert result.solution.grad_fn is not None and result.params["M"].grad_fn is not None
    weight = torch.randn(3, 3, generator=_generator(2), dtype=DOUBLE)
    (ours,) = torch.autograd.grad((result.solution * weight).sum(), A)
    (reference,) = torch.autograd.grad((torch.linalg.inv(A) * weight).sum(), A)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def test_nothing_requiring_grad_gives_a_detached_answer() -> None:
    A = _data("inverse")[1][0].detach()
    result = gdla.solve(gdla.get_problem("inverse")(A))
    assert result.solution.grad_fn is None and not result.solution.requires_grad


def test_none_detaches_on_request_and_no_grad_mode_too() -> None:
    A = _data("inverse")[1][0]
    problem = gdla.get_problem("inverse")(A)
    assert not gdla.solve(problem, backward="none").solution.requires_grad
    with torch.no_grad():
        assert not gdla.solve(problem).solution.requires_grad


def test_the_gradient_reaches_a_float32_leaf_through_a_dtype_conversion() -> None:
    A = _data("inverse")[1][0].detach().float().requires_grad_()
    result = gdla.solve(gdla.get_problem("inverse")(A), dtype=DOUBLE, tol=1e-13)
    (grad,) = torch.autograd.grad(result.solution.sum(), A)
    (reference,) = torch.autograd.grad(torch.linalg.inv(A.double()).sum(), A)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-6)


def test_an_unknown_mode_is_refused_naming_backward() -> None:
    with pytest.raises(InputError, match="backward"):
        gdla.solve("inverse", backward="adjoint")


def test_a_method_that_cannot_unroll_is_refused_before_the_run() -> None:
    A = _data("inverse")[1][0]
    with pytest.raises(UsageError, match="optimizer 'adam', which cannot.*backward='implicit'"):
        gdla.solve(gdla.get_problem("inverse")(A), optimizer="adam", backward="unroll", max_steps=3)


def test_an_answer_computed_outside_autograd_is_refused() -> None:
    rows = torch.randn(4, 5, generator=_generator(3), dtype=DOUBLE).requires_grad_()
    problem = gdla.get_problem("toeplitz-net")(rows, hidden=3)
    seen: list[int] = []
    with pytest.raises(UsageError, match="toeplitz-net.*solution.*backward='none'"):
        gdla.solve(problem, max_steps=2, callback=lambda step, loss, params: seen.append(step))
    assert seen == []  # refused before the run, not after it


def test_a_distributed_batch_refuses_data_that_requires_grad() -> None:
    A = torch.eye(3, dtype=DOUBLE).repeat(2, 1, 1).requires_grad_()
    with pytest.raises(UsageError, match="distributed"):
        gdla.solve(gdla.get_problem("inverse")(A), distributed=True)
