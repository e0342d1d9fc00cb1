"""The ops' shared argument checks (gdla/_op_checks.py): tensors written in place, aliasing and strides."""

from __future__ import annotations

import pytest
import torch

from gdla.errors import InputError

ops = pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")


def test_run_wrappers_refuse_aliased_and_strided_arguments() -> None:
    """A tensor written in place that shares memory with another argument computes garbage: refused, as torch
    refuses an overlapping ``out=``; a strided one is an InputError saying what to pass, not a C++ error."""
    A = (0.9 * torch.eye(4)).expand(3, 4, 4).contiguous()
    X = torch.zeros(3, 4, 4)
    with pytest.raises(InputError, match=r"inverse_momentum_run: X is written in place and must not share memory"):
        ops.inverse_momentum_run(A, X, X, "right", 0.1, 0.9, 5, started=False)
    with pytest.raises(InputError, match=r"must not share memory with A"):
        ops.inverse_momentum_run(A, A, torch.zeros(3, 4, 4), "right", 0.1, 0.9, 5, started=False)
    with pytest.raises(InputError, match=r"inverse_momentum_run: X must be contiguous.*X.contiguous\(\) and copy"):
        ops.inverse_momentum_run(A, torch.zeros(3, 4, 4).transpose(-1, -2), torch.zeros(3, 4, 4), "right", 0.1, 0.9,
                                 5, started=False)
    halves = torch.zeros(2, 3, 4, 4)  # two separate views of one storage are fine
    ops.inverse_momentum_run(A, halves[0], halves[1], "right", 0.1, 0.9, 5, started=False)
    U = torch.zeros(4, 4)
    with pytest.raises(InputError, match=r"masked_update_: U is written in place and must not share memory with buf"):
        ops.masked_update_(U, torch.ones(4, 4), torch.ones(4, 4), 0.1, 0.9, buf=U)
