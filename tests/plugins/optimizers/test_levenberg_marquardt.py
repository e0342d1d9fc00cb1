"""``levenberg-marquardt``: damped Gauss-Newton on any declared sum of squares, dense and matrix-free."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.optimize
import torch

import gdla
from gdla.capabilities import SumOfSquares
from gdla.errors import InputError
from gdla.problem import Params, Problem
from gdla.testing import OptimizerContract, SmallLeastSquares
from gdla_plugins.optimizers.levenberg_marquardt import LevenbergMarquardt, holds_sparse, jacobian


class TestLevenbergMarquardtContract(OptimizerContract):
    optimizer_name = "levenberg-marquardt"
    solve_options = {"max_steps": 50}
    error_tol = 1e-10


class ExponentialFit(Problem):
    """A third-party nonlinear fit ``y ≈ a exp(−b t) + c`` that declares only ``sum_of_squares()``."""

    name = "test-exponential-fit"
    summary = "exponential curve fit (test only)"
    quadratic = False

    def __init__(self, t: torch.Tensor, y: torch.Tensor) -> None:
        self.t, self.y = t, y

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> ExponentialFit:
        n = size or 40
        generator = torch.Generator().manual_seed(seed)
        t = torch.linspace(0, 4, n, dtype=torch.float64)
        y = 2.5 * torch.exp(-1.3 * t) + 0.5 + 0.05 * torch.randn(n, generator=generator, dtype=torch.float64)
        return cls(t.to(dtype), y.to(dtype))

    def init_params(self, generator: torch.Generator) -> Params:
        return {"x": torch.tensor([1.0, 0.5, 0.0], dtype=self.t.dtype)}

    def _residuals(self, params: Params) -> torch.Tensor:
        a, b, c = params["x"]
        return a * torch.exp(-b * self.t) + c - self.y

    def loss(self, params: Params) -> torch.Tensor:
        return 0.5 * self._residuals(params).square().sum()

    def sum_of_squares(self) -> SumOfSquares:
        return SumOfSquares(residuals=self._residuals, loss_of=lambda r: 0.5 * r.square().sum())

    def solution(self, params: Params) -> torch.Tensor:
        return params["x"].detach()

    def residual(self, params: Params) -> torch.Tensor:
        """Relative gradient ``‖Jᵀr‖ / ‖r‖``-style first-order measure."""
        x = params["x"].detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.loss({"x": x}), x)
        return grad.norm() / (self.y.norm() ** 2)

    def reference(self) -> torch.Tensor:
        t, y = self.t.numpy(), self.y.numpy()
        fit = scipy.optimize.least_squares(
            lambda x: x[0] * np.exp(-x[1] * t) + x[2] - y, [1.0, 0.5, 0.0], method="lm", xtol=1e-15, ftol=1e-15
        )
        return torch.as_tensor(fit.x, dtype=self.t.dtype)

    def error(self, params: Params) -> torch.Tensor:
        reference = self.reference()
        return (params["x"] - reference).norm() / reference.norm()


@pytest.mark.parametrize("method", ["dense", "cg"])
def test_third_party_nonlinear_fit_matches_scipy(method: str) -> None:
    problem = ExponentialFit.example()
    result = gdla.solve(problem, optimizer="levenberg-marquardt", method=method, max_steps=100, tol=1e-12)
    assert result.stop_reason == "converged", result.summary()
    assert float(problem.error(result.params)) < 1e-8


def test_auto_picks_levenberg_marquardt_for_a_declared_sum_of_squares() -> None:
    problem = ExponentialFit.example()
    assert LevenbergMarquardt.suitability(problem).rank == 45
    result = gdla.solve(problem, max_steps=100, tol=1e-12)
    assert result.settings["optimizer.method"] == "levenberg-marquardt"
    assert "Levenberg-Marquardt" in result.settings["optimizer.reason"]
    assert float(problem.error(result.params)) < 1e-8


def test_linear_least_squares_in_one_step_dense() -> None:
    """On a linear residual the first Gauss-Newton step with tiny damping is the lstsq solution."""
    problem = SmallLeastSquares.example(size=6)
    params = problem.init_params(torch.Generator().manual_seed(0))
    optimizer = LevenbergMarquardt(problem, params, method="dense", damping=1e-14)
    with torch.no_grad():
        optimizer.step()
    torch.testing.assert_close(params["x"], problem.reference(), rtol=1e-9, atol=1e-12)


def test_wide_jacobian_uses_the_residual_side_system() -> None:
    """Fewer residuals than unknowns (minimum-norm side): still reaches zero residual."""
    generator = torch.Generator().manual_seed(3)
    A = torch.randn(4, 9, generator=generator, dtype=torch.float64)
    b = torch.randn(4, generator=generator, dtype=torch.float64)

    class Wide(ExponentialFit):
        name = "test-wide"

        def __init__(self) -> None:
            self.t, self.y = torch.zeros(1, dtype=torch.float64), b

        def init_params(self, generator: torch.Generator) -> Params:
            return {"x": torch.zeros(9, dtype=torch.float64)}

        def _residuals(self, params: Params) -> torch.Tensor:
            return A @ params["x"] + 0.1 * torch.sin(params["x"][:4]) - b

    problem = Wide()
    params = problem.init_params(torch.Generator())
    optimizer = LevenbergMarquardt(problem, params, method="dense")
    with torch.no_grad():
        for _ in range(30):
            optimizer.step()
    assert float(problem._residuals(params).norm()) < 1e-12


def test_refuses_a_learning_rate_and_unknown_options() -> None:
    problem = ExponentialFit.example()
    params = problem.init_params(torch.Generator())
    with pytest.raises(InputError, match="lr: optimizer 'levenberg-marquardt' has no learning rate"):
        LevenbergMarquardt(problem, params, lr=0.1)
    with pytest.raises(InputError, match="has no option 'momentum'"):
        LevenbergMarquardt(problem, params, momentum=0.9)
    with pytest.raises(InputError, match="method"):
        LevenbergMarquardt(problem, params, method="qr")


def test_problem_without_residuals_is_refused_with_the_reason() -> None:
    svd = gdla.get_problem("svd").example()
    assert LevenbergMarquardt.suitability(svd) is None
    reason = LevenbergMarquardt.unsupported_reason(svd)
    assert reason is not None and "sum_of_squares()" in reason
    with pytest.raises(InputError, match="cannot solve problem 'svd'"):
        LevenbergMarquardt(svd, svd.init_params(torch.Generator()))
    assert "autograd" in LevenbergMarquardt.fused_reason(svd, {})


def test_matrix_free_path_matches_dense_on_a_well_posed_fit() -> None:
    problem = ExponentialFit.example(size=60, seed=2)
    answers = []
    for method in ("dense", "cg"):
        result = gdla.solve(problem, optimizer="levenberg-marquardt", method=method, max_steps=100, tol=1e-12)
        answers.append(result.params["x"])
    assert math.isclose(float((answers[0] - answers[1]).norm()), 0.0, abs_tol=1e-9)


def test_dense_path_on_an_operator_that_only_fits_sparse_is_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gdla import memory
    from gdla.errors import ResourceError
    from gdla_plugins.problems.sparse import SparseProblem

    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * 2**30)  # the same verdict on every machine
    problem = SparseProblem.example(20_000, storage="sparse", loss="mse")  # 120,000 stored entries
    nnz = problem.pattern.nnz
    params = problem.init_params(torch.Generator())
    need = LevenbergMarquardt.estimated_bytes(problem, params, {"method": "dense"})
    assert need == (2 * nnz * 20_000 * 8 + 2 * nnz * nnz) * 8  # J twice and the unknowns' Gram matrix: 0.5 TiB
    assert LevenbergMarquardt.estimated_bytes(problem, params, {}) is None  # auto: matrix-free here
    assert LevenbergMarquardt.estimated_bytes(problem, params, {"method": "cg"}) is None
    with pytest.raises(ResourceError) as info:
        gdla.solve(problem, optimizer="levenberg-marquardt", method="dense")
    message = str(info.value)
    for words in (
        "optimizer: 'levenberg-marquardt' would form dense matrices of about ",
        " GiB on problem 'sparse' (a 20000 × 20000 operator stored sparse with ",
        f"{nnz:,} entries), and 64 GiB is available; use optimizer='cg', the best-ranked method that fits",
    ):
        assert words in message, message


def test_matrix_free_path_runs_on_sparse_storage() -> None:
    from gdla_plugins.problems.sparse import SparseProblem

    problem = SparseProblem.example(60, storage="sparse", per_row=2, columns=6, loss="mse")
    result = gdla.solve(problem, optimizer="levenberg-marquardt", method="cg", max_steps=20, tol=1e-10)
    assert result.settings["optimizer.path"] == "cg" and result.converged
    assert result.metrics["error"] < 1e-8


def test_jacobian_and_pullback_give_torch_funcs_bits_without_importing_dynamo() -> None:
    """``jacobian`` and ``pullback`` against ``torch.func.jacrev`` and ``vjp``, bit for bit, on a two-layer fit
    (sums of several products in its backward) and on an output independent of ``x``; in a fresh process, since
    ``torch.func``'s reverse mode loads ``torch._dynamo`` into the process that calls it."""
    code = textwrap.dedent(
        """
        import json, sys
        import torch
        from gdla_plugins.optimizers.levenberg_marquardt import jacobian, pullback

        g = torch.Generator().manual_seed(3)
        data, target = torch.randn(7, 40, dtype=torch.float64, generator=g), torch.randn(3, 40, dtype=torch.float64)

        def f(x):
            w1, w2 = x[:35].view(5, 7), x[35:].view(3, 5)
            return (w2 @ torch.tanh(w1 @ data) - target).reshape(-1)

        x = torch.randn(50, dtype=torch.float64, generator=g)
        u = torch.randn(120, dtype=torch.float64, generator=g)
        J, Jt_u = jacobian(f, x), pullback(f, x)(u)
        zeros = jacobian(lambda x: target.reshape(-1), x)
        ours_loaded = ["torch._dynamo" in sys.modules, "sympy" in sys.modules]
        from torch.func import jacrev, vjp
        print(json.dumps([ours_loaded, torch.equal(J, jacrev(f)(x)), torch.equal(Jt_u, vjp(f, x)[1](u)[0]),
                          list(J.shape), torch.equal(zeros, torch.zeros(120, 50, dtype=torch.float64))]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # neither torch._dynamo (torch.func's reverse mode) nor sympy (autograd's check of a tensor seed's shape)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[False, False], True, True, [120, 50], True]


@pytest.mark.parametrize(("rows", "columns"), [(12, 30), (30, 12)])
def test_jacobian_by_passes_matches_the_batched_one(rows: int, columns: int) -> None:
    """``batched=False`` (a backward per row, or a forward-mode pass per column: the smaller side) gives the
    batched Jacobian to rounding."""
    g = torch.Generator().manual_seed(5)
    W = torch.randn(rows, columns, dtype=torch.float64, generator=g)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(W @ x) * x.sum()

    x = torch.randn(columns, dtype=torch.float64, generator=g)
    torch.testing.assert_close(jacobian(f, x, batched=False), jacobian(f, x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(("method", "path"), [("dense", "dense"), ("auto", "cg")])
def test_sparse_storage_runs_on_either_path(method: str, path: str) -> None:
    """``-p storage=sparse``: sparse ops have no batching rules for the batched Jacobian, so the dense path forms
    it a pass per column, and ``auto`` takes the matrix-free path; both reach the reference answer."""
    from gdla_plugins.problems.sparse import SparseProblem

    problem = SparseProblem.example(12, storage="sparse", per_row=2, columns=4, loss="mse")
    assert holds_sparse(problem) and not holds_sparse(SparseProblem.example(12, per_row=2, columns=4, loss="mse"))
    result = gdla.solve(problem, optimizer="levenberg-marquardt", method=method, max_steps=30, tol=1e-10)
    assert result.settings["optimizer.path"] == path and result.converged, result.summary()
    assert result.metrics["error"] < 1e-8
