"""``levenberg-marquardt``'s gram path: the wide damped system solved from a declared ``SumOfSquares.gram``."""

from __future__ import annotations

import pytest
import torch

import gdla
from gdla.capabilities import SumOfSquares
from gdla.errors import InputError
from gdla.problem import Params, Problem
from gdla_plugins.optimizers.auto import choose
from gdla_plugins.optimizers.levenberg_marquardt import GRAM_SIDE, LevenbergMarquardt, _path

RESIDUALS, UNKNOWNS = 4, 9


class WideFit(Problem):
    """A third-party fit with fewer residuals than unknowns, ``r = A x + 0.1 sin(x[:4]) − b``, that declares
    ``J Jᵀ`` in closed form (``J = A`` plus ``0.1 diag(cos x[:4])`` on the first four columns)."""

    name = "test-wide-gram"
    summary = "wide nonlinear fit declaring its residuals' Gram matrix (test only)"
    quadratic = False

    def __init__(self, declare_gram: bool = True) -> None:
        generator = torch.Generator().manual_seed(3)
        self.A = torch.randn(RESIDUALS, UNKNOWNS, generator=generator, dtype=torch.float64)
        self.b = torch.randn(RESIDUALS, generator=generator, dtype=torch.float64)
        self.declare_gram = declare_gram

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> WideFit:
        return cls()

    def init_params(self, generator: torch.Generator) -> Params:
        return {"x": torch.zeros(UNKNOWNS, dtype=torch.float64)}

    def _residuals(self, params: Params) -> torch.Tensor:
        x = params["x"]
        return self.A @ x + 0.1 * torch.sin(x[:RESIDUALS]) - self.b

    def _gram(self, params: Params) -> torch.Tensor:
        J = self.A.clone()
        J[:, :RESIDUALS] += 0.1 * torch.diag(torch.cos(params["x"].detach()[:RESIDUALS]))
        return J @ J.mT

    def loss(self, params: Params) -> torch.Tensor:
        return self._residuals(params).square().sum()

    def sum_of_squares(self) -> SumOfSquares:
        return SumOfSquares(residuals=self._residuals, gram=self._gram if self.declare_gram else None)

    def solution(self, params: Params) -> torch.Tensor:
        return params["x"].detach()

    def residual(self, params: Params) -> torch.Tensor:
        return self._residuals(params).detach().norm() / self.b.norm()

    def reference(self) -> torch.Tensor:
        return torch.zeros(UNKNOWNS, dtype=torch.float64)  # not unique: only the residual is checked

    def error(self, params: Params) -> torch.Tensor:
        return self.residual(params)


def test_the_gram_path_takes_the_dense_paths_steps() -> None:
    """``δ = −Jᵀ(JJᵀ + λI)⁻¹ r`` from the declared ``JJᵀ`` and a backward is the dense wide step, to rounding."""
    problem = WideFit()
    runs = {}
    for method in ("gram", "dense"):
        runs[method] = gdla.solve(problem, optimizer="levenberg-marquardt", method=method, max_steps=30, tol=1e-13)
        assert runs[method].settings["optimizer.path"] == method
    gram, dense = runs["gram"], runs["dense"]
    assert gram.steps == dense.steps and gram.converged and dense.converged, gram.summary()
    torch.testing.assert_close(gram.params["x"], dense.params["x"], rtol=1e-12, atol=1e-13)
    assert float(problem.residual(gram.params)) <= 1e-13
    three = {m: gdla.solve(problem, optimizer="levenberg-marquardt", method=m, max_steps=3) for m in runs}
    torch.testing.assert_close(three["gram"].params["x"], three["dense"].params["x"], rtol=1e-13, atol=1e-14)
    assert float(three["gram"].params["x"].abs().max()) > 0.1  # the steps moved: the comparison is not vacuous


def test_auto_takes_the_gram_path_only_where_declared_and_wide() -> None:
    params = WideFit().init_params(torch.Generator())
    assert LevenbergMarquardt(WideFit(), dict(params)).method == "gram"
    assert LevenbergMarquardt(WideFit(declare_gram=False), dict(params)).method == "dense"
    assert _path("auto", UNKNOWNS, RESIDUALS, gram=True) == "gram"
    assert _path("auto", 10, 10, gram=True) == "dense"  # not wide: the unknowns' system, Moré's scaling
    assert _path("auto", 10**6, GRAM_SIDE + 1, gram=True) == "cg"  # its m × m factor would be too large
    assert _path("dense", UNKNOWNS, RESIDUALS, gram=True) == "dense"  # a named path is kept


def test_the_gram_path_needs_a_declared_gram_and_states_its_memory() -> None:
    problem = WideFit(declare_gram=False)
    params = problem.init_params(torch.Generator())
    with pytest.raises(InputError) as info:
        LevenbergMarquardt(problem, params, method="gram")
    message = str(info.value)
    assert "method: 'gram' needs problem 'test-wide-gram' to declare its residuals' Gram matrix" in message
    assert "(SumOfSquares.gram), and it declares none; use 'dense', 'cg' or 'auto'" in message
    # the declared J Jᵀ, its damped copy and their Cholesky factor: three residuals × residuals matrices
    assert LevenbergMarquardt.estimated_bytes(WideFit(), params, {}) == 3 * RESIDUALS * RESIDUALS * 8
    assert LevenbergMarquardt.estimated_bytes(WideFit(), params, {"method": "cg"}) is None


@pytest.mark.parametrize("name", ["inverse", "svd", "sparse", "toeplitz", "toeplitz-net"])
def test_among_the_built_ins_only_toeplitz_net_declares_a_gram(name: str) -> None:
    """``auto`` reaches the gram path through its usual pick (levenberg-marquardt, rank 45) and the declaration."""
    problem = gdla.get_problem(name).example()
    form = problem.sum_of_squares()
    declares = form is not None and form.gram is not None
    assert declares == (name == "toeplitz-net")
    if declares:
        assert choose(problem)[0] is LevenbergMarquardt
        params = problem.init_params(torch.Generator().manual_seed(0))
        assert LevenbergMarquardt(problem, params).method == "gram"
