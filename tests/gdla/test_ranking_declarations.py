"""``auto`` reads every declaration a problem makes (``quadratic = True`` included), and whichever method it
picks, an option that method does not take is bad usage (exit 2), as with the method named."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import gdla
from gdla.plan import Ranking


class Quadratic(gdla.Problem):
    """``½ xᵀAx − bᵀx`` with ``A`` symmetric positive definite: declared ``quadratic``, no ``least_squares()``."""

    name = "declared-quadratic"
    summary = "a quadratic loss in one tensor, declared quadratic only"
    quadratic = True

    def __init__(self, A: torch.Tensor, b: torch.Tensor) -> None:
        self.A, self.b = A, b

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> Quadratic:
        n = size or 16
        generator = torch.Generator().manual_seed(seed)
        Q = torch.randn(n, n, generator=generator, dtype=dtype)
        return cls(Q @ Q.mT + 0.1 * n * torch.eye(n, dtype=dtype), torch.randn(n, generator=generator, dtype=dtype))

    def init_params(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"x": torch.zeros_like(self.b)}

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        x = params["x"]
        return 0.5 * x @ (self.A @ x) - self.b @ x

    def solution(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return params["x"]

    def residual(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.linalg.norm(self.A @ params["x"] - self.b) / torch.linalg.norm(self.b)

    def reference(self) -> torch.Tensor:
        return torch.linalg.solve(self.A, self.b)

    def error(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        reference = self.reference()
        return torch.linalg.norm(params["x"] - reference) / torch.linalg.norm(reference)


class SplitQuadratic(Quadratic):
    """The same loss over two parameter tensors (the halves of ``x``): cg, which runs on one tensor, is not ranked."""

    name = "split-quadratic"

    def init_params(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        half = self.b.shape[0] // 2
        return {"x1": torch.zeros_like(self.b[:half]), "x2": torch.zeros_like(self.b[half:])}

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().loss({"x": self.solution(params)})

    def solution(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([params["x1"], params["x2"]])

    def residual(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().residual({"x": self.solution(params)})

    def error(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().error({"x": self.solution(params)})


class Undeclared(Quadratic):
    """The same loss, declaring nothing: a nonlinear loss as far as ``auto`` knows."""

    name = "undeclared-quadratic"
    quadratic = None


def test_a_declared_quadratic_is_ranked_for_cg_and_converges() -> None:
    problem = Quadratic.example()
    assert problem.least_squares() is None
    best = Ranking(problem).best()
    assert best.name == "cg" and best.fit is not None and "quadratic" in best.fit.reason
    result = gdla.solve(problem)
    assert result.settings["optimizer.method"] == "cg"
    assert result.converged and result.steps <= 16 + 4, result.summary()  # at most about one step per unknown
    expected = torch.linalg.solve(problem.A, problem.b)
    torch.testing.assert_close(result.solution, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("problem_class", [SplitQuadratic, Undeclared])
def test_cg_is_not_ranked_where_it_cannot_run(problem_class: type[Quadratic]) -> None:
    problem = problem_class.example()
    names = [candidate.name for candidate in Ranking(problem).suitable]
    assert "cg" not in names
    assert names[0] == "lbfgs"


# -- usage errors exit 2 whichever method auto picked ---------------------------------------------
@pytest.mark.parametrize(
    ("problem", "picked"),
    [
        ("inverse", "newton-schulz"),
        ("sparse", "cg"),
        ("svd", "riemannian-svd"),
        ("declared-quadratic", "cg"),
        ("undeclared-quadratic", "lbfgs"),
    ],
)
def test_an_unknown_option_exits_2_whatever_auto_picks(
    register_classes: Callable[..., str], cli: Any, error_of: Callable[[str], str], problem: str, picked: str
) -> None:
    register_classes(Quadratic, Undeclared, name="ranking-declarations")
    code, out, err = cli("solve", problem, "-o", "nonsense=1")
    assert code == 2 and out == ""
    line = error_of(err)
    assert f"optimizer 'auto' picked {picked!r}" in line
    assert f"nonsense: optimizer {picked!r} has no option 'nonsense'" in line
    code, _, named = cli("solve", problem, "--optimizer", picked, "-o", "nonsense=1")
    assert code == 2 and f"nonsense: optimizer {picked!r} has no option 'nonsense'" in error_of(named)
