"""A third party's least-squares problem gets the units promise: at data ×1e±160 it converges to the answer, or it
is not called converged (gdla/declared_units.py, the confirmed verdict in gdla/report.py, Plan.caller_view)."""

from __future__ import annotations

import pytest
import torch

import gdla
from gdla.declared_units import UNIT_STEP
from gdla.plan import make_plan
from gdla.testing_units import same_up_to_a_power_of_two, units_sweep_failure
from tests.test_readme_plugin import readme_plugin


class PlainFit(gdla.Problem):
    """The README's ``Fit`` as first written: norms by ``torch.linalg.vector_norm``, which underflow at 1e-160."""

    name = "plain-fit"
    summary = "a least-squares fit whose own residual and error underflow"

    def __init__(self, A: torch.Tensor, b: torch.Tensor) -> None:
        self.A, self.b = A, b

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> PlainFit:
        g = torch.Generator().manual_seed(seed)
        A = torch.randn(8, 4, generator=g, dtype=torch.float64) + torch.eye(8, 4)
        return cls(A.to(dtype), torch.randn(8, generator=g, dtype=torch.float64).to(dtype))

    def init_params(self, generator: torch.Generator) -> gdla.Params:
        return {"x": torch.zeros(self.A.shape[1], dtype=self.dtype)}

    def loss(self, params: gdla.Params) -> torch.Tensor:
        return (self.A @ params["x"] - self.b).square().sum() / 2

    def solution(self, params: gdla.Params) -> torch.Tensor:
        return params["x"].detach()

    def residual(self, params: gdla.Params) -> torch.Tensor:
        g = self.A.T @ (self.A @ params["x"] - self.b)
        return torch.linalg.vector_norm(g) / torch.linalg.vector_norm(self.A.T @ self.b)

    def reference(self) -> torch.Tensor:
        return torch.linalg.lstsq(self.A, self.b.unsqueeze(-1)).solution.squeeze(-1)

    def error(self, params: gdla.Params) -> torch.Tensor:
        ref = self.reference()
        return torch.linalg.vector_norm(params["x"] - ref) / torch.linalg.vector_norm(ref)

    def least_squares(self) -> gdla.LinearLeastSquares:
        A = self.A
        return gdla.LinearLeastSquares(key="x", apply=lambda d: A @ d, adjoint=lambda r: A.T @ r, rhs=self.b,
                                       loss_of=lambda r: r.square().sum() / 2)


class AsGivenFit(PlainFit):
    """The same solved as given (it opts out of normalised units): gdla confirms a ``converged`` verdict instead."""

    name = "as-given-fit"

    def normalized(self) -> None:
        return None


class UndeclaredFit(PlainFit):
    """The same without its least-squares form: gdla cannot tell how its units act."""

    name = "undeclared-fit"

    def least_squares(self) -> None:
        return None


def _answer(problem: PlainFit) -> torch.Tensor:
    """``lstsq`` in float64 on the data brought near 1 by a power of two (the same answer, no underflow)."""
    A, b = problem.A.double(), problem.b.double()
    ea, eb = int(torch.frexp(A.abs().max())[1]), int(torch.frexp(b.abs().max())[1])
    x = torch.linalg.lstsq(A * 2.0**-ea, (b * 2.0**-eb).unsqueeze(-1)).solution.squeeze(-1)
    return x * 2.0**-ea * 2.0**eb


def _true_error(x: torch.Tensor, answer: torch.Tensor) -> float:
    return float(gdla.relative_norm(x.double() - answer, answer))


SCALES = [
    (torch.float64, "b", 1e-160, 1e-9), (torch.float64, "b", 1e160, 1e-9), (torch.float64, "A", 1e-160, 1e-9),
    (torch.float64, "A", 1e160, 1e-9), (torch.float32, "b", 1e-30, 1e-4), (torch.float32, "b", 1e30, 1e-4),
    (torch.float32, "A", 1e-30, 1e-4), (torch.float32, "A", 1e30, 1e-4),
]


@pytest.mark.parametrize(("dtype", "which", "scale", "accuracy"), SCALES)
def test_a_declared_least_squares_plugin_converges_to_the_answer_at_any_units(
    dtype: torch.dtype, which: str, scale: float, accuracy: float
) -> None:
    """Was: ×1e-160 reported converged with residual 0 and error 0 at a true error of 1.9e-3; ×1e+160 diverged."""
    base = PlainFit.example(dtype=torch.float64)
    A, b = (base.A * scale, base.b) if which == "A" else (base.A, base.b * scale)
    problem = PlainFit(A.to(dtype), b.to(dtype))
    result = gdla.solve(problem, optimizer="cg")
    assert result.converged, result.summary()
    assert _true_error(result.solution, _answer(problem)) <= accuracy
    assert 0 < result.metrics["residual"] <= result.settings["tol"]  # the form's, in scaled arithmetic: not 0


def test_the_steps_are_the_same_bits_at_units_apart_by_powers_of_two_to_the_16() -> None:
    base = PlainFit.example()
    shift = 20 * UNIT_STEP  # 2^320 ≈ 1e96: the losses, in the caller's units, stay normal numbers
    runs = [
        gdla.solve(PlainFit(base.A * scale_a, base.b * scale_b), optimizer="adam", max_steps=12, tol=0)
        for scale_a, scale_b in ((1.0, 1.0), (1.0, 2.0**-shift), (2.0**shift, 2.0**shift), (2.0**-shift, 1.0))
    ]
    for run in runs[1:]:  # the same normalised steps: the same losses up to the loss's units (2^-640 for b)
        assert same_up_to_a_power_of_two(list(run.losses), list(runs[0].losses))
    assert runs[1].losses[-1] == runs[0].losses[-1] * 2.0 ** (-2 * shift)
    assert torch.equal(runs[1].solution * 2.0**shift, runs[0].solution)
    assert torch.equal(runs[2].solution, runs[0].solution)
    assert torch.equal(runs[3].solution * 2.0**-shift, runs[0].solution)


def test_ordinary_units_run_as_written() -> None:
    """Data within 2^±8 of 1 is not rescaled: the plugin's default learning rate keeps its meaning."""
    problem = PlainFit.example()
    work = problem.normalized()
    assert work is not None and (work.exponent, work.param_exponent, work.loss_exponent) == (0, 0, 0)
    params = problem.init_params(torch.Generator())
    assert torch.equal(work.problem.loss(params), problem.loss(params))


def test_a_residual_that_underflows_cannot_make_a_run_converged() -> None:
    """Solved as given: the declared form's figure confirms the verdict, or the run is not converged."""
    base = PlainFit.example()
    problem = AsGivenFit(base.A, base.b * 1e-160)
    result = gdla.solve(problem, optimizer="cg")
    true = _true_error(result.solution, _answer(problem))
    assert float(problem.residual(result.params)) == 0.0  # the plugin's own figure underflowed...
    assert true > 1e-6  # ...far from the answer
    assert result.stop_reason == "stalled", result.summary()
    assert any("normal-equations residual" in note for note in result.warnings), result.warnings


def test_the_readme_plugin_meets_it() -> None:
    Fit = readme_plugin()["Fit"]
    base = Fit.example()
    for A, b in ((base.A, base.b * 1e-160), (base.A * 1e160, base.b), (base.A * 1e-80, base.b * 1e80)):
        problem = Fit(A, b)
        result = gdla.solve(problem)
        true = _true_error(result.solution, _answer(problem))
        assert result.converged and true <= 1e-9, result.summary()
        assert result.metrics["error"] == pytest.approx(true, rel=0.5, abs=1e-14)  # its error(): not 0 from underflow


def test_a_callback_is_handed_the_callers_units() -> None:
    """``Plan.caller_view``: the parameters restored and the loss in the data's units."""
    base = PlainFit.example()
    problem = PlainFit(base.A, base.b * 2.0**-528)
    plan = make_plan(
        problem, "cg", lr=None, max_steps=10, tol=None, seed=0, backend="auto", dtype=None, device=None,
        callback=None, progress=False, patience=None, distributed=False, options={},
    )
    params = plan.work.init_params(torch.Generator())
    params["x"] += 1.0  # a point away from the start, in normalised units
    loss, shown = plan.caller_view(float(plan.work.loss(params)), params)
    assert torch.equal(shown["x"], params["x"] * 2.0**-528)
    assert loss == float(problem.loss(shown))


def test_the_units_sweep_names_what_to_declare() -> None:
    assert units_sweep_failure(PlainFit.example(), (-320, 320), {}) is None
    failure = units_sweep_failure(UndeclaredFit.example(), (-320, 320), {})
    assert failure is not None and "Declare least_squares()" in failure and "2^-320" in failure
