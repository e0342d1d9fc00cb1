"""The ``nadam`` optimizer: the same trajectory as ``torch.optim.NAdam``, and checked options."""

from __future__ import annotations

import pytest
import torch
from gdla_example_plugin.least_squares import LeastSquares
from gdla_example_plugin.nadam import NAdam

import gdla
from gdla.errors import InputError
from gdla.testing import OptimizerContract


def test_found_through_its_entry_point() -> None:
    entry = gdla.registry.entry("optimizer", "nadam")
    assert entry.obj is NAdam and entry.plugin == "gdla-example-plugin"


@pytest.mark.parametrize("options", [{}, {"betas": [0.8, 0.99], "momentum_decay": 0.01, "weight_decay": 0.1}])
def test_matches_torch_nadam_step_by_step(options: dict) -> None:
    problem = LeastSquares.example()
    result = gdla.solve(problem, optimizer="nadam", lr=0.03, max_steps=25, tol=0, seed=2, **options)
    # the same run written directly against torch.optim.NAdam
    X = problem.init_params(torch.Generator().manual_seed(2))["X"].requires_grad_(True)
    torch_options = {**options, "betas": tuple(options.get("betas", (0.9, 0.999)))}
    optimizer = torch.optim.NAdam([X], lr=0.03, **torch_options)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = problem.loss({"X": X})
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert result.losses[:-1] == pytest.approx(losses, rel=1e-12)
    assert result.losses[-1] == pytest.approx(float(problem.loss(result.params)), rel=1e-12)  # at the answer
    torch.testing.assert_close(result.params["X"], X.detach(), rtol=1e-12, atol=1e-15)


def test_describe_records_options() -> None:
    result = gdla.solve(LeastSquares.example(), optimizer="nadam", max_steps=2, eps=1e-6, schedule="cosine")
    assert result.settings["optimizer.eps"] == 1e-6
    assert result.settings["optimizer.schedule"] == "cosine"
    assert result.settings["lr"] == NAdam.default_lr


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"beta": 0.9}, r"nadam: unknown option\(s\) beta; expected some of betas, eps"),
        ({"betas": 0.9}, r"betas: expected a pair of numbers in \[0, 1\), received 0.9"),
        ({"betas": (0.9, 1.0)}, r"betas: expected a number in \[0, 1\), received 1.0"),
        ({"eps": 0}, r"eps: expected a number > 0, received 0"),
        ({"weight_decay": -1}, r"weight_decay: expected a number >= 0"),
        ({"decoupled_weight_decay": "yes"}, r"decoupled_weight_decay: expected True or False"),
    ],
)
def test_bad_options(options: dict, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        gdla.solve(LeastSquares.example(), optimizer="nadam", max_steps=2, **options)


class TestNAdamContract(OptimizerContract):
    optimizer_name = "nadam"
    solve_options = {"max_steps": 3000, "lr": 0.05}
    error_tol = 1e-4
