"""Tests for gdla.memory: the memory check before allocating and allocation failures as ResourceError."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch

import gdla
from gdla import memory
from gdla.errors import ResourceError
from gdla.testing import SmallLeastSquares


def test_available_bytes_is_positive_or_unknown() -> None:
    free = memory.available_bytes()
    assert free is None or free > 0


def test_check_fits_refuses_more_than_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 1_000_000)
    memory.check_fits(10, "a tiny problem")  # fits: no error
    memory.check_fits(None, "an unknown size")  # unknown estimate: no error
    with pytest.raises(ResourceError, match="inverse of size 9 needs about .* is available"):
        memory.check_fits(10**12, "inverse of size 9")


@pytest.mark.parametrize(
    "exc",
    [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes")],
)
def test_allocation_error_recognises_allocator_failures(exc: BaseException) -> None:
    error = memory.allocation_error(exc, "the solve")
    assert isinstance(error, ResourceError)
    assert "the solve" in str(error)


def test_allocation_error_ignores_other_errors() -> None:
    assert memory.allocation_error(RuntimeError("shape mismatch"), "the solve") is None
    assert memory.allocation_error(ValueError("x"), "the solve") is None


def test_a_real_oversized_allocation_becomes_a_resource_error() -> None:
    try:
        torch.empty(2**45, dtype=torch.float64)  # 256 TiB: more than any address space here
    except BaseException as exc:  # noqa: BLE001 - whatever the allocator raises must be recognised
        assert isinstance(memory.allocation_error(exc, "a huge tensor"), ResourceError)
    else:  # pragma: no cover - no machine here maps 256 TiB
        pytest.fail("allocating 256 TiB succeeded")


class DenseSolve(gdla.Optimizer):
    """Test double: declares a dense ``unknowns²`` matrix unless ``path="matrix-free"``; counts constructions."""

    name = "dense-solve-double"
    summary = "test double: forms a dense matrix"
    default_lr = None
    built = 0

    @classmethod
    def estimated_bytes(cls, problem: gdla.Problem, params: gdla.Params, options: Any) -> int | None:
        if options.get("path") == "matrix-free":
            return None
        unknowns = sum(value.numel() for value in params.values())
        return unknowns * unknowns * 8

    def __init__(self, problem: gdla.Problem, params: gdla.Params, **options: Any) -> None:
        type(self).built += 1
        options.pop("path", None)
        super().__init__(problem, params, **options)

    def step(self) -> torch.Tensor:
        return self.problem.loss(self.params)


class StoredSparse(SmallLeastSquares):
    name = "stored-sparse-double"

    def sparse_storage(self) -> tuple[tuple[int, ...], int]:
        return (300_000, 300_000), 900_000


def test_a_method_whose_dense_matrices_do_not_fit_is_refused_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, register_classes: Any
) -> None:
    register_classes(DenseSolve, name="dense-solve-plugin")
    monkeypatch.setattr(DenseSolve, "built", 0)
    problem = SmallLeastSquares.example(10)  # 10 unknowns: an 800-byte dense matrix
    params = problem.init_params(torch.Generator())
    monkeypatch.setattr(memory, "available_bytes", lambda: 10**6)
    DenseSolve(problem, params)  # fits
    assert DenseSolve.built == 1
    monkeypatch.setattr(memory, "available_bytes", lambda: 500)
    with pytest.raises(ResourceError) as info:
        gdla.solve(problem, optimizer="dense-solve-double")
    assert DenseSolve.built == 1  # refused before __init__ ran
    # the advice is the best-ranked method by declared suitability that fits: what auto picks here
    picked = gdla.get_optimizer("auto").method_for(problem)
    assert str(info.value) == (
        "optimizer: 'dense-solve-double' would form dense matrices of about 800 bytes on problem "
        "'contract-least-squares' (10 unknowns), and 500 bytes is available; use "
        f"optimizer={picked!r}, the best-ranked method that fits (what optimizer='auto' picks by the declared "
        f"suitability: {gdla.get_optimizer(picked).suitability(problem).reason})"
    )
    # the matrix-free path declares nothing: it runs
    result = gdla.solve(problem, optimizer="dense-solve-double", path="matrix-free", max_steps=2, tol=0)
    assert DenseSolve.built == 2 and result.steps == 2


def test_the_refusal_quotes_a_sparse_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    base = SmallLeastSquares.example(10)
    problem = StoredSparse(base.A, base.b)
    monkeypatch.setattr(memory, "available_bytes", lambda: 500)
    params = problem.init_params(torch.Generator())
    with pytest.raises(ResourceError, match=r"\(a 300000 × 300000 operator stored sparse with 900,000 entries\)"):
        memory.check_method_fits(DenseSolve, problem, params, {})
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # unknown memory: nothing to check against
    memory.check_method_fits(DenseSolve, problem, params, {})


def test_available_memory_respects_the_address_space_limit() -> None:
    """Under ``ulimit -v`` the room left in the address space, not the machine's free memory, is what is available."""
    code = (
        "import resource, gdla.memory as m; "
        "limit = 6 * 2**30; resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY)); "
        "print(m.available_bytes(), m._machine_available(), limit)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    available, machine, limit = (int(value) for value in out)
    assert available <= limit and available <= machine
    assert available < limit  # the interpreter and torch already occupy part of it
