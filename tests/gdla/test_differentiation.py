"""Differentiable solves (``gdla.solve(..., backward=...)``, :mod:`gdla.differentiation`).

``torch.autograd.gradcheck`` through ``gdla.solve`` for every registered built-in problem with respect to its
data (float64, tiny sizes, ``fast_mode``), with ``auto`` and two other methods; the modes' rules (auto, none,
unroll, refusals). Third-party problems, batches and unroll-against-eager are in
``test_differentiation_paths.py``; the SVD's known adjoint and toeplitz-net's Gauss-Newton path in
``test_differentiation_adjoints.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import gdla
from gdla import registry
from gdla.errors import InputError, UsageError

DOUBLE = torch.float64


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _toeplitz_net(rows: torch.Tensor) -> gdla.Problem:
    """3 rows of 5, hidden width 4 (58 weights for 21 bands): the network fits every row's least-squares bands."""
    return gdla.get_problem("toeplitz-net")(rows, hidden=4, loss="frobenius")


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
    if name == "toeplitz-net":
        return _toeplitz_net, ((torch.rand(3, 5, generator=g, dtype=DOUBLE) * 5).requires_grad_(),)
    raise AssertionError(f"built-in problem {name!r}: add a tiny instance here and three methods to METHODS")


def _answer(solution: Any) -> Any:
    """A solution as gradcheck takes it: a tensor or a tuple of dense tensors."""
    if isinstance(solution, tuple):
        return solution
    return solution.to_dense() if solution.is_sparse else solution


SOLVED = {"tol": 1e-13}
#: 4 steps replayed at a fixed ``lr``: the default one is chosen from the data and held constant by the replay
UNROLLED = {"backward": "unroll", "max_steps": 4, "tol": 0, "lr": 0.01}
#: Every built-in problem's gradcheck: ``auto`` and two other methods, as ``(optimizer, solve options)``.
#: toeplitz-net's weights are not unique, its bands (the answer) are: ``auto`` runs Levenberg-Marquardt to a
#: perfect fit (implicit: Gauss-Newton), ``sgd`` and ``momentum`` unroll 4 steps. Gradient methods that
#: solve it to a perfect fit stall near 1e-8 in the bands (the expanded loss cancels to eps·‖t‖²): finite
#: differences with eps 1e-6 of answers that accurate are noise (``lbfgs``: slow, with eps 1e-2, below).
METHODS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "inverse": [("auto", SOLVED), ("cg", SOLVED), ("lbfgs", SOLVED)],
    "svd": [("auto", SOLVED), ("riemannian-svd", SOLVED), ("lbfgs", SOLVED)],
    "toeplitz": [("auto", SOLVED), ("cg", SOLVED), ("levenberg-marquardt", SOLVED)],
    "sparse": [("auto", SOLVED), ("cg", SOLVED), ("levenberg-marquardt", SOLVED)],
    "toeplitz-net": [("auto", SOLVED), ("sgd", UNROLLED), ("momentum", UNROLLED)],
}
#: The gdla distribution's problems, read from the registry: a new one without a case here fails below.
BUILT_IN = sorted(entry.name for entry in registry.entries("problem") if entry.plugin == "gdla")
CASES = [(name, *case) for name in BUILT_IN for case in METHODS.get(name, [("auto", SOLVED)])]


def test_every_built_in_problem_is_gradchecked_with_auto_and_two_other_methods() -> None:
    assert {"inverse", "svd", "toeplitz", "sparse", "toeplitz-net"} <= set(BUILT_IN)
    for name in BUILT_IN:
        methods = {method for method, _ in METHODS.get(name, [])}
        assert "auto" in methods and len(methods) >= 3, f"built-in problem {name!r}: gradcheck auto + 2 methods"


@pytest.mark.parametrize(("name", "method", "options"), CASES, ids=[f"{n}-{m}" for n, m, _ in CASES])
def test_gradcheck_through_solve(name: str, method: str, options: dict[str, Any]) -> None:
    build, data = _data(name)

    def solved(*tensors: torch.Tensor) -> Any:
        return _answer(gdla.solve(build(*tensors), optimizer=method, **options).solution)

    assert torch.autograd.gradcheck(solved, data, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.slow  # about 500 quasi-Newton steps a solve
def test_gradcheck_through_toeplitz_net_with_lbfgs_by_wide_differences() -> None:
    """L-BFGS stalls near 1e-8 in the bands; at a perfect fit they are linear in the rows, so eps 1e-2 is exact."""
    build, data = _data("toeplitz-net")

    def solved(rows: torch.Tensor) -> torch.Tensor:
        return gdla.solve(build(rows), optimizer="lbfgs", tol=1e-13, max_steps=1000).solution

    assert torch.autograd.gradcheck(solved, data, eps=1e-2, atol=1e-5, rtol=1e-4, fast_mode=True)


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


class _NoGradSolution(gdla.get_problem("toeplitz")):  # type: ignore[misc]
    """toeplitz, with its answer computed under ``torch.no_grad()``."""

    name = "test-no-grad-solution"

    def solution(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return params["band"] * 1.0


def test_an_answer_computed_outside_autograd_is_refused() -> None:
    row = torch.randn(3, 3, generator=_generator(3), dtype=DOUBLE).requires_grad_()
    seen: list[int] = []
    with pytest.raises(UsageError, match="test-no-grad-solution.*solution.*backward='none'"):
        gdla.solve(_NoGradSolution(row), max_steps=2, callback=lambda step, loss, params: seen.append(step))
    assert seen == []  # refused before the run, not after it


def test_a_distributed_batch_refuses_data_that_requires_grad_and_a_given_start() -> None:
    A = torch.eye(3, dtype=DOUBLE).repeat(2, 1, 1).requires_grad_()
    with pytest.raises(UsageError, match="distributed.*backward='implicit'.*backward='none'"):
        gdla.solve(gdla.get_problem("inverse")(A), distributed=True)
    with pytest.raises(UsageError, match="distributed.*received init.*leave init out"):
        gdla.solve(gdla.get_problem("inverse")(A.detach()), distributed=True, init={"M": A.detach()})
