"""The compiled kernels' size limits and dtypes, read once from the extension.

Their one home is ``csrc/small_limits.h``; the extension exports them as the op
``torch.ops.gdla.limits()`` and this module turns them into the constants every Python check and
fused-path gate imports (:mod:`gdla.ops_small`, the plugins). Where ``gdla._C`` cannot be loaded no
kernel runs at all, but messages still quote the sizes: the values below stand in, and a test
checks them against the extension's export.
"""

from __future__ import annotations

import importlib

import torch

__all__ = ["DTYPES", "FROM_EXTENSION", "RUN_MAX_COLUMNS", "RUN_MAX_HOPS", "RUN_MAX_N", "SMALL_MAX_N"]

#: What ``torch.ops.gdla.limits()`` returns for a build of csrc/small_limits.h; used without the extension.
WITHOUT_EXTENSION: tuple[dict[str, int], tuple[str, ...]] = (
    {"SMALL_MAX_N": 16, "RUN_MAX_N": 8, "RUN_MAX_COLUMNS": 32, "RUN_MAX_HOPS": 4},
    ("float32", "float64"),
)


def exported() -> tuple[dict[str, int], tuple[str, ...]] | None:
    """``(limits by name, dtype names)`` as the compiled extension exports them, or ``None`` without it."""
    try:
        importlib.import_module("gdla._C")  # its import registers the ops
        names, values, dtypes = torch.ops.gdla.limits()
    except (ImportError, OSError, AttributeError, RuntimeError):  # not built, broken, or built before the export
        return None
    return dict(zip(names, values, strict=True)), tuple(dtypes)


_limits, _dtypes = exported() or WITHOUT_EXTENSION

#: Whether the constants below were read from the extension.
FROM_EXTENSION: bool = _limits is not WITHOUT_EXTENSION[0]
#: The largest n the batched tiny-problem kernels take (a problem in local storage).
SMALL_MAX_N: int = _limits["SMALL_MAX_N"]
#: The largest n with a register-resident kernel (whole-run momentum, the fused inverse-MSE's small path).
RUN_MAX_N: int = _limits["RUN_MAX_N"]
#: masked_sgd_run: the most columns of X.
RUN_MAX_COLUMNS: int = _limits["RUN_MAX_COLUMNS"]
#: masked_sgd_run: the most hops.
RUN_MAX_HOPS: int = _limits["RUN_MAX_HOPS"]
#: The dtypes every kernel takes.
DTYPES: tuple[torch.dtype, ...] = tuple(getattr(torch, name) for name in _dtypes)
