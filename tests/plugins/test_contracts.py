"""Every built-in optimizer under gdla.testing.OptimizerContract (the problems' contracts live beside
each problem's tests, in tests/plugins/problems/)."""

from __future__ import annotations

from typing import Any, ClassVar

import gdla
from gdla.testing import OptimizerContract


class TestCG(OptimizerContract):
    optimizer_name = "cg"
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 50}
    error_tol = 1e-10


class TestLineSearch(OptimizerContract):
    optimizer_name = "line-search"
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 2000}


class TestHeavyBall(OptimizerContract):
    optimizer_name = "heavy-ball"
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 2000}


class TestAuto(OptimizerContract):
    optimizer_name = "auto"
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 50}
    error_tol = 1e-10


class TestMomentum(OptimizerContract):
    optimizer_name = "momentum"
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 3000}


class TestSGD(OptimizerContract):
    optimizer_name = "sgd"
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 3000, "momentum": 0.9}


class TestAdam(OptimizerContract):
    optimizer_name = "adam"
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 3000}
    error_tol = 1e-4


class TestAdagrad(OptimizerContract):
    optimizer_name = "adagrad"
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 3000}
    error_tol = 1e-4


class TestRMSprop(OptimizerContract):
    optimizer_name = "rmsprop"
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 3000}
    error_tol = 1e-4


class TestLBFGS(OptimizerContract):
    optimizer_name = "lbfgs"
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 200}


class TestNewtonSchulz(OptimizerContract):
    optimizer_name = "newton-schulz"
    solve_options: ClassVar[dict[str, Any]] = {"max_steps": 100}
    error_tol = 1e-10

    def make_problem(self) -> gdla.Problem:
        return gdla.get_problem("inverse").well_conditioned(5, batch=(3,))
