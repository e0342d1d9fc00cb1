"""The contracts catch the mistakes they exist for: each check fails on a plugin that breaks its rule."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gdla
from gdla.testing import OptimizerContract, ProblemContract, SmallLeastSquares


class SignError(SmallLeastSquares):
    """A residual with a sign error: it vanishes at −x*, not at the answer."""

    name = "sign-error"

    def residual(self, params: gdla.Params) -> torch.Tensor:
        normal = self.A.mT @ (self.A @ params["x"] + self.b)
        return torch.linalg.vector_norm(normal) / torch.linalg.vector_norm(self.A.mT @ self.b)


class VectorLoss(SmallLeastSquares):
    name = "vector-loss"

    def loss(self, params: gdla.Params) -> torch.Tensor:
        return (self.A @ params["x"] - self.b).square() / 2


class WrongGradient(SmallLeastSquares):
    name = "wrong-gradient"

    def loss_and_grad(self, params: gdla.Params, backend: str = "autograd") -> tuple[torch.Tensor, gdla.Params]:
        loss, grads = super().loss_and_grad(params, backend)
        return loss, {"x": 2 * grads["x"]}  # twice the real gradient


class WrongAdjoint(SmallLeastSquares):
    name = "wrong-adjoint"

    def least_squares(self) -> gdla.LinearLeastSquares:
        form = super().least_squares()
        return gdla.LinearLeastSquares(key="x", apply=form.apply, adjoint=lambda r: self.A.mT @ r + 0.1, rhs=form.rhs,
                                       loss_of=form.loss_of)


class Float32Start(SmallLeastSquares):
    name = "float32-start"

    def init_params(self, generator: torch.Generator) -> gdla.Params:
        return {"x": super().init_params(generator)["x"].float()}  # the problem is float64


class ListSolution(SmallLeastSquares):
    name = "list-solution"

    def solution(self, params: gdla.Params) -> list[float]:  # type: ignore[override]
        return params["x"].tolist()  # --save writes tensors


def contract_for(problem: gdla.Problem) -> ProblemContract:
    class Contract(ProblemContract):
        def make_problem(self, dtype: torch.dtype) -> gdla.Problem:
            return problem.to(dtype=dtype)

    return Contract()


def test_the_model_problem_passes() -> None:
    contract = contract_for(SmallLeastSquares.example())
    contract.test_reference_params_solve_the_problem()
    contract.test_loss_is_a_finite_scalar()
    contract.test_gradient_matches_finite_differences()
    contract.test_declared_least_squares_form_reproduces_the_loss()
    contract.test_declared_sum_of_squares_reproduces_the_loss()
    contract.test_project_is_idempotent()
    contract.test_residual_and_solution_keep_their_rules()


@pytest.mark.parametrize(
    ("problem", "check", "message"),
    [
        (SignError.example(), "test_reference_params_solve_the_problem", "residual"),
        (VectorLoss.example(), "test_loss_is_a_finite_scalar", "0-dim"),
        (WrongGradient.example(), "test_gradient_matches_finite_differences", None),
        (WrongAdjoint.example(), "test_declared_least_squares_form_reproduces_the_loss", "adjoint"),
        (
            Float32Start.example(),
            "test_init_params_follow_the_generator",
            r"^problem 'float32-start' \(.*Float32Start, not registered\): init_params\(\) must return a dict of "
            r"torch.float64 tensors on the problem's device cpu \(its data's\), returned 'x': a torch.float32 tensor",
        ),
        (
            ListSolution.example(),
            "test_residual_and_solution_keep_their_rules",
            r"solution\(\) must return a tensor or a tuple of tensors \(what --save writes\), returned a list$",
        ),
    ],
    ids=["sign-error", "vector-loss", "wrong-gradient", "wrong-adjoint", "float32-start", "list-solution"],
)
def test_each_broken_rule_fails_its_check(problem: gdla.Problem, check: str, message: str | None) -> None:
    with pytest.raises(AssertionError, match=message):
        getattr(contract_for(problem), check)()


class ForgetfulMomentum(gdla.Optimizer):
    """Heavy ball whose velocity is not declared as state: a reload loses it."""

    name = "forgetful"
    summary = "forgets its velocity"
    default_lr = 0.1

    def __init__(self, problem: gdla.Problem, params: gdla.Params, **options: Any) -> None:
        super().__init__(problem, params, **options)
        self.velocity = {key: torch.zeros_like(value) for key, value in params.items()}

    def step(self) -> torch.Tensor:
        loss, grads = self.problem.loss_and_grad(self.params)
        for key, value in self.params.items():
            self.velocity[key] = 0.9 * self.velocity[key] + grads[key]
            value.sub_(self.lr * self.velocity[key])
        return loss


class Silent(ForgetfulMomentum):
    name = "silent"

    def step(self) -> torch.Tensor:  # type: ignore[override]
        super().step()
        return None  # type: ignore[return-value]


@pytest.fixture
def registered(register_plugin: Any) -> None:
    def hook(register: Any) -> None:
        register(ForgetfulMomentum)
        register(Silent)

    plugin = type("P", (), {"register_optimizers": staticmethod(gdla.hookimpl(hook))})
    register_plugin(plugin, name="contract-fixtures")


def test_state_that_is_not_declared_fails_the_round_trip(registered: None) -> None:
    contract = type("C", (OptimizerContract,), {"optimizer_name": "forgetful"})()
    contract.test_step_returns_a_finite_scalar()
    with pytest.raises(AssertionError):
        contract.test_state_dict_round_trip()
    ForgetfulMomentum.state_attributes = ("velocity",)
    try:
        contract.test_state_dict_round_trip()
    finally:
        ForgetfulMomentum.state_attributes = ()


def test_a_step_that_returns_nothing_fails(registered: None) -> None:
    contract = type("C", (OptimizerContract,), {"optimizer_name": "silent"})()
    with pytest.raises(AssertionError, match="step\\(\\) returned None"):
        contract.test_step_returns_a_finite_scalar()


def test_a_bad_state_dict_is_refused_by_name() -> None:
    problem = SmallLeastSquares.example()
    optimizer = gdla.get_optimizer("cg")(problem, problem.init_params(torch.Generator()))
    with pytest.raises(gdla.InputError, match="optimizer 'cg' expected a state_dict with entries"):
        optimizer.load_state_dict({"nonsense": 1})
