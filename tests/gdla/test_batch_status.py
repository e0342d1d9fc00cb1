"""Per-member verdicts for batched problems, and stop messages that say what converged."""

from __future__ import annotations

import torch

import gdla
from gdla.result import BATCH_STATUS


def batch_with_one_hard_member() -> torch.Tensor:
    A = torch.rand(5, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + torch.eye(4)
    A[2] = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1e-9], dtype=torch.float64))  # cond 1e9: slow for momentum
    return A


def test_one_slow_member_does_not_hide_the_others() -> None:
    A = batch_with_one_hard_member()
    problem = gdla.get_problem("inverse")(A)
    result = gdla.solve(problem, optimizer="newton-schulz", tol=1e-10, max_steps=200)
    assert result.converged and result.batch_status.tolist() == [0, 0, 0, 0, 0]
    slow = gdla.solve(problem, optimizer="momentum", tol=1e-3, max_steps=300)
    assert slow.stop_reason in ("max_steps", "stalled")
    residuals = slow.member_residuals
    assert residuals.shape == (5,)
    for member in range(5):  # each verdict agrees with that member's own residual
        single = problem.A[member]
        value = torch.linalg.matrix_norm(single @ slow.solution[member] - torch.eye(4, dtype=torch.float64)) / 2
        assert float(residuals[member]) == float(value) or abs(float(residuals[member]) - float(value)) < 1e-14
        assert int(slow.batch_status[member]) == (0 if float(value) <= 1e-3 else 1)
    assert int(slow.batch_status[2]) == 1 and int((slow.batch_status == 0).sum()) == 4
    assert "4 of 5 batch members converged" in slow.message
    assert slow.to_dict()["batch_status"] == slow.batch_status.tolist()
    assert set(BATCH_STATUS) == {0, 1, 2}


def test_unbatched_problems_have_no_batch_status() -> None:
    result = gdla.solve(gdla.get_problem("inverse").example())
    assert result.batch_status is None and result.member_residuals is None


def test_least_squares_convergence_says_it_is_the_normal_equations() -> None:
    A = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = gdla.solve(gdla.get_problem("inverse")(A, side="left", pseudo=True))
    assert result.converged
    assert "of the normal equations" in result.message
    exact = gdla.solve(gdla.get_problem("inverse")(A, side="right"))
    assert exact.converged and "normal equations" not in exact.message
