"""gdla: linear algebra by gradient descent in PyTorch, extended through plugins.

>>> import torch, gdla
>>> A = torch.eye(4, dtype=torch.float64) + 0.1 * torch.rand(4, 4, dtype=torch.float64)
>>> result = gdla.solve(gdla.get_problem("inverse")(A))
>>> result.stop_reason
'converged'
"""

from __future__ import annotations

from gdla import registry  # the module: registry.entries(), registry.register_plugin(), ...
from gdla.backend import extension_status
from gdla.capabilities import InverseMSE, LinearLeastSquares, MatrixInverse, SumOfSquares
from gdla.demo import DemoPanel, DemoRun
from gdla.errors import (
    BackendError,
    BackendWarning,
    ConvergenceWarning,
    DuplicateNameError,
    GdlaError,
    GdlaWarning,
    InputError,
    MatrixFileError,
    PluginError,
    PluginWarning,
    ShapeError,
    SingularMatrixError,
    UnknownNameError,
)
from gdla.hookspecs import hookimpl
from gdla.loop import solve
from gdla.optimizer import GradientOptimizer, Optimizer, Suitability
from gdla.problem import Params, Problem
from gdla.registry import get_optimizer, get_problem, optimizers, problems
from gdla.result import Result

try:
    from importlib.metadata import version as _version

    __version__ = _version("gdla")
except Exception:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "BackendError",
    "BackendWarning",
    "ConvergenceWarning",
    "DemoPanel",
    "DemoRun",
    "DuplicateNameError",
    "GdlaError",
    "GdlaWarning",
    "GradientOptimizer",
    "InputError",
    "InverseMSE",
    "LinearLeastSquares",
    "MatrixInverse",
    "MatrixFileError",
    "Optimizer",
    "Params",
    "PluginError",
    "PluginWarning",
    "Problem",
    "Result",
    "ShapeError",
    "SingularMatrixError",
    "SumOfSquares",
    "Suitability",
    "UnknownNameError",
    "__version__",
    "extension_status",
    "get_optimizer",
    "get_problem",
    "hookimpl",
    "optimizers",
    "problems",
    "registry",
    "solve",
]
