"""The ``momentum`` optimizer: seed notebook 000's update rule, bit for bit, and its safe defaults."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gdla
from gdla.testing import relative_error
from gdla_plugins.optimizers.momentum import SEED_LR, SEED_MOMENTUM, Momentum, SeedMomentum
from gdla_plugins.optimizers.torch_optim import estimate_scales
from gdla_plugins.problems.inverse import InverseProblem

SEED = 314
STEPS = 1000


def seed_matrices() -> tuple[torch.Tensor, torch.Tensor]:
    """The notebook's matrix and start: both are the first ``rand(4, 4)`` after seeding 314."""
    torch.manual_seed(SEED)
    matrix = torch.rand(size=(4, 4))
    torch.manual_seed(SEED)
    start = torch.rand(size=(4, 4))
    return matrix, start


def notebook_loop(matrix: torch.Tensor, start: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], list[float]]:
    """Seed 000's loop re-written: the gradient buffer is scaled by momentum and kept for the next backward()."""
    guess = start.clone().requires_grad_(True)
    snapshots, losses = [], []
    for _ in range(steps):
        target = torch.eye(n=len(matrix))
        loss = ((guess @ matrix - target) ** 2).mean()
        losses.append(float(loss.detach()))
        loss.backward()
        with torch.no_grad():
            guess -= SEED_LR * guess.grad
            guess.grad *= SEED_MOMENTUM
        snapshots.append(guess.detach().clone())
    return snapshots, losses


class SeedScenario(InverseProblem):
    """Seed 000's problem: ``X`` with ``X A = I`` (side ``left``), started where the notebook started."""

    def __init__(self, A: torch.Tensor, start: torch.Tensor) -> None:  # shape: (4, 4) each
        super().__init__(A, side="left")
        self.start = start

    def init_params(self, generator: torch.Generator) -> gdla.Params:
        return {"M": self.start.clone()}

    def loss(self, params: gdla.Params) -> torch.Tensor:
        # the notebook's expression, so the gradients agree to the bit, not only to rounding
        return ((params["M"] @ self.A - torch.eye(n=len(self.A))) ** 2).mean()


def test_reproduces_seed_notebook_bit_for_bit() -> None:
    matrix, start = seed_matrices()
    expected, expected_losses = notebook_loop(matrix, start, STEPS)

    seen: list[torch.Tensor] = []
    result = gdla.solve(
        SeedScenario(matrix, start),
        optimizer="momentum",
        lr=SEED_LR,
        momentum=SEED_MOMENTUM,
        max_steps=STEPS,
        tol=0,
        backend="autograd",
        callback=lambda step, loss, params: seen.append(params["M"].clone()),
    )

    assert result.steps == STEPS and result.stop_reason == "max_steps"
    assert result.params["M"].dtype == torch.float32
    for step, (ours, theirs) in enumerate(zip(seen, expected, strict=True), start=1):
        assert torch.equal(ours, theirs), f"step {step}: max difference {(ours - theirs).abs().max():.3e}"
    assert result.losses[:-1] == expected_losses  # the last entry: the loss at the answer
    # and the notebook's run does invert its matrix
    assert relative_error(result.solution, torch.linalg.inv(matrix.double())) < 1e-4


def test_same_recursion_as_torch_sgd_with_undamped_momentum() -> None:
    generator = torch.Generator().manual_seed(1)
    B = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    H = B @ B.T / 6 + torch.eye(6, dtype=torch.float64)  # shape: (6, 6), positive definite
    ours = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    theirs = ours.clone()
    seed_opt = SeedMomentum([ours], lr=0.1, momentum=0.7)
    torch_opt = torch.optim.SGD([theirs], lr=0.1, momentum=0.7, dampening=0.0)
    for _ in range(40):
        for tensor, opt in ((ours, seed_opt), (theirs, torch_opt)):
            tensor.grad = H @ tensor
            opt.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(seed_opt.state[ours]["velocity"], torch_opt.state[theirs]["momentum_buffer"])


def test_zero_momentum_is_plain_gradient_descent_and_closure_loss_is_returned() -> None:
    x = torch.tensor([3.0, -2.0], dtype=torch.float64)
    opt = SeedMomentum([x], lr=0.25, momentum=0.0)
    expected = x.clone()
    for _ in range(3):
        before = x.clone()

        def closure(point: torch.Tensor = x) -> torch.Tensor:
            point.grad = 2 * point  # gradient of ‖x‖²
            return (point**2).sum()

        loss = opt.step(closure)
        assert float(loss) == float((before**2).sum())
        expected = expected - 0.25 * (2 * expected)
        assert torch.equal(x, expected)


def test_default_lr_is_half_the_inverse_curvature_and_converges() -> None:
    problem = InverseProblem.well_conditioned(16, seed=3)
    sigma_max = float(torch.linalg.matrix_norm(problem.A, ord=2))
    lipschitz = 2 * sigma_max**2 / 16**2  # Hessian of mean((A M - I)^2): (2 / k^2) AᵀA ⊗ I
    # power iteration approaches the top of the spectrum from below; here it gets within 0.2%
    estimate = estimate_scales(problem).lipschitz
    assert 0.995 * lipschitz <= estimate <= lipschitz * (1 + 1e-9)
    assert Momentum.default_lr_for(problem) == pytest.approx(0.5 / estimate, rel=1e-12)

    result = gdla.solve(problem, optimizer="momentum", backend="autograd")
    assert result.stop_reason == "converged"
    assert relative_error(result.solution, torch.linalg.inv(problem.A)) <= 1e-6
    assert result.settings["optimizer.momentum"] == SEED_MOMENTUM


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        ({"momentum": 1.0}, ["momentum", "[0, 1)", "1.0"]),
        ({"momentum": -0.1}, ["momentum", "[0, 1)", "-0.1"]),
        ({"momentum": "0.9"}, ["momentum", "expected a number", "'0.9'"]),
        ({"momentum": float("nan")}, ["momentum", "finite", "nan"]),
        ({"lr": 0.0}, ["lr", "> 0", "0.0"]),
        ({"lr": -0.9}, ["lr", "> 0", "-0.9"]),
        ({"nesterov": True}, ["nesterov", "'momentum' has no option", "its options", "momentum"]),
        ({"momentun": 0.5}, ["momentun", "did you mean 'momentum'"]),
    ],
)
def test_invalid_options_are_refused_with_their_name(options: dict, fragments: list[str]) -> None:
    problem = InverseProblem.well_conditioned(4)
    with pytest.raises(gdla.InputError) as info:
        gdla.solve(problem, optimizer="momentum", backend="autograd", max_steps=1, **options)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_direct_construction_validates_too() -> None:
    x = torch.zeros(2)
    with pytest.raises(gdla.InputError, match=r"lr: expected a number > 0, received -1"):
        SeedMomentum([x], lr=-1)
    with pytest.raises(gdla.InputError, match=r"momentum: expected a number in \[0, 1\), received 1"):
        SeedMomentum([x], lr=0.1, momentum=1)


def test_registered_with_summary_and_description() -> None:
    assert gdla.get_optimizer("momentum") is Momentum
    assert Momentum.summary and "\n" not in Momentum.summary
    problem = InverseProblem.well_conditioned(4)
    opt = Momentum(problem, problem.init_params(torch.Generator().manual_seed(0)), lr=0.5, momentum=0.5)
    assert opt.describe() == {"name": "momentum", "lr": 0.5, "momentum": 0.5}


@pytest.mark.skipif(not gdla.extension_status()[0], reason="needs the compiled extension gdla._C")
def test_fused_backend_takes_the_masked_update_kernel_on_sparse(monkeypatch: pytest.MonkeyPatch) -> None:
    """On ``sparse`` the fused momentum step is ``gdla.ops.masked_update_``, with the same iterates."""
    from gdla import ops

    calls: list[int] = []
    real = ops.masked_update_

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    problem = gdla.get_problem("sparse").example(6, dtype=torch.float64)
    options = {"optimizer": "momentum", "lr": 0.05, "momentum": 0.9, "max_steps": 200, "tol": 0}
    reference = gdla.solve(problem, backend="autograd", **options)
    monkeypatch.setattr(ops, "masked_update_", spy)
    fused = gdla.solve(problem, backend="fused", **options)
    assert fused.backend == "fused" and len(calls) == 200
    torch.testing.assert_close(torch.tensor(fused.losses), torch.tensor(reference.losses), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(fused.params["U"], reference.params["U"], rtol=1e-10, atol=1e-14)
    assert torch.all(fused.params["U"][problem.omega == 0] == 0)  # nothing moves outside the mask


# -- the whole-run kernel (backend="fused") -------------------------------------------------------
needs_kernel = pytest.mark.skipif(not gdla.extension_status()[0], reason="the compiled extension gdla._C is not built")
SEED_RUN = {"optimizer": "momentum", "lr": SEED_LR, "momentum": SEED_MOMENTUM, "max_steps": 3000, "tol": 0}


def one_by_one(step: int, loss: float, params: gdla.Params) -> None:
    """A callback: the loop must then go step by step."""


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", ["left", "right", "both"])
def test_whole_run_in_one_call_equals_the_step_by_step_path(dtype: torch.dtype, side: str) -> None:
    problem = InverseProblem.example(side=side, dtype=dtype)
    bulk = gdla.solve(problem, **SEED_RUN)
    stepwise = gdla.solve(problem, callback=one_by_one, **SEED_RUN)
    assert bulk.backend == stepwise.backend == "fused"
    assert (bulk.steps, bulk.stop_reason) == (stepwise.steps, stepwise.stop_reason) == (3000, "max_steps")
    assert bulk.losses == stepwise.losses  # the same bits
    assert torch.equal(bulk.solution, stepwise.solution)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_run_matches_autograd_to_rounding(dtype: torch.dtype) -> None:
    problem = InverseProblem.example(side="left", dtype=dtype)
    fused = gdla.solve(problem, backend="fused", **SEED_RUN)
    reference = gdla.solve(problem, backend="autograd", **SEED_RUN)
    tol = {"rtol": 1e-3, "atol": 1e-9} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-24}
    torch.testing.assert_close(torch.tensor(fused.losses[:200]), torch.tensor(reference.losses[:200]), **tol)
    assert relative_error(fused.solution, problem.reference()) < (1e-5 if dtype == torch.float32 else 1e-12)


@needs_kernel
def test_divergence_in_a_bulk_run_stops_where_the_loop_would() -> None:
    problem = InverseProblem.example(side="left")
    settings = {**SEED_RUN, "lr": 40.0}
    bulk = gdla.solve(problem, **settings)
    stepwise = gdla.solve(problem, callback=one_by_one, **settings)
    assert bulk.stop_reason == stepwise.stop_reason == "diverged"
    assert bulk.steps == stepwise.steps < 3000 and bulk.losses == stepwise.losses


@needs_kernel
def test_a_schedule_or_a_large_matrix_takes_the_step_path_with_the_same_answer() -> None:
    problem = InverseProblem.well_conditioned(12)
    fused = gdla.solve(problem, optimizer="momentum", lr=0.2, max_steps=200, tol=0, backend="fused")
    reference = gdla.solve(problem, optimizer="momentum", lr=0.2, max_steps=200, tol=0, backend="autograd")
    torch.testing.assert_close(fused.solution, reference.solution, rtol=1e-10, atol=1e-12)
    scheduled = gdla.solve(
        InverseProblem.example(), optimizer="momentum", lr=0.5, schedule="cosine", max_steps=50, tol=0
    )
    assert scheduled.steps == 50 and scheduled.settings["optimizer.schedule"] == "cosine"
