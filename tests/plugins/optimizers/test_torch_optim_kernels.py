"""The whole-run kernels behind the torch.optim methods (Adam on the inverse, SGD on the SVD penalty loss): the same
steps as the step-by-step path and as torch.optim with autograd."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gdla
from gdla_plugins.optimizers.torch_optim import estimate_scales
from gdla_plugins.problems.inverse import InverseProblem

# -- Adam's whole-run kernel ------------------------------------------------------------------------
needs_kernel = pytest.mark.skipif(not gdla.extension_status()[0], reason="the compiled extension gdla._C is not built")
SEED_003 = {"optimizer": "adam", "lr": 0.05, "schedule": "multistep", "max_steps": 400, "tol": 0,
            "schedule_options": {"milestones": [150, 300], "factors": [0.5, 0.2]}}


def _one_by_one(step: int, loss: float, params: gdla.Params) -> None:
    """A callback: the loop then goes step by step."""


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", ["right", "left", "both"])
def test_adam_whole_run_equals_the_step_by_step_path(dtype: torch.dtype, side: str) -> None:
    problem = InverseProblem.well_conditioned(16, dtype=dtype, side=side)
    bulk = gdla.solve(problem, **SEED_003)
    stepwise = gdla.solve(problem, callback=_one_by_one, **SEED_003)
    assert bulk.backend == stepwise.backend == "fused"
    assert (bulk.steps, bulk.stop_reason) == (stepwise.steps, stepwise.stop_reason) == (400, "max_steps")
    assert bulk.losses == stepwise.losses  # the same bits
    assert torch.equal(bulk.solution, stepwise.solution)


@needs_kernel
def test_adam_whole_run_matches_torch_adam_with_autograd() -> None:
    problem = InverseProblem.well_conditioned(16, side="left")
    fused = gdla.solve(problem, **SEED_003)
    reference = gdla.solve(problem, backend="autograd", **SEED_003)
    torch.testing.assert_close(torch.tensor(fused.losses), torch.tensor(reference.losses), rtol=1e-9, atol=1e-20)
    torch.testing.assert_close(fused.solution, reference.solution, rtol=1e-9, atol=1e-12)
    assert fused.settings["optimizer.schedule"] == "multistep"


@needs_kernel
def test_adam_state_round_trip_across_a_bulk_run() -> None:
    problem = InverseProblem.well_conditioned(6)
    params = problem.init_params(torch.Generator().manual_seed(0))
    twin = {key: value.clone() for key, value in params.items()}
    opt = gdla.get_optimizer("adam")(problem, params, lr=0.01, backend="fused", max_steps=100)
    first = opt.advance(40).losses.tolist()
    saved = opt.state_dict()
    later = opt.advance(30).losses.tolist()
    resumed = gdla.get_optimizer("adam")(problem, twin, lr=0.01, backend="fused", max_steps=100)
    resumed.advance(40)
    resumed.load_state_dict(saved)
    assert resumed.advance(30).losses.tolist() == later and len(first) == 40
    assert torch.equal(params["M"], twin["M"])
    assert opt.torch_optimizer.param_groups[0]["lr"] == resumed.torch_optimizer.param_groups[0]["lr"]


@needs_kernel
def test_adam_with_weight_decay_or_amsgrad_keeps_torch_adam() -> None:
    problem = InverseProblem.well_conditioned(4)
    for options in ({"weight_decay": 1e-4}, {"amsgrad": True}):
        opt = gdla.get_optimizer("adam")(problem, problem.init_params(torch.Generator()), backend="fused", **options)
        assert len(opt.advance(5).losses) == 1  # the kernel serves plain Adam only: one step a call


# -- SGD's whole-run kernel on the SVD penalty loss -------------------------------------------------------
SEED_001 = {"optimizer": "sgd", "lr": 0.9, "momentum": 0.9, "max_steps": 500, "tol": 0}


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("extra", [{}, {"nesterov": True, "lr": 0.3}, {"schedule": "cosine"}, {"lr": 5.0}])
def test_sgd_svd_whole_run_equals_the_step_by_step_path(dtype: torch.dtype, extra: dict) -> None:
    problem = gdla.get_problem("svd").example(dtype=dtype)
    bulk = gdla.solve(problem, **{**SEED_001, **extra})
    stepwise = gdla.solve(problem, callback=_one_by_one, **{**SEED_001, **extra})
    assert bulk.backend == stepwise.backend == "fused"
    assert (bulk.steps, bulk.stop_reason) == (stepwise.steps, stepwise.stop_reason)
    assert bulk.stop_reason == ("diverged" if extra.get("lr") == 5.0 else "max_steps")  # lr 5 blows up
    assert bulk.losses == stepwise.losses
    assert all(torch.equal(a, b) for a, b in zip(bulk.solution, stepwise.solution, strict=True))


@needs_kernel
def test_sgd_svd_whole_run_matches_torch_sgd_with_autograd() -> None:
    problem = gdla.get_problem("svd").example()
    fused = gdla.solve(problem, **SEED_001)
    reference = gdla.solve(problem, backend="autograd", **SEED_001)
    torch.testing.assert_close(torch.tensor(fused.losses), torch.tensor(reference.losses), rtol=1e-8, atol=1e-18)
    assert fused.metrics["error"] == pytest.approx(reference.metrics["error"], rel=1e-4)
    for got, want in zip(fused.solution, reference.solution, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [{}, {"activation": "tanh", "loss": "mse"}])
def test_sgd_masked_whole_run_equals_the_step_by_step_path(dtype: torch.dtype, options: dict) -> None:
    problem = gdla.get_problem("sparse").example(hops=2, dtype=dtype, **options)
    settings = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.5, "max_steps": 300, "tol": 0}
    bulk = gdla.solve(problem, **settings)
    stepwise = gdla.solve(problem, callback=_one_by_one, **settings)
    reference = gdla.solve(problem, backend="autograd", **settings)
    assert bulk.backend == "fused" and bulk.losses == stepwise.losses and torch.equal(bulk.solution, stepwise.solution)
    tol = {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    # the first 100 steps: the seed's Frobenius loss is not smooth at its minimum, where rounding differences grow
    torch.testing.assert_close(torch.tensor(bulk.losses[:100]), torch.tensor(reference.losses[:100]), **tol)


def test_a_declared_gram_factor_gives_the_curvature_without_a_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = InverseProblem.well_conditioned(64, seed=2)
    exact = 2 * float(torch.linalg.matrix_norm(problem.A, ord=2)) ** 2 / 64**2  # Hessian: (2/k²) AᵀA per column
    calls = []
    original = InverseProblem.loss_and_grad

    def counted(self: InverseProblem, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InverseProblem, "loss_and_grad", counted)
    scales = estimate_scales(problem, distance=False)
    assert calls == [] and scales.distance is None
    assert exact * (1 - 1e-3) <= scales.lipschitz <= exact * (1 + 1e-12)  # 20 Lanczos steps, from below
    with_distance = estimate_scales(problem)
    assert calls == [1] and with_distance.lipschitz == scales.lipschitz and with_distance.distance > 0
    # a form whose blocks' Gram only lies inside FᵀF (gram_exact=False) keeps the gradient probe
    assert gdla.get_problem("sparse").example(8).least_squares().gram_exact is False
