"""Tests for gdla.memory: the memory check before allocating and allocation failures as ResourceError."""

from __future__ import annotations

import pytest
import torch

from gdla import memory
from gdla.errors import ResourceError


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
