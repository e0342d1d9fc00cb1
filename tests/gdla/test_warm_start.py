"""Warm starts: ``gdla.solve(..., init=...)`` (:mod:`gdla.warm_start`) and ``gdla solve --init FILE``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import gdla
from gdla.errors import ConvergenceWarning, InputError
from gdla.plan import make_plan
from gdla.scaling import scale_by_power_of_two

DOUBLE = torch.float64


def _matrix(seed: int = 0, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n, generator=g, dtype=DOUBLE) + 2 * n**0.5 * torch.eye(n, dtype=DOUBLE)


def _inverse(A: torch.Tensor) -> gdla.Problem:
    return gdla.get_problem("inverse")(A)


def test_newton_schulz_from_the_last_answer_needs_a_few_steps() -> None:
    A = _matrix()
    E = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=DOUBLE)
    first = gdla.solve(_inverse(A), optimizer="newton-schulz", tol=1e-12)
    warm = gdla.solve(_inverse(A + 1e-3 * E), optimizer="newton-schulz", init=first, tol=1e-12)
    cold = gdla.solve(_inverse(A + 1e-3 * E), optimizer="newton-schulz", tol=1e-12)
    assert warm.stop_reason == "converged" and warm.steps <= 3 < cold.steps
    assert warm.settings["optimizer.start"] == "init" and warm.warnings == []
    torch.testing.assert_close(warm.solution, torch.linalg.inv(A + 1e-3 * E), rtol=1e-10, atol=1e-12)


def test_newton_schulz_falls_back_to_its_safe_start_and_says_so() -> None:
    A = _matrix()
    far = {"M": 100 * torch.eye(4, dtype=DOUBLE)}
    with pytest.warns(ConvergenceWarning, match="safe start"):
        result = gdla.solve(_inverse(A), optimizer="newton-schulz", init=far, tol=1e-12)
    assert result.settings["optimizer.start"] == "safe" and result.stop_reason == "converged"
    assert any("‖I − A X₀‖₂ < 1" in note for note in result.warnings)


def test_an_explicit_start_option_is_kept() -> None:
    first = gdla.solve(_inverse(_matrix()), optimizer="newton-schulz", tol=1e-12)
    again = gdla.solve(_inverse(_matrix()), optimizer="newton-schulz", init=first, start="safe", tol=1e-12)
    assert again.settings["optimizer.start"] == "safe" and again.steps > 3


@pytest.mark.parametrize("method", ["cg", "lbfgs", "momentum", "levenberg-marquardt", "heavy-ball"])
def test_every_method_starts_from_the_answer(method: str) -> None:
    problem = _inverse(_matrix())
    exact = {"M": torch.linalg.inv(_matrix())}
    result = gdla.solve(problem, optimizer=method, init=exact, tol=1e-10)
    assert result.stop_reason == "converged" and result.steps == 1


def test_the_same_seed_and_init_give_the_same_bits() -> None:
    start = {"M": torch.linalg.inv(_matrix()) + 1e-3}
    runs = [gdla.solve(_inverse(_matrix(2)), optimizer="adam", init=start, max_steps=20, tol=0) for _ in range(2)]
    assert torch.equal(runs[0].solution, runs[1].solution)


def test_init_goes_into_normalised_units_exactly() -> None:
    A = _matrix() * 2.0**40  # the normalisation scales A by 2^-43, M by 2^43
    start = {"M": torch.linalg.inv(A)}
    plan = make_plan(
        _inverse(A), "newton-schulz", lr=None, max_steps=None, tol=None, seed=0, backend="auto", dtype=None,
        device=None, callback=None, progress=False, patience=None, distributed=False, options={}, init=start,
    )
    _, params = plan.start()
    assert torch.equal(params["M"], scale_by_power_of_two(start["M"], 43))
    assert torch.equal(plan.restore(params)["M"], start["M"])


@pytest.mark.parametrize(
    ("init", "match"),
    [
        ({"X": torch.zeros(4, 4, dtype=DOUBLE)}, r"init: expected the parameters 'M', received 'X'"),
        ({"M": torch.zeros(3, 4, dtype=DOUBLE)}, r"init\['M'\]: expected shape \(4, 4\), received \(3, 4\)"),
        ({"M": torch.zeros(4, 4)}, r"init\['M'\]: expected dtype torch.float64, received torch.float32"),
        ({"M": torch.full((4, 4), float("nan"), dtype=DOUBLE)}, r"init\['M'\]: expected finite values"),
        ({"M": [[0.0]]}, r"init\['M'\]: expected a tensor, received list"),
        ("M.npy", r"init: expected a gdla.Result, a dict of parameter tensors or one tensor, received str"),
    ],
)
def test_a_bad_init_is_refused_naming_it(init: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        gdla.solve(_inverse(_matrix()), init=init)


def test_a_bare_tensor_serves_a_problem_with_one_parameter_only() -> None:
    exact = torch.linalg.inv(_matrix())
    assert gdla.solve(_inverse(_matrix()), init=exact, tol=1e-10).steps == 1
    with pytest.raises(InputError, match="init: expected a dict naming the parameters 'U', 's', 'V'"):
        gdla.solve("svd", init=torch.zeros(5, 4, dtype=DOUBLE))


def test_the_command_line_starts_from_a_saved_answer(
    cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    answer = tmp_path / "X.pt"
    code, _, _ = cli("solve", "inverse", "--size", "5", "--tol", "1e-12", "--save", str(answer))
    assert code == 0
    code, out, _ = cli("solve", "inverse", "--size", "5", "--tol", "1e-12", "--init", str(answer), "--json")
    assert code == 0 and '"steps": 1' in out
    torch.save({"M": torch.zeros(3, 3, dtype=DOUBLE)}, tmp_path / "bad.pt")
    code, _, err = cli("solve", "inverse", "--size", "5", "--init", str(tmp_path / "bad.pt"))
    assert code == 1 and "init['M']: expected shape (5, 5), received (3, 3)" in err
