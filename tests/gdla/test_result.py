"""``Result``: the JSON form (a faithful round trip, non-finite floats as null) and the summary."""

from __future__ import annotations

import json
import math
import pickle
from typing import Any

import pytest
import torch

import gdla
from gdla.result import STOP_REASONS, Result
from gdla.stopping import Losses


def make_result(**overrides: Any) -> Result:
    M = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)  # shape: (2, 2)
    fields: dict[str, Any] = {
        "solution": M,
        "params": {"M": M},
        "losses": [1.0, 0.25, 1e-12],
        "steps": 3,
        "stop_reason": "converged",
        "seconds": 0.5,
        "setup_seconds": 0.25,
        "summary_seconds": 0.0,
        "batch_status": None,
        "member_residuals": None,
        "backend": "autograd",
        "metrics": {"residual": 1e-11, "error": 2e-11},
        "problem": "inverse",
        "optimizer": "momentum",
        "message": STOP_REASONS["converged"],
        "condition": 14.9,
        "settings": {"lr": 0.1, "dtype": torch.float64, "seed": 0, "optimizer.nesterov": False},
        "warnings": ["careful"],
    }
    fields.update(overrides)
    return Result(**fields)


def test_to_dict_survives_a_json_round_trip() -> None:
    result = make_result()
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data == {
        "problem": "inverse",
        "optimizer": "momentum",
        "solution": [[1.0, 2.0], [3.0, 4.0]],
        "params": {"M": [[1.0, 2.0], [3.0, 4.0]]},
        "losses": [1.0, 0.25, 1e-12],
        "steps": 3,
        "stop_reason": "converged",
        "message": "the relative residual reached tol",
        "seconds": 0.5,
        "setup_seconds": 0.25,
        "summary_seconds": 0.0,
        "batch_status": None,
        "member_residuals": None,
        "backend": "autograd",
        "metrics": {"residual": 1e-11, "error": 2e-11},
        "condition": 14.9,
        "settings": {"lr": 0.1, "dtype": "float64", "seed": 0, "optimizer.nesterov": False},
        "warnings": ["careful"],
    }
    # tensors come back exactly (float64 -> JSON -> float64 is lossless)
    assert torch.equal(torch.tensor(data["solution"], dtype=torch.float64), result.solution)


def test_non_finite_numbers_become_null() -> None:
    result = make_result(
        losses=[1.0, math.inf, math.nan],
        metrics={"residual": math.nan, "error": -math.inf},
        condition=math.inf,
        solution=torch.tensor([[math.nan, 1.0]]),
        params={"M": torch.tensor([[math.nan, 1.0]])},
        stop_reason="diverged",
    )
    data = result.to_dict()
    text = json.dumps(data, allow_nan=False)  # raises if any NaN/Inf slipped through
    assert json.loads(text)["losses"] == [1.0, None, None]
    assert data["metrics"] == {"residual": None, "error": None}
    assert data["condition"] is None
    assert data["solution"] == [[None, 1.0]]
    assert data["params"] == {"M": [[None, 1.0]]}


def test_tuple_solutions_and_odd_settings() -> None:
    U, S = torch.eye(2), torch.tensor([2.0, 1.0])
    result = make_result(solution=(U, S), condition=None, settings={"device": torch.device("cpu"), "kinds": ("a", 1)})
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["solution"] == [[[1.0, 0.0], [0.0, 1.0]], [2.0, 1.0]]
    assert data["condition"] is None
    assert data["settings"] == {"device": "cpu", "kinds": ["a", 1]}


def test_converged_property_follows_stop_reason() -> None:
    assert make_result().converged
    for reason in ("max_steps", "diverged", "stalled", "callback"):
        assert not make_result(stop_reason=reason).converged


def test_summary_is_readable() -> None:
    text = make_result().summary()
    lines = text.splitlines()
    assert lines[0] == "inverse with momentum (autograd): converged after 3 steps in 0.500 s (set-up 0.250 s)"
    assert lines[1] == "  the relative residual reached tol"
    assert lines[2] == "  final loss 1.000e-12; residual 1.000e-11, error 2.000e-11"
    assert lines[3] == "  condition number estimate 1.490e+01"
    assert lines[4] == "  warning: careful"


def test_summary_names_the_method_auto_picked() -> None:
    settings = {"optimizer.method": "newton-schulz", "optimizer.reason": "matrix inverse"}
    result = make_result(optimizer="auto", settings=settings)
    assert result.method == "auto → newton-schulz"
    lines = result.summary().splitlines()
    assert lines[0].startswith("inverse with auto → newton-schulz (autograd):")
    assert "  auto chose newton-schulz: matrix inverse" in lines


def test_summary_without_losses_or_condition() -> None:
    text = make_result(losses=[], steps=0, condition=None, warnings=[]).summary()
    assert "final loss n/a" in text
    assert "condition" not in text
    assert len(text.splitlines()) == 3


def test_every_stop_reason_has_a_sentence() -> None:
    assert set(STOP_REASONS) == {"converged", "max_steps", "diverged", "stalled", "callback"}
    assert all(isinstance(text, str) and text for text in STOP_REASONS.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_to_dict_of_float32_tensors(dtype: torch.dtype) -> None:
    value = torch.tensor([[0.1, 0.2]], dtype=dtype)
    data = make_result(solution=value, params={"M": value}).to_dict()
    assert data["solution"] == value.tolist()
    assert all(isinstance(x, float) for x in data["solution"][0])


# -- Metrics: figures computed when read -------------------------------------------------------------
def test_metrics_compute_a_callable_figure_only_when_read_and_once() -> None:
    from gdla.result import Metrics

    calls: list[str] = []

    def costly() -> torch.Tensor:
        calls.append("error")
        return torch.tensor(0.25)

    notes: list[str] = []
    metrics = Metrics({"residual": 1e-9, "error": costly}, notes)
    assert metrics.pending == ("error",) and calls == [] and "error" in metrics
    assert metrics["residual"] == 1e-9 and calls == []
    assert metrics["error"] == 0.25 and metrics["error"] == 0.25 and calls == ["error"]
    assert metrics.pending == () and metrics == {"residual": 1e-9, "error": 0.25} and notes == []


def test_metrics_read_whole_resolve_everything_and_note_an_undefined_figure() -> None:
    import copy
    import pickle

    from gdla.result import Metrics

    notes: list[str] = []
    metrics = Metrics({"residual": 0.5, "error": lambda: torch.tensor(math.nan), "fit": lambda: 0.125}, notes)
    extended = metrics | {"loss": lambda: 2.0}
    assert isinstance(extended, Metrics) and extended.pending == ("error", "fit", "loss")
    assert dict(metrics.items())["fit"] == 0.125 and math.isnan(metrics["error"])
    assert len(notes) == 1 and "metric 'error' is undefined (NaN)" in notes[0]
    assert pickle.loads(pickle.dumps(extended))["loss"] == 2.0  # pickles as a plain dict of floats
    assert copy.deepcopy(metrics)["fit"] == 0.125
    metrics["fit"] = 1.0  # a figure set by hand is not overwritten by a pending one
    assert metrics["fit"] == 1.0


def test_solve_leaves_the_reference_error_pending_until_read() -> None:
    import gdla

    problem = gdla.get_problem("inverse").well_conditioned(32)
    result = gdla.solve(problem, optimizer="newton-schulz")
    assert set(result.metrics.pending) == {"residual", "error"}  # nothing computed by the solve itself
    assert result.metrics["error"] < 1e-12 and "error" not in result.metrics.pending
    assert result.to_dict()["metrics"]["residual"] <= 1e-12


def test_losses_become_a_packed_read_only_view() -> None:
    result = make_result()
    assert type(result.losses) is Losses and result.losses == [1.0, 0.25, 1e-12] and result.losses.nbytes == 24
    back = pickle.loads(pickle.dumps(result))
    assert type(back.losses) is Losses and back.losses == result.losses and back.to_dict() == result.to_dict()


def test_a_solve_keeps_eight_bytes_a_step() -> None:
    result = gdla.solve("inverse", optimizer="momentum", lr=0.5, max_steps=300, tol=0)
    assert type(result.losses) is Losses and len(result.losses) - 1 == result.steps == 300
    assert result.losses.nbytes == 8 * 301
    assert result.to_dict()["losses"] == result.losses.tolist() and type(result.to_dict()["losses"]) is list


def test_every_stop_reason_has_a_row_in_the_readme_table() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    header = "| `stop_reason` | what happened | `gdla solve` |"
    assert header in readme, "the README lost its stop-reason table"
    table = readme[readme.index(header) + len(header) :].split("\n\n")[0]
    documented = re.findall(r"^\| `(\w+)` \| (.+?) \| (.+) \|$", table, re.M)
    assert sorted(name for name, _, _ in documented) == sorted(STOP_REASONS)
    for name, meaning, exit_code in documented:
        assert len(meaning) > 30 and exit_code.startswith("exit "), name
