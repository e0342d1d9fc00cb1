"""The implicit paths of :mod:`gdla.differentiation` on third-party problems (a loss alone; a declared
``least_squares()``) against a direct differentiable solve, batches, and ``backward="unroll"`` against
autograd through the same eager trajectory."""

from __future__ import annotations

import pytest
import torch

import gdla
from gdla.capabilities import LinearLeastSquares, MatrixInverse
from gdla.errors import ConvergenceWarning

DOUBLE = torch.float64


class Ridge(gdla.Problem):
    """``min ‖A x − b‖² + λ‖x‖²``, declaring nothing but its loss."""

    name = "test-ridge"
    summary = "ridge regression, loss only"

    def __init__(self, A: torch.Tensor, b: torch.Tensor, lam: float = 0.5) -> None:
        self.A, self.b, self.lam = A.detach(), b.detach(), lam

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = DOUBLE) -> Ridge:
        g = torch.Generator().manual_seed(seed)
        return cls(torch.randn(5, 3, generator=g, dtype=dtype), torch.randn(5, generator=g, dtype=dtype))

    def init_params(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"x": torch.zeros(self.A.shape[1], dtype=self.A.dtype)}

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        x = params["x"]
        return (self.A @ x - self.b).square().sum() + self.lam * x.square().sum()

    def solution(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return params["x"].detach()

    def residual(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        x = params["x"]
        gram = self.A.mT @ self.A + self.lam * torch.eye(x.numel(), dtype=x.dtype)
        return torch.linalg.vector_norm(gram @ x - self.A.mT @ self.b) / torch.linalg.vector_norm(self.A.mT @ self.b)

    def reference(self) -> torch.Tensor:
        return _ridge(self.A, self.b, self.lam)

    def error(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.linalg.vector_norm(params["x"] - self.reference()) / torch.linalg.vector_norm(self.reference())


class Fit(Ridge):
    """``min ‖A x − b‖²`` declaring its least-squares form (``lam = 0``)."""

    name = "test-fit"

    def __init__(self, A: torch.Tensor, b: torch.Tensor) -> None:
        self.A, self.b, self.lam = A.detach(), b.detach(), 0.0

    def least_squares(self) -> LinearLeastSquares:
        return LinearLeastSquares(key="x", apply=lambda x: self.A @ x, adjoint=lambda r: self.A.mT @ r, rhs=self.b)


class Coupled(Ridge):
    """``(x₀ + x₁ − b₀)²``: a singular Hessian, whose adjoint system has no solution for some gradients."""

    name = "test-coupled"

    def __init__(self, b: torch.Tensor) -> None:
        self.b, self.A, self.lam = b.detach(), torch.ones(1, 2, dtype=b.dtype), 0.0

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return (params["x"].sum() - self.b[0]).square()

    def residual(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return (params["x"].sum() - self.b[0]).abs()


def _ridge(A: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    return torch.linalg.solve(A.mT @ A + lam * torch.eye(A.shape[1], dtype=A.dtype), A.mT @ b)


def _leaves(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(5, 3, generator=g, dtype=DOUBLE).requires_grad_()
    return A, torch.randn(5, generator=g, dtype=DOUBLE).requires_grad_()


def _grads(answer: torch.Tensor, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
    weight = torch.linspace(-1.0, 2.0, answer.numel(), dtype=answer.dtype).reshape(answer.shape)
    return torch.autograd.grad((answer * weight).sum(), leaves)


def test_a_loss_alone_gets_the_gradients_of_a_direct_solve() -> None:
    A, b = _leaves()
    result = gdla.solve(Ridge(A, b), optimizer="lbfgs", tol=1e-13)
    for ours, reference in zip(_grads(result.solution, A, b), _grads(_ridge(A, b, 0.5), A, b), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-10)


def test_a_declared_least_squares_form_gets_the_gradients_of_lstsq() -> None:
    A, b = _leaves(1)
    result = gdla.solve(Fit(A, b), optimizer="cg", tol=1e-14)
    direct = torch.linalg.pinv(A) @ b
    for ours, reference in zip(_grads(result.solution, A, b), _grads(direct, A, b), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-10)


def test_a_pseudo_inverse_gets_the_gradients_of_pinv() -> None:
    g = torch.Generator().manual_seed(6)
    A = torch.randn(2, 4, generator=g, dtype=DOUBLE).requires_grad_()  # wide: many right inverses, one least-norm
    result = gdla.solve(gdla.get_problem("inverse")(A, pseudo=True), tol=1e-13)
    (ours,), (reference,) = _grads(result.solution, A), _grads(torch.linalg.pinv(A), A)
    torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-10)


def test_batched_members_are_independent() -> None:
    g = torch.Generator().manual_seed(4)
    A = (torch.randn(2, 3, 3, generator=g, dtype=DOUBLE) + 3 * torch.eye(3, dtype=DOUBLE)).requires_grad_()
    result = gdla.solve(gdla.get_problem("inverse")(A), tol=1e-13)
    (grad,) = torch.autograd.grad(result.solution[0].sum(), A)
    assert bool((grad[1] == 0).all())
    single = A[0].detach().clone().requires_grad_()
    (alone,) = torch.autograd.grad(gdla.solve(gdla.get_problem("inverse")(single), tol=1e-13).solution.sum(), single)
    torch.testing.assert_close(grad[0], alone, rtol=1e-9, atol=1e-11)


def test_unrolled_newton_schulz_equals_autograd_through_the_eager_iteration() -> None:
    g = torch.Generator().manual_seed(5)
    A = (torch.randn(3, 3, generator=g, dtype=DOUBLE) + 3 * torch.eye(3, dtype=DOUBLE)).requires_grad_()
    result = gdla.solve(gdla.get_problem("inverse")(A), optimizer="newton-schulz", tol=1e-6, backward="unroll")
    X, eye = MatrixInverse(A).safe_start(), torch.eye(3, dtype=DOUBLE)
    for _ in range(result.steps):
        X = X - X @ (A @ X - eye)
    torch.testing.assert_close(result.solution, X, rtol=1e-13, atol=1e-14)
    (ours,), (eager,) = _grads(result.solution, A), _grads(X, A)
    torch.testing.assert_close(ours, eager, rtol=1e-12, atol=1e-13)
    assert (ours - _grads(torch.linalg.inv(A), A)[0]).abs().max() > 1e-9  # a few steps: not the exact inverse's


@pytest.mark.parametrize("method", ["sgd", "momentum"])  # torch's SGD, and seed 000's own recursion
def test_unrolled_momentum_equals_autograd_through_the_eager_steps(method: str) -> None:
    A, b = _leaves(2)
    lr, momentum, steps = 0.02, 0.9, 25
    result = gdla.solve(
        Ridge(A, b), optimizer=method, lr=lr, momentum=momentum, max_steps=steps, tol=0, backward="unroll"
    )
    x, buffer = torch.zeros(3, dtype=DOUBLE), None
    for _ in range(steps):
        grad = _gradient(A, b, x)  # of ‖A x − b‖² + 0.5 ‖x‖², by hand: differentiable in A and b
        buffer = grad if buffer is None else momentum * buffer + grad
        x = x - lr * buffer
    torch.testing.assert_close(result.solution, x, rtol=1e-12, atol=1e-13)
    for ours, eager in zip(_grads(result.solution, A, b), _grads(x, A, b), strict=True):
        torch.testing.assert_close(ours, eager, rtol=1e-10, atol=1e-12)


def _gradient(A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return 2 * A.mT @ (A @ x - b) + x


def test_an_adjoint_solve_that_does_not_converge_is_said_in_the_result() -> None:
    b = torch.tensor([1.0], dtype=DOUBLE, requires_grad=True)
    result = gdla.solve(Coupled(b), optimizer="lbfgs", tol=1e-12)
    with pytest.warns(ConvergenceWarning, match="conjugate gradients"):
        torch.autograd.grad(result.solution[0], b)
    assert any("conjugate gradients" in note for note in result.warnings)
