"""gdla: linear algebra by gradient descent in PyTorch, extended through plugins.

>>> import torch, gdla
>>> A = torch.eye(4, dtype=torch.float64) + 0.1 * torch.rand(4, 4, dtype=torch.float64)
>>> result = gdla.solve(gdla.get_problem("inverse")(A))
>>> result.stop_reason
'converged'

The public names below load on first use (PEP 562), so ``import gdla`` and the ``gdla``
command start without importing torch until a name that needs it is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "BackendError": "gdla.errors",
    "BackendWarning": "gdla.errors",
    "ConvergenceWarning": "gdla.errors",
    "DemoPanel": "gdla.panels",
    "DemoRun": "gdla.panels",
    "DuplicateNameError": "gdla.errors",
    "GdlaError": "gdla.errors",
    "GdlaWarning": "gdla.errors",
    "GradientOptimizer": "gdla.optimizer",
    "InputError": "gdla.errors",
    "InverseMSE": "gdla.capabilities",
    "LinearLeastSquares": "gdla.capabilities",
    "MaskedOperatorLoss": "gdla.capabilities",
    "MatrixFileError": "gdla.errors",
    "MatrixInverse": "gdla.capabilities",
    "Optimizer": "gdla.optimizer",
    "Params": "gdla.problem",
    "PluginError": "gdla.errors",
    "PluginWarning": "gdla.errors",
    "Problem": "gdla.problem",
    "RankError": "gdla.errors",
    "ResourceError": "gdla.errors",
    "Result": "gdla.result",
    "ShapeError": "gdla.errors",
    "SingularValueDecomposition": "gdla.capabilities",
    "SingularMatrixError": "gdla.errors",
    "Stretch": "gdla.optimizer",
    "Suitability": "gdla.optimizer",
    "SumOfSquares": "gdla.capabilities",
    "SvdPenaltyLoss": "gdla.capabilities",
    "TestedRun": "gdla.optimizer",
    "UnknownNameError": "gdla.errors",
    "UsageError": "gdla.errors",
    "build_problem": "gdla.building",
    "extension_status": "gdla.backend",
    "get_optimizer": "gdla.registry",
    "get_problem": "gdla.registry",
    "hookimpl": "gdla.hookspecs",
    "optimizers": "gdla.registry",
    "problems": "gdla.registry",
    "relative_gap": "gdla.norms",
    "relative_norm": "gdla.norms",
    "scaled_norm": "gdla.norms",
    "solve": "gdla.loop",
}

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
    "MaskedOperatorLoss",
    "MatrixFileError",
    "MatrixInverse",
    "Optimizer",
    "Params",
    "PluginError",
    "PluginWarning",
    "Problem",
    "RankError",
    "ResourceError",
    "Result",
    "ShapeError",
    "SingularMatrixError",
    "SingularValueDecomposition",
    "Stretch",
    "Suitability",
    "SumOfSquares",
    "SvdPenaltyLoss",
    "TestedRun",
    "UnknownNameError",
    "UsageError",
    "__version__",
    "build_problem",
    "extension_status",
    "get_optimizer",
    "get_problem",
    "hookimpl",
    "optimizers",
    "problems",
    "registry",
    "relative_gap",
    "relative_norm",
    "scaled_norm",
    "solve",
]


def __getattr__(name: str) -> Any:
    if name == "registry":  # the module: registry.entries(), registry.register_plugin(), ...
        return importlib.import_module("gdla.registry")
    if name == "__version__":
        try:
            from importlib.metadata import version

            value = version("gdla")
        except Exception:  # running from a source tree that was never installed
            value = "0.0.0+unknown"
        globals()[name] = value
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gdla' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # the names for type checkers and IDEs
    from gdla import registry
    from gdla.backend import extension_status
    from gdla.building import build_problem
    from gdla.capabilities import (
        InverseMSE,
        LinearLeastSquares,
        MaskedOperatorLoss,
        MatrixInverse,
        SingularValueDecomposition,
        SumOfSquares,
        SvdPenaltyLoss,
    )
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
        RankError,
        ResourceError,
        ShapeError,
        SingularMatrixError,
        UnknownNameError,
        UsageError,
    )
    from gdla.hookspecs import hookimpl
    from gdla.loop import solve
    from gdla.norms import relative_gap, relative_norm, scaled_norm
    from gdla.optimizer import GradientOptimizer, Optimizer, Stretch, Suitability, TestedRun
    from gdla.panels import DemoPanel, DemoRun
    from gdla.problem import Params, Problem
    from gdla.registry import get_optimizer, get_problem, optimizers, problems
    from gdla.result import Result
