"""The solve loop: stop rules, reproducibility, argument checks, conversions, convergence warning.

A tiny problem (a diagonal system ``D x = b``, solution ``b / d``) and tiny optimizers are
registered in an empty registry, so these tests exercise the core alone.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import gdla
from gdla import registry as registry_module
from gdla.errors import ConvergenceWarning, InputError, UnknownNameError
from gdla.loop import BLOW_UP, default_tol


class DiagonalSystem(gdla.Problem):
    r"""Solve ``D x = b`` for diagonal ``D``: :math:`L(x) = \tfrac12 \|d \odot x - b\|^2`."""

    name = "diagonal-system"
    summary = "diagonal linear system"

    def __init__(self, d: torch.Tensor, b: torch.Tensor) -> None:  # shape: (n,), (n,)
        self.d, self.b = d, b

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> DiagonalSystem:
        n = size or 3
        return cls(torch.linspace(1.0, 2.0, n, dtype=dtype), torch.arange(1.0, n + 1, dtype=dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.d.dtype

    @property
    def device(self) -> torch.device:
        return self.d.device

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> DiagonalSystem:
        d = self.d.to(dtype=dtype or self.dtype, device=device or self.device)
        return self if d is self.d else type(self)(d, self.b.to(dtype=d.dtype, device=d.device))

    def init_params(self, generator: torch.Generator) -> gdla.Params:
        return {"x": torch.rand(self.d.shape, generator=generator, dtype=self.dtype)}

    def loss(self, params: gdla.Params) -> torch.Tensor:
        return ((self.d * params["x"] - self.b) ** 2).sum() / 2

    def solution(self, params: gdla.Params) -> torch.Tensor:
        return params["x"]

    def residual(self, params: gdla.Params) -> torch.Tensor:
        return torch.linalg.norm(self.d * params["x"] - self.b) / torch.linalg.norm(self.b)

    def reference(self) -> torch.Tensor:
        return self.b / self.d

    def error(self, params: gdla.Params) -> torch.Tensor:
        return torch.linalg.norm(params["x"] - self.reference()) / torch.linalg.norm(self.reference())

    def condition_estimate(self) -> float:
        return float(self.d.max() / self.d.min())


class PlainGD(gdla.GradientOptimizer):
    """``x ← x − lr ∇L``; contracts by ``|1 − lr d_i²|`` per step on the diagonal system."""

    name = "plain-gd"
    summary = "gradient descent"
    default_lr = 0.3

    def build(self, tensors: list[torch.Tensor], lr: float | None, **options: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(tensors, lr=lr, **options)


class Frozen(gdla.Optimizer):
    """Never moves: the loss stays constant, so only ``stalled`` or ``max_steps`` can end a run."""

    name = "frozen"
    summary = "does nothing"
    default_lr = None

    def step(self) -> torch.Tensor:
        return self.problem.loss(self.params)


class Poison(gdla.Optimizer):
    """Writes NaN into the parameters at step ``at``."""

    name = "poison"
    summary = "NaN at a given step"

    def __init__(self, problem: gdla.Problem, params: gdla.Params, **kwargs: Any) -> None:
        self.at = kwargs.pop("at", 3)
        super().__init__(problem, params, **kwargs)
        self.count = 0

    def step(self) -> torch.Tensor:
        self.count += 1
        if self.count == self.at:
            self.params["x"].fill_(math.nan)
        return self.problem.loss(self.params)


class Slow(PlainGD):
    """Claims to need a million steps, which triggers the pre-run convergence warning."""

    name = "slow"

    def expected_steps(self, tol: float) -> float:
        return 1e6


class Suggested(PlainGD):
    """Named like a method ``solve`` suggests when another is expected to be too slow."""

    name = "newton-schulz"

    def expected_steps(self, tol: float) -> float | None:
        return 5.0


@gdla.hookimpl
def register_problems(register: Any) -> None:
    register(DiagonalSystem)


@gdla.hookimpl
def register_optimizers(register: Any) -> None:
    for cls in (PlainGD, Frozen, Poison, Slow):
        register(cls)


class ThisModule:
    register_problems = staticmethod(register_problems)
    register_optimizers = staticmethod(register_optimizers)


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch, register_plugin: Any) -> registry_module.Registry:
    fresh = registry_module.Registry(entry_points=lambda: [])
    monkeypatch.setattr(registry_module, "registry", fresh)
    register_plugin(ThisModule, name="test-solve")
    return fresh


@pytest.fixture
def problem() -> DiagonalSystem:
    return DiagonalSystem.example()


# -- stop rules ---------------------------------------------------------------------------------
def test_converges_to_the_reference(problem: DiagonalSystem) -> None:
    result = gdla.solve(problem, optimizer="plain-gd", tol=1e-10)
    assert result.stop_reason == "converged" and result.converged
    assert result.message == "the relative residual reached tol"
    torch.testing.assert_close(result.solution, problem.b / problem.d, rtol=1e-9, atol=0)
    assert result.metrics["residual"] <= 1e-10
    assert result.metrics["error"] <= 1e-9
    assert len(result.losses) == result.steps + 1
    # the slowest mode contracts by |1 - 0.3 * 1²| = 0.7 per step: about log(1e-10)/log(0.7) ≈ 65 steps
    assert 50 <= result.steps <= 80
    assert result.condition == pytest.approx(2.0)
    assert result.problem == "diagonal-system" and result.optimizer == "plain-gd"


def test_max_steps(problem: DiagonalSystem) -> None:
    result = gdla.solve(problem, optimizer="plain-gd", max_steps=5)
    assert (result.stop_reason, result.steps, len(result.losses)) == ("max_steps", 5, 6)
    assert not result.converged
    assert result.settings["max_steps"] == 5


def test_tol_zero_runs_every_step(problem: DiagonalSystem) -> None:
    result = gdla.solve(problem, optimizer="plain-gd", max_steps=400, tol=0)
    assert (result.stop_reason, result.steps) == ("max_steps", 400)
    assert result.metrics["residual"] < 1e-14  # converged long before, yet ran on
    frozen = gdla.solve(problem, optimizer="frozen", max_steps=300, tol=0, patience=5)
    assert (frozen.stop_reason, frozen.steps) == ("max_steps", 300), "tol=0 must disable 'stalled'"


def test_diverges_on_nan(problem: DiagonalSystem) -> None:
    result = gdla.solve(problem, optimizer="poison", at=4, max_steps=50)
    assert (result.stop_reason, result.steps) == ("diverged", 4)
    assert math.isnan(result.losses[-1])
    assert math.isnan(result.metrics["residual"]) and math.isnan(result.metrics["error"])
    assert result.to_dict()["metrics"] == {"residual": None, "error": None}


def test_diverges_on_blow_up(problem: DiagonalSystem) -> None:
    # lr 3 multiplies the d=2 mode by |1 - 3 * 4| = 11 per step: the loss grows by 121 per step
    result = gdla.solve(problem, optimizer="plain-gd", lr=3.0, max_steps=1000)
    assert result.stop_reason == "diverged"
    losses = result.losses  # losses[steps - 1]: the last step's, past the limit; losses[steps]: at the answer
    assert losses[-1] > losses[-2] > BLOW_UP * losses[0]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-3] <= BLOW_UP * losses[0], "must stop at the first step past the limit"
    # ~ log(1e12) / log(121) ≈ 5.8 steps
    assert 5 <= result.steps <= 8


def test_diverged_even_with_tol_zero(problem: DiagonalSystem) -> None:
    result = gdla.solve(problem, optimizer="plain-gd", lr=3.0, max_steps=1000, tol=0)
    assert result.stop_reason == "diverged"


def test_stalled_after_patience_steps(problem: DiagonalSystem) -> None:
    result = gdla.solve(problem, optimizer="frozen", max_steps=1000, patience=7)
    # step 1 sets the best loss; no 0.1% improvement in the next 7 steps
    assert (result.stop_reason, result.steps) == ("stalled", 8)
    assert result.metrics["residual"] > 0.1


def test_default_patience(problem: DiagonalSystem) -> None:
    result = gdla.solve(problem, optimizer="frozen", max_steps=5000)
    assert (result.stop_reason, result.steps) == ("stalled", 501)  # max(100, 5000 // 10) + 1


def test_default_patience_is_capped_whatever_the_budget(problem: DiagonalSystem) -> None:
    result = gdla.solve(problem, optimizer="frozen", max_steps=10**12)
    assert (result.stop_reason, result.steps) == ("stalled", 10_001)  # the cap, not 10**11
    assert len(result.losses) == result.steps + 1


def test_callback_sees_every_step_and_can_stop(problem: DiagonalSystem) -> None:
    seen: list[tuple[int, float]] = []

    def callback(step: int, loss: float, params: gdla.Params) -> bool | None:
        seen.append((step, loss))
        assert set(params) == {"x"}
        return True if step == 3 else None

    result = gdla.solve(problem, optimizer="plain-gd", callback=callback)
    assert (result.stop_reason, result.steps) == ("callback", 3)
    assert seen == [(1, result.losses[0]), (2, result.losses[1]), (3, result.losses[2])]


@pytest.mark.parametrize(("answer", "steps"), [("yes", 1), (1, 1), (None, 4), (0, 4), ("", 4)])
def test_callback_answers_are_read_by_truthiness(problem: DiagonalSystem, answer: object, steps: int) -> None:
    result = gdla.solve(problem, optimizer="plain-gd", max_steps=4, tol=0, callback=lambda *a: answer)
    assert (result.stop_reason, result.steps) == ("callback" if steps == 1 else "max_steps", steps)


def test_losses_decrease_under_gd(problem: DiagonalSystem) -> None:
    result = gdla.solve(problem, optimizer="plain-gd", max_steps=20, tol=0)
    assert all(b < a for a, b in zip(result.losses, result.losses[1:], strict=False))
    # the first loss is the loss at the starting point
    start = problem.init_params(torch.Generator().manual_seed(0))
    assert result.losses[0] == pytest.approx(float(problem.loss(start)), rel=1e-12)


# -- reproducibility ------------------------------------------------------------------------------
def test_same_seed_identical_other_seed_different(problem: DiagonalSystem) -> None:
    a = gdla.solve(problem, optimizer="plain-gd", seed=11, max_steps=10, tol=0)
    torch.manual_seed(999)  # the global RNG must not matter
    b = gdla.solve(problem, optimizer="plain-gd", seed=11, max_steps=10, tol=0)
    c = gdla.solve(problem, optimizer="plain-gd", seed=12, max_steps=10, tol=0)
    assert a.losses == b.losses
    assert torch.equal(a.params["x"], b.params["x"])
    assert a.losses[0] != c.losses[0]


def test_solve_does_not_touch_the_global_rng(problem: DiagonalSystem) -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    gdla.solve(problem, optimizer="plain-gd", max_steps=3)
    assert torch.equal(torch.rand(3), expected)


def test_problem_by_name_uses_its_example() -> None:
    result = gdla.solve("diagonal-system", optimizer="plain-gd")
    torch.testing.assert_close(result.solution, DiagonalSystem.example().reference(), rtol=1e-9, atol=0)


# -- conversions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", torch.float32, "float"])
def test_dtype_conversion(problem: DiagonalSystem, dtype: Any) -> None:
    result = gdla.solve(problem, optimizer="plain-gd", dtype=dtype)
    assert result.params["x"].dtype == torch.float32
    assert result.settings["dtype"] == torch.float32
    assert result.to_dict()["settings"]["dtype"] == "float32"
    assert problem.dtype == torch.float64, "the caller's problem is left as it was"
    assert result.stop_reason == "converged"
    assert result.metrics["residual"] <= default_tol(torch.float32) == 1e-5


def test_device_conversion(problem: DiagonalSystem) -> None:
    result = gdla.solve(problem, optimizer="plain-gd", device="cpu", max_steps=3)
    assert result.params["x"].device == torch.device("cpu")


def test_default_tol_follows_dtype() -> None:
    assert default_tol(torch.float64) == 1e-10
    assert default_tol(torch.float32) == 1e-5


def test_settings_record_the_run(problem: DiagonalSystem) -> None:
    result = gdla.solve(problem, optimizer="plain-gd", lr=0.1, max_steps=7, tol=1e-3, seed=4, momentum=0.5)
    settings = result.settings
    assert (settings["lr"], settings["max_steps"], settings["tol"], settings["seed"]) == (0.1, 7, 1e-3, 4)
    assert settings["optimizer.momentum"] == 0.5
    assert result.backend == "autograd"


# -- argument checks ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"lr": 0}, r"lr: expected a number > 0, received 0"),
        ({"lr": -0.5}, r"lr: expected a number > 0, received -0.5"),
        ({"lr": math.nan}, r"lr: expected a finite number"),
        ({"lr": "fast"}, r"lr: expected a number, received 'fast'"),
        ({"lr": True}, r"lr: expected a number, received True"),
        ({"max_steps": 0}, r"max_steps: expected an integer >= 1, received 0"),
        ({"max_steps": -3}, r"max_steps: expected an integer >= 1, received -3"),
        ({"max_steps": 2.5}, r"max_steps: expected an integer, received 2.5"),
        ({"tol": -1e-3}, r"tol: expected a number >= 0, received -0.001"),
        ({"seed": 1.5}, r"seed: expected an integer, received 1.5"),
        ({"patience": 0}, r"patience: expected an integer >= 1, received 0"),
        ({"callback": 5}, r"callback: expected a callable or None, received 5"),
        ({"dtype": "int32"}, r"dtype: expected 'float32', 'float64' or None, received 'int32'"),
        ({"dtype": torch.int64}, r"dtype: expected torch.float32 or torch.float64, received torch.int64"),
        ({"device": "tpu:9"}, r"device: expected a device such as 'cpu' or 'cuda:0', received 'tpu:9'"),
        ({"backend": "gpu"}, r"backend: expected one of 'auto', 'autograd', 'fused', received 'gpu'"),
        ({"optimizer": 3}, r"optimizer: expected a registered optimizer name \(str\), received int"),
    ],
)
def test_argument_errors_name_the_argument(problem: DiagonalSystem, kwargs: dict[str, Any], pattern: str) -> None:
    options = {"optimizer": "plain-gd", **kwargs}
    with pytest.raises(InputError, match=pattern):
        gdla.solve(problem, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda(problem: DiagonalSystem) -> None:
    with pytest.raises(InputError, match="device: received 'cuda', but this torch build or machine has no CUDA"):
        gdla.solve(problem, optimizer="plain-gd", device="cuda")


def test_unknown_optimizer_lists_valid_ones(problem: DiagonalSystem) -> None:
    with pytest.raises(UnknownNameError) as info:
        gdla.solve(problem, optimizer="plain-dg")
    text = str(info.value)
    assert "did you mean 'plain-gd'?" in text
    assert "valid optimizers: frozen, plain-gd, poison, slow" in text


def test_unknown_problem_name() -> None:
    with pytest.raises(UnknownNameError, match="valid problems: diagonal-system"):
        gdla.solve("diagonal", optimizer="plain-gd")


def test_problem_of_wrong_type() -> None:
    with pytest.raises(InputError, match="problem: expected a gdla.Problem instance or a problem name, received list"):
        gdla.solve([[1.0]], optimizer="plain-gd")  # type: ignore[arg-type]


def test_unsupported_problem_is_refused(problem: DiagonalSystem, register_plugin: Any) -> None:
    class Picky(PlainGD):
        name = "picky"

        @classmethod
        def unsupported_reason(cls, problem: gdla.Problem) -> str | None:
            return "needs a square matrix"

    plugin = type("P", (), {"register_optimizers": staticmethod(gdla.hookimpl(lambda register: register(Picky)))})
    register_plugin(plugin, name="picky-plugin")
    with pytest.raises(InputError, match="optimizer: 'picky' cannot solve problem 'diagonal-system': needs a square"):
        gdla.solve(problem, optimizer="picky")


# -- convergence warning -------------------------------------------------------------------------
def test_convergence_warning_before_a_hopeless_run(problem: DiagonalSystem) -> None:
    with pytest.warns(ConvergenceWarning, match="expected to need about 1e\\+06 steps") as record:
        result = gdla.solve(problem, optimizer="slow", max_steps=10)
    text = str(record[0].message)
    assert "more than max_steps=10" in text and "tol=1e-10" in text
    assert text.endswith("raise max_steps")
    assert result.warnings == [text]
    assert "warning: " + text in result.summary()


def test_convergence_warning_suggests_an_installed_method(problem: DiagonalSystem, register_plugin: Any) -> None:
    plugin = type("S", (), {"register_optimizers": staticmethod(gdla.hookimpl(lambda register: register(Suggested)))})
    register_plugin(plugin, name="suggested")
    with pytest.warns(ConvergenceWarning, match="optimizer='newton-schulz' should need about 5 steps"):
        gdla.solve(problem, optimizer="slow", max_steps=10)


def test_no_convergence_warning_when_enough_steps_or_tol_zero(problem: DiagonalSystem) -> None:
    # filterwarnings=error: any warning here fails the test
    assert gdla.solve(problem, optimizer="slow", max_steps=2_000_000, tol=1e-3).converged
    assert gdla.solve(problem, optimizer="slow", max_steps=10, tol=0).warnings == []


def test_an_undefined_metric_says_why(register_plugin: Any) -> None:
    class ZeroReference(DiagonalSystem):
        name = "zero-reference"

        def error(self, params: gdla.Params) -> torch.Tensor:
            return torch.tensor(math.nan, dtype=torch.float64)  # a zero reference, a nonzero answer

    problem = ZeroReference(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    result = gdla.solve(problem, optimizer="plain-gd", max_steps=3, tol=0)
    assert math.isnan(result.metrics["error"])
    assert any("metric 'error' is undefined (NaN)" in note for note in result.warnings), result.warnings
