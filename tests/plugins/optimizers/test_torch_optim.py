"""The ``torch.optim`` optimizers (and ``momentum``, which shares their adapter): convergence,
default learning rates, option validation, state round trips and learning-rate schedules."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import torch

import gdla
from gdla.testing import relative_error
from gdla_plugins.optimizers import torch_optim
from gdla_plugins.optimizers.torch_optim import LINE_SEARCH_EVALS, estimate_scales

GRADIENT_METHODS = ("sgd", "momentum", "adam", "adagrad", "rmsprop", "lbfgs")
#: Options that give each method some internal state to save.
STATEFUL = {"sgd": {"momentum": 0.9, "nesterov": True}, "adagrad": {"lr_decay": 0.01}, "rmsprop": {"centered": True}}


class LocalInverse(gdla.Problem):
    r"""Test double of ``inverse``: :math:`\min_M \operatorname{mean}((A M - I)^2)` for ``A = I + 0.1 U``.

    ``U`` is uniform ``[0, 1)``, so ``A`` is well conditioned (about 2 at n = 16) and its top
    singular value stands apart from the rest, which makes the curvature probe exact.
    """

    name = "local-inverse"
    summary = "test double: well-conditioned inverse by mean((A M - I)^2)"

    def __init__(self, A: torch.Tensor) -> None:  # shape: (n, n)
        self.A = A

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> LocalInverse:
        n = size or 16
        noise = torch.rand(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return cls((torch.eye(n, dtype=torch.float64) + 0.1 * noise).to(dtype))

    def init_params(self, generator: torch.Generator) -> gdla.Params:
        n = self.A.shape[-1]
        return {"M": torch.rand(n, n, generator=generator, dtype=torch.float64).to(self.dtype) / n}

    def gap(self, params: gdla.Params) -> torch.Tensor:
        return self.A @ params["M"] - torch.eye(self.A.shape[-1], dtype=self.dtype)

    def loss(self, params: gdla.Params) -> torch.Tensor:
        return self.gap(params).square().mean()

    def solution(self, params: gdla.Params) -> torch.Tensor:
        return params["M"]

    def residual(self, params: gdla.Params) -> torch.Tensor:
        return torch.linalg.matrix_norm(self.gap(params)) / math.sqrt(self.A.shape[-1])

    def reference(self) -> torch.Tensor:
        return torch.linalg.inv(self.A)

    def error(self, params: gdla.Params) -> torch.Tensor:
        return torch.tensor(relative_error(params["M"], self.reference()))


def build(name: str, problem: gdla.Problem, **options: Any) -> gdla.GradientOptimizer:
    """The optimizer ``name`` on fresh parameters (seed 0), as ``gdla.solve`` would build it."""
    params = problem.init_params(torch.Generator().manual_seed(0))
    options.setdefault("backend", "autograd")
    return gdla.get_optimizer(name)(problem, params, **options)


def learning_rates(opt: gdla.GradientOptimizer, steps: int) -> list[float]:
    """The learning rate in force after each of ``steps`` steps."""
    rates = []
    for _ in range(steps):
        opt.step()
        rates.append(opt.torch_optimizer.param_groups[0]["lr"])
    return rates


# -- convergence -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-6), (torch.float32, 1e-3)])
def test_converges_on_a_well_conditioned_inverse(name: str, dtype: torch.dtype, tol: float) -> None:
    problem = LocalInverse.example(16, dtype=dtype)
    result = gdla.solve(problem, optimizer=name, backend="autograd")
    assert result.stop_reason == "converged", result.summary()
    assert relative_error(result.solution, torch.linalg.inv(problem.A.double())) <= tol
    assert result.solution.dtype == dtype


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_converges_on_the_inverse_plugin_batch(name: str) -> None:
    problem = gdla.get_problem("inverse").well_conditioned(12, batch=(3,), seed=2)
    result = gdla.solve(problem, optimizer=name, backend="autograd")
    assert result.stop_reason == "converged", result.summary()
    for b in range(3):
        assert relative_error(result.solution[b], torch.linalg.inv(problem.A[b])) <= 1e-6


def test_solve_by_registered_name(register_classes) -> None:
    register_classes(LocalInverse, name="local-inverse-plugin")
    result = gdla.solve("local-inverse", optimizer="adagrad", backend="autograd")
    assert result.converged
    assert relative_error(result.solution, torch.linalg.inv(LocalInverse.example().A)) <= 1e-6


# -- default learning rates -------------------------------------------------------------------------
def test_probe_finds_the_exact_curvature_and_distance_of_a_quadratic() -> None:
    problem = LocalInverse.example(16)
    n = 16
    lipschitz = 2 * float(torch.linalg.matrix_norm(problem.A, ord=2)) ** 2 / n**2
    start = problem.init_params(torch.Generator().manual_seed(0))["M"]
    grad = 2 / n**2 * problem.A.T @ (problem.A @ start - torch.eye(n, dtype=torch.float64))
    distance = float(torch.linalg.vector_norm(grad)) / (lipschitz * n)
    scales = estimate_scales(problem)
    assert scales.lipschitz == pytest.approx(lipschitz, rel=1e-7)
    assert scales.distance == pytest.approx(distance, rel=1e-7)

    expected = {
        "sgd": 1 / lipschitz,
        "momentum": 0.5 / lipschitz,
        "adam": distance,
        "adagrad": 3 * distance,
        "rmsprop": 0.02 * distance,
        "lbfgs": 1.0,
    }
    for name, lr in expected.items():
        assert gdla.get_optimizer(name).default_lr_for(problem) == pytest.approx(lr, rel=1e-7), name


def test_probe_scales_with_the_problem() -> None:
    problem = LocalInverse.example(8)
    scaled = LocalInverse(10 * problem.A)  # curvature x100; the inverse, and the distance, /10... roughly
    base, big = estimate_scales(problem), estimate_scales(scaled)
    assert big.lipschitz == pytest.approx(100 * base.lipschitz, rel=1e-6)
    assert gdla.get_optimizer("sgd").default_lr_for(scaled) == pytest.approx(1 / big.lipschitz, rel=1e-12)


def test_probe_falls_back_to_default_lr_at_the_answer() -> None:
    class StartsSolved(LocalInverse):
        def init_params(self, generator: torch.Generator) -> gdla.Params:
            return {"M": torch.linalg.inv(self.A)}

    problem = StartsSolved(LocalInverse.example(4).A)
    scales = estimate_scales(problem)
    assert scales.distance is None
    assert scales.lipschitz == pytest.approx(2 * float(torch.linalg.matrix_norm(problem.A, ord=2)) ** 2 / 16, rel=1e-5)
    assert gdla.get_optimizer("sgd").default_lr_for(problem) == pytest.approx(1 / scales.lipschitz)
    for name in ("adam", "adagrad", "rmsprop"):
        cls = gdla.get_optimizer(name)
        assert cls.default_lr_for(problem) == cls.default_lr


def test_probe_falls_back_to_default_lr_without_curvature() -> None:
    class Linear(LocalInverse):
        def loss(self, params: gdla.Params) -> torch.Tensor:
            return (self.A * params["M"]).sum()  # zero Hessian

    problem = Linear(LocalInverse.example(4).A)
    assert estimate_scales(problem) is None
    for name in GRADIENT_METHODS:
        cls = gdla.get_optimizer(name)
        assert cls.default_lr_for(problem) == cls.default_lr


def test_probe_leaves_the_global_random_state_alone() -> None:
    before = torch.random.get_rng_state()
    estimate_scales(LocalInverse.example(8))
    assert torch.equal(torch.random.get_rng_state(), before)


# -- option validation ------------------------------------------------------------------------------
INVALID = [
    ("sgd", {"momentun": 0.9}, ["momentun", "did you mean 'momentum'", "its options", "dampening", "nesterov"]),
    ("sgd", {"momentum": 1.0}, ["momentum", "[0, 1)", "1.0"]),
    ("sgd", {"dampening": -0.5}, ["dampening", "[0, 1)", "-0.5"]),
    ("sgd", {"nesterov": True}, ["nesterov", "momentum > 0", "momentum=0.0"]),
    ("sgd", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ["nesterov", "dampening = 0", "dampening=0.1"]),
    ("sgd", {"nesterov": 1, "momentum": 0.9}, ["nesterov", "True or False", "1"]),
    ("sgd", {"weight_decay": -1e-3}, ["weight_decay", ">= 0", "-0.001"]),
    ("adam", {"betas": (0.9,)}, ["betas", "pair (beta1, beta2)", "(0.9,)"]),
    ("adam", {"betas": "0.9"}, ["betas", "pair", "'0.9'"]),
    ("adam", {"betas": (0.9, 1.0)}, ["betas[1]", "[0, 1)", "1.0"]),
    ("adam", {"betas": (-0.1, 0.9)}, ["betas[0]", "[0, 1)", "-0.1"]),
    ("adam", {"eps": 0}, ["eps", "> 0", "0"]),
    ("adam", {"amsgrad": "yes"}, ["amsgrad", "True or False", "'yes'"]),
    ("adam", {"momentum": 0.9}, ["momentum", "'adam' has no option", "betas", "amsgrad"]),
    ("adagrad", {"lr_decay": -1}, ["lr_decay", ">= 0", "-1"]),
    ("adagrad", {"initial_accumulator_value": float("inf")}, ["initial_accumulator_value", "finite", "inf"]),
    ("rmsprop", {"alpha": 1.0}, ["alpha", "[0, 1)", "1.0"]),
    ("rmsprop", {"centered": None}, ["centered", "True or False", "None"]),
    ("rmsprop", {"momentum": 2}, ["momentum", "[0, 1)", "2"]),
    ("lbfgs", {"history_size": 0}, ["history_size", ">= 1", "0"]),
    ("lbfgs", {"max_iter": 2.5}, ["max_iter", "an integer", "2.5"]),
    ("lbfgs", {"max_eval": 1}, ["max_eval", "max_iter=1", "received 1"]),
    ("lbfgs", {"line_search_fn": "armijo"}, ["line_search_fn", "'strong_wolfe'", "None", "'armijo'"]),
    ("lbfgs", {"tolerance_grad": -1.0}, ["tolerance_grad", ">= 0", "-1.0"]),
]


@pytest.mark.parametrize(("name", "options", "fragments"), INVALID)
def test_invalid_options_never_reach_torch(monkeypatch, name: str, options: dict, fragments: list[str]) -> None:
    cls = gdla.get_optimizer(name)

    def torch_must_not_be_called(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"torch optimizer built with invalid options {kwargs}")

    monkeypatch.setattr(cls, "torch_class", torch_must_not_be_called)
    with pytest.raises(gdla.InputError) as info:
        build(name, LocalInverse.example(4), lr=0.1, **options)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("lr", [0, -0.5, float("nan"), "fast"])
def test_invalid_learning_rate(name: str, lr: Any) -> None:
    with pytest.raises(gdla.InputError, match=r"^lr: expected a"):
        build(name, LocalInverse.example(4), lr=lr)


def test_invalid_option_through_solve() -> None:
    with pytest.raises(gdla.InputError, match=r"betas\[0\]: expected a number in \[0, 1\), received 1.5"):
        gdla.solve(LocalInverse.example(4), optimizer="adam", betas=(1.5, 0.9), backend="autograd")


def test_valid_options_reach_torch() -> None:
    opt = build("sgd", LocalInverse.example(4), lr=0.2, momentum=0.5, nesterov=True, weight_decay=1e-4)
    group = opt.torch_optimizer.param_groups[0]
    assert isinstance(opt.torch_optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"], group["dampening"], group["weight_decay"]) == (
        0.2,
        0.5,
        True,
        0.0,
        1e-4,
    )
    adam = build("adam", LocalInverse.example(4), betas=[0.8, 0.99], amsgrad=True).torch_optimizer.param_groups[0]
    assert adam["betas"] == (0.8, 0.99) and adam["amsgrad"] is True


# -- state round trip ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    problem = LocalInverse.example(8)
    options = STATEFUL.get(name, {})
    first = build(name, problem, max_steps=100, **options)
    for _ in range(5):
        first.step()
    assert first.torch_optimizer.state, "the optimizer should hold state by now"
    saved_params = {key: value.clone() for key, value in first.params.items()}
    saved_state = copy.deepcopy(first.torch_optimizer.state_dict())
    saved_schedule = copy.deepcopy(first.scheduler.state_dict()) if first.scheduler is not None else None

    losses_first = [float(first.step()) for _ in range(5)]

    second = gdla.get_optimizer(name)(problem, saved_params, backend="autograd", max_steps=100, **options)
    second.torch_optimizer.load_state_dict(saved_state)
    if saved_schedule is not None:
        second.scheduler.load_state_dict(saved_schedule)
    losses_second = [float(second.step()) for _ in range(5)]

    assert losses_second == losses_first
    assert torch.equal(second.params["M"], first.params["M"])


# -- schedules ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_step_schedule_halves_the_rate_every_two_steps(name: str) -> None:
    extra = {"line_search_fn": None} if name == "lbfgs" else {}
    opt = build(
        name,
        LocalInverse.example(4),
        lr=0.01,
        schedule="step",
        schedule_options={"step_size": 2, "gamma": 0.5},
        **extra,
    )
    assert learning_rates(opt, 6) == pytest.approx([0.01 * 0.5 ** (t // 2) for t in range(1, 7)], rel=1e-12)
    assert opt.describe()["schedule"] == "step"


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_cosine_schedule_reaches_eta_min_at_max_steps(name: str) -> None:
    extra = {"line_search_fn": None} if name == "lbfgs" else {}
    opt = build(name, LocalInverse.example(4), lr=0.01, max_steps=8, schedule="cosine", **extra)
    rates = learning_rates(opt, 8)
    expected = [0.005 * (1 + math.cos(math.pi * t / 8)) for t in range(1, 9)]
    assert rates == pytest.approx(expected, abs=1e-15)


def test_lbfgs_refuses_a_schedule_with_its_line_search() -> None:
    with pytest.raises(gdla.InputError) as info:
        build("lbfgs", LocalInverse.example(4), schedule="cosine")
    message = str(info.value)
    assert message.startswith("schedule: ")
    assert "'lbfgs'" in message and "line_search_fn=None" in message and "'cosine'" in message


def test_adam_decays_exponentially_unless_told_otherwise() -> None:
    problem = LocalInverse.example(4)
    default = build("adam", problem, lr=0.05)
    assert default.describe()["schedule"] == "exponential"
    assert learning_rates(default, 5) == pytest.approx([0.05 * 0.999**t for t in range(1, 6)], rel=1e-12)
    constant = build("adam", problem, lr=0.05, schedule=None)
    assert constant.scheduler is None and learning_rates(constant, 3) == [0.05] * 3
    assert "schedule" not in constant.describe()


def test_seed_003_stepped_adam() -> None:
    # seed 003: Adam at 0.05, then 0.025 from step 10,000 and 0.01 from step 100,000
    opt = build("adam", LocalInverse.example(4), lr=0.05, schedule="multistep")
    factor = opt.scheduler.lr_lambdas[0]
    lrs = {t: 0.05 * factor(t) for t in (0, 9_999, 10_000, 99_999, 100_000, 10**6)}
    assert lrs == pytest.approx({0: 0.05, 9_999: 0.05, 10_000: 0.025, 99_999: 0.025, 100_000: 0.01, 10**6: 0.01})
    # the same rule, stepped for real with the milestones brought close
    short = build(
        "adam", LocalInverse.example(4), lr=0.05, schedule="multistep", schedule_options={"milestones": [2, 4]}
    )
    assert learning_rates(short, 5) == pytest.approx([0.05, 0.025, 0.025, 0.01, 0.01])


# -- settings and descriptions --------------------------------------------------------------------------
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_describe_records_every_setting(name: str) -> None:
    cls = gdla.get_optimizer(name)
    assert cls.summary and "\n" not in cls.summary and len(cls.summary) <= 120
    opt = build(name, LocalInverse.example(4), lr=0.125)
    info = opt.describe()
    assert info["name"] == name and info["lr"] == 0.125
    assert set(cls.accepted) <= set(info)
    json.dumps(info)  # JSON-ready
    for key, option in cls.accepted.items():
        default = list(option.default) if isinstance(option.default, tuple) else option.default
        if option.default is not None:
            assert info[key] == default, key


def test_result_settings_carry_the_options() -> None:
    result = gdla.solve(LocalInverse.example(4), optimizer="rmsprop", centered=True, max_steps=3, backend="autograd")
    assert result.settings["optimizer.centered"] is True
    assert result.settings["optimizer.alpha"] == 0.999
    json.dumps(result.to_dict())


@pytest.mark.parametrize("max_iter", [1, 3])
def test_lbfgs_step_runs_max_iter_iterations(max_iter: int) -> None:
    opt = build("lbfgs", LocalInverse.example(8), max_iter=max_iter)
    assert opt.describe()["max_eval"] == LINE_SEARCH_EVALS * max_iter
    for _ in range(4):
        opt.step()
    assert opt.torch_optimizer.state[opt.params["M"]]["n_iter"] == 4 * max_iter


def test_every_gradient_method_is_registered_here() -> None:
    registered = {cls.name for cls in (torch_optim.SGD, torch_optim.Adam, torch_optim.Adagrad)}
    registered |= {torch_optim.RMSprop.name, torch_optim.LBFGS.name}
    assert registered <= set(gdla.optimizers())
    for name in registered:
        assert gdla.get_optimizer(name).__module__ == "gdla_plugins.optimizers.torch_optim"
