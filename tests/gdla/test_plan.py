"""The run plan: every decision once per solve, and what it hands the loop and the report."""

from __future__ import annotations

import collections
import warnings
from typing import Any

import pytest
import torch

import gdla
from gdla.errors import InputError
from gdla.plan import AUTO, Ranking, make_plan

BUILTIN_PROBLEMS = ("inverse", "svd", "sparse", "toeplitz", "toeplitz-net")


def _plan(problem: Any, optimizer: str = AUTO, **overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "lr": None, "max_steps": None, "tol": None, "seed": 0, "backend": "auto", "dtype": None, "device": None,
        "callback": None, "progress": False, "patience": None, "distributed": False, "options": {},
    }
    arguments.update(overrides)
    return make_plan(problem, optimizer, **arguments)


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """Counts the calls of every registered optimizer's ``suitability`` and ``fused_reason``."""
    counts: collections.Counter = collections.Counter()
    for name in gdla.optimizers():
        cls = gdla.get_optimizer(name)
        for hook in ("suitability", "fused_reason"):
            original = getattr(cls, hook)

            def counted(klass: type, *args: Any, _original: Any = original, _key: Any = (name, hook)) -> Any:
                counts[_key] += 1
                return _original(*args)

            monkeypatch.setattr(cls, hook, classmethod(counted))
    return counts


@pytest.mark.parametrize("name", BUILTIN_PROBLEMS)
def test_auto_asks_each_optimizer_once_per_solve(name: str, asked: collections.Counter) -> None:
    problem = gdla.get_problem(name).example()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = gdla.solve(problem, max_steps=2)
    assert result.steps >= 1
    suitability = {key[0]: count for key, count in asked.items() if key[1] == "suitability"}
    assert suitability and max(suitability.values()) == 1, suitability
    assert len(suitability) == len(gdla.optimizers()) - 1  # every method but auto itself, once each
    assert asked[(result.settings["optimizer.method"], "fused_reason")] <= 1


@pytest.mark.parametrize("name", BUILTIN_PROBLEMS)
def test_a_named_method_with_advice_asks_each_optimizer_at_most_once(name: str, asked: collections.Counter) -> None:
    """Advice ("optimizer=X should need about N steps") reads the same ranking, built only when needed."""
    problem = gdla.get_problem(name).example()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gdla.solve(problem, optimizer="sgd", max_steps=2, tol=1e-12)
    counts = [count for key, count in asked.items() if key[1] == "suitability"]
    assert not counts or max(counts) == 1, asked
    assert asked[("sgd", "fused_reason")] <= 1


def test_a_named_method_without_advice_ranks_nothing(asked: collections.Counter) -> None:
    gdla.solve(gdla.get_problem("inverse").example(), optimizer="newton-schulz")
    assert not [key for key, count in asked.items() if key[1] == "suitability" and count]


def test_auto_plan_names_the_method_and_the_reason() -> None:
    plan = _plan(gdla.get_problem("toeplitz").example())
    assert plan.requested == AUTO and plan.method.name == "cg"
    assert plan.reason is not None and "least-squares" in plan.reason
    assert plan.budget == 10_000 and plan.backend in ("autograd", "fused")
    result = gdla.solve(gdla.get_problem("toeplitz").example())
    assert result.optimizer == "auto" and result.settings["optimizer.method"] == "cg"
    assert result.settings["optimizer.reason"] == plan.reason


def test_auto_drops_a_learning_rate_for_a_method_without_one() -> None:
    plan = _plan(gdla.get_problem("inverse").example(), lr=0.5)
    assert plan.method.name == "newton-schulz" and plan.lr is None
    assert "lr=0.5 ignored" in plan.reason


def test_a_named_method_keeps_its_own_budget_and_no_reason() -> None:
    plan = _plan(gdla.get_problem("toeplitz").example(), "cg")
    assert plan.method is gdla.get_optimizer("cg") and plan.reason is None
    assert plan.budget == gdla.get_optimizer("cg").default_max_steps


def test_plan_refuses_bad_arguments_before_any_work() -> None:
    problem = gdla.get_problem("inverse").example()
    with pytest.raises(InputError, match="optimizer: expected a registered optimizer name"):
        _plan(problem, 3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="seed"):
        _plan(problem, seed=2**70)
    with pytest.raises(InputError, match="distributed"):
        _plan(problem, distributed="yes")


def test_ranking_is_best_first_and_asked_once(asked: collections.Counter) -> None:
    ranking = Ranking(gdla.get_problem("inverse").example())
    names = [candidate.name for candidate in ranking.suitable]
    assert names[0] == "newton-schulz" and ranking.best().name == "newton-schulz"
    ranks = [candidate.fit.rank for candidate in ranking.suitable]
    assert ranks == sorted(ranks)
    list(ranking.alternatives(besides={"newton-schulz"}))
    assert max(count for key, count in asked.items() if key[1] == "suitability") == 1


def test_the_plan_units_convert_a_learning_rate_exactly() -> None:
    """Seed 000's lr 0.9 is in the data's units: the plan converts it, the report converts it back."""
    A = torch.rand(4, 4, generator=torch.Generator().manual_seed(314)) * 8  # normalised by 2**-4
    problem = gdla.get_problem("inverse")(A.double())
    plan = _plan(problem, "momentum", lr=0.9)
    assert plan.units is not None and plan.lr != 0.9
    assert plan.reported_lr(plan.lr) == 0.9


class _Broken(gdla.Optimizer):
    name = "broken-suitability"
    summary = "a plugin whose suitability raises"

    @classmethod
    def suitability(cls, problem: Any) -> Any:
        raise ZeroDivisionError("oops")

    def step(self) -> torch.Tensor:  # pragma: no cover - never picked
        raise AssertionError


class _Wrong(_Broken):
    name = "wrong-suitability"

    @classmethod
    def suitability(cls, problem: Any) -> Any:
        return 3


def test_a_broken_suitability_is_left_out_with_a_warning_naming_it(register_classes: Any) -> None:
    register_classes(_Broken, _Wrong, name="broken-suitability-plugin")
    with pytest.warns(gdla.PluginWarning) as caught:
        result = gdla.solve(gdla.get_problem("toeplitz").example())
    assert result.converged and result.settings["optimizer.method"] == "cg"
    text = " | ".join(str(w.message) for w in caught)
    for words in ("'broken-suitability'", "_Broken", "ZeroDivisionError: oops", "'wrong-suitability'",
                  "returned 3", "left out of the ranking"):
        assert words in text, text


@pytest.mark.parametrize("optimizer", ["adam", "newton-schulz", "cg"])
def test_solve_under_inference_mode_works_as_outside_it(optimizer: str) -> None:
    A = torch.eye(4, dtype=torch.float64) + 0.1 * torch.arange(16, dtype=torch.float64).reshape(4, 4) / 16
    outside = gdla.solve(gdla.get_problem("inverse")(A), optimizer=optimizer)
    with torch.inference_mode():
        inside = gdla.solve(gdla.get_problem("inverse")(A.clone()), optimizer=optimizer)
    assert inside.stop_reason == outside.stop_reason == "converged"
    assert inside.losses == outside.losses and torch.equal(inside.solution, outside.solution)


@pytest.mark.parametrize("stderr", [None, "closed"])
def test_a_progress_bar_without_a_stderr_is_left_out(monkeypatch: pytest.MonkeyPatch, stderr: Any) -> None:
    import io
    import sys

    if stderr == "closed":
        stderr = io.StringIO()
        stderr.close()
    monkeypatch.setattr(sys, "stderr", stderr)
    result = gdla.solve(gdla.get_problem("inverse").example(), optimizer="newton-schulz", progress=True)
    assert result.converged
