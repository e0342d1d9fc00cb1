"""Argument checks: each accepts what it should and names argument, expectation and value otherwise."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

import gdla
from gdla.errors import InputError, ShapeError
from gdla.validation import (
    as_device,
    as_dtype,
    check_callable,
    check_choice,
    check_finite,
    check_int,
    check_matrix,
    check_nonnegative,
    check_positive,
    check_probability,
)


# -- check_matrix ---------------------------------------------------------------------------------
def test_check_matrix_accepts_tensors_arrays_and_lists() -> None:
    tensor = torch.eye(2, dtype=torch.float64)
    assert check_matrix(tensor, "A") is tensor, "a valid tensor is returned as is, not copied"
    from_numpy = check_matrix(np.array([[1.0, 2.0], [3.0, 4.0]]), "A")
    assert from_numpy.dtype == torch.float64
    assert torch.equal(from_numpy, torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))
    from_list = check_matrix([[1.0, 2.0, 3.0]], "A")
    assert from_list.shape == (1, 3) and from_list.dtype == torch.float32


def test_check_matrix_converts_dtype_and_keeps_batches() -> None:
    batch = torch.rand(3, 2, 2, dtype=torch.float32)
    out = check_matrix(batch, "A", dtype=torch.float64)
    assert out.dtype == torch.float64 and out.shape == (3, 2, 2)
    assert torch.equal(out, batch.double())


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "pattern"),
    [
        (
            torch.ones(2, 2, dtype=torch.int64),
            {},
            InputError,
            r"A: expected a floating-point matrix .* received torch.int64",
        ),
        (np.ones((2, 2), dtype=np.int32), {}, InputError, r"received torch.int32 data; store it as floating point"),
        (torch.ones(2, 2, dtype=torch.bool), {}, InputError, r"received torch.bool"),
        (torch.ones(2, 2, dtype=torch.complex64), {}, InputError, r"received torch.complex64"),
        (
            torch.ones(3, dtype=torch.float64),
            {},
            ShapeError,
            r"A: expected a matrix with shape \(..., m, n\), received shape \(3,\)",
        ),
        (torch.tensor(1.0), {}, ShapeError, r"received shape \(\)"),
        (torch.ones(2, 2, 2), {"batch": False}, ShapeError, r"A: expected a 2-D matrix, received shape \(2, 2, 2\)"),
        (torch.ones(0, 3), {}, ShapeError, r"A: expected a non-empty matrix, received shape \(0, 3\)"),
        (
            torch.ones(2, 3),
            {"square": True},
            ShapeError,
            r"A: expected a square matrix, received shape \(2, 3\); .*pseudo-inverse",
        ),
        ("abc", {}, InputError, r"A: expected a matrix \(tensor, NumPy array or nested list\), received 'abc'"),
        (
            [[1.0, 2.0], [3.0]],
            {},
            InputError,
            r"A: expected a matrix \(tensor, NumPy array or nested list\), received \[\[1.0, 2.0\], \[3.0\]\]",
        ),
        (object(), {}, InputError, r"A: expected a matrix \(tensor, NumPy array or nested list\), received <object"),
    ],
)
def test_check_matrix_rejects(value: Any, kwargs: dict[str, Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        check_matrix(value, "A", **kwargs)


def test_check_matrix_counts_nonfinite_entries() -> None:
    one = torch.eye(3)
    one[1, 2] = math.nan
    with pytest.raises(InputError, match=r"A: expected finite entries, received 1 NaN/Inf entry in shape \(3, 3\)"):
        check_matrix(one, "A")
    two = torch.eye(3)
    two[0, 0], two[2, 1] = math.inf, -math.inf
    with pytest.raises(InputError, match="received 2 NaN/Inf entries"):
        check_matrix(two, "A")
    assert check_matrix(two, "A", allow_nonfinite=True) is two


def test_errors_are_value_errors() -> None:
    # callers that catch ValueError (the standard for bad arguments) catch gdla's input errors too
    assert issubclass(ShapeError, InputError) and issubclass(InputError, ValueError)
    with pytest.raises(ValueError):
        check_matrix(torch.ones(2, 3), "A", square=True)


def test_check_finite_ignores_integer_tensors() -> None:
    ints = torch.ones(2, 2, dtype=torch.int64)
    assert check_finite(ints, "A") is ints


# -- scalars --------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [1, 0.5, 1e-12, np.float32(0.25), np.int64(3)])
def test_check_positive_accepts(value: Any) -> None:
    assert check_positive(value, "lr") == float(value)
    assert isinstance(check_positive(value, "lr"), float)


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (0, r"lr: expected a number > 0, received 0"),
        (-1.5, r"lr: expected a number > 0, received -1.5"),
        (math.inf, r"lr: expected a finite number, received inf"),
        (math.nan, r"lr: expected a finite number, received nan"),
        ("0.1", r"lr: expected a number, received '0.1'"),
        (None, r"lr: expected a number, received None"),
        (True, r"lr: expected a number, received True"),
        (torch.tensor(0.1), r"lr: expected a number, received a torch.float32 tensor of shape \(\)"),
    ],
)
def test_check_positive_rejects(value: Any, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        check_positive(value, "lr")


def test_check_nonnegative() -> None:
    assert check_nonnegative(0, "tol") == 0.0
    assert check_nonnegative(2.5, "tol") == 2.5
    with pytest.raises(InputError, match=r"tol: expected a number >= 0, received -1e-09"):
        check_nonnegative(-1e-9, "tol")


def test_check_probability() -> None:
    assert check_probability(0.0, "momentum") == 0.0
    assert check_probability(0.9, "momentum") == 0.9
    with pytest.raises(InputError, match=r"momentum: expected a number in \[0, 1\), received 1"):
        check_probability(1, "momentum")
    assert check_probability(1, "momentum", closed=True) == 1.0
    with pytest.raises(InputError, match=r"momentum: expected a number in \[0, 1\], received 1.01"):
        check_probability(1.01, "momentum", closed=True)
    with pytest.raises(InputError, match=r"expected a number in \[0, 1\), received -0.1"):
        check_probability(-0.1, "momentum")


def test_check_int() -> None:
    assert check_int(5, "steps") == 5
    assert check_int(np.int32(7), "steps", minimum=7) == 7
    assert type(check_int(np.int32(7), "steps")) is int
    with pytest.raises(InputError, match=r"steps: expected an integer >= 1, received 0"):
        check_int(0, "steps", minimum=1)
    with pytest.raises(InputError, match=r"steps: expected an integer, received 3.0"):
        check_int(3.0, "steps")
    with pytest.raises(InputError, match=r"steps: expected an integer, received False"):
        check_int(False, "steps")
    long = "x" * 100
    with pytest.raises(InputError, match=r"received 'xxx+\.\.\.$"):
        check_int(long, "steps")


def test_check_choice_lists_the_choices() -> None:
    assert check_choice("b", "mode", ["a", "b"]) == "b"
    with pytest.raises(InputError, match=r"mode: expected one of 'a', 'b', received 'c'"):
        check_choice("c", "mode", iter(["a", "b"]))


def test_check_callable() -> None:
    assert check_callable(None, "callback") is None
    assert check_callable(print, "callback") is print
    with pytest.raises(InputError, match="callback: expected a callable or None, received 'print'"):
        check_callable("print", "callback")


# -- dtype and device -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("float32", torch.float32),
        ("float64", torch.float64),
        ("torch.float64", torch.float64),
        ("double", torch.float64),
        ("float", torch.float32),
        (torch.float32, torch.float32),
    ],
)
def test_as_dtype(value: Any, expected: torch.dtype | None) -> None:
    assert as_dtype(value) is expected


@pytest.mark.parametrize("value", ["float16", "int64", torch.int32, torch.float16, 32])
def test_as_dtype_rejects(value: Any) -> None:
    with pytest.raises(InputError, match=r"^dtype: expected"):
        as_dtype(value)


def test_as_device() -> None:
    assert as_device(None) is None
    assert as_device("cpu") == torch.device("cpu")
    assert as_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(InputError, match="device: expected a device such as 'cpu' or 'cuda:0', received 'gpu0'"):
        as_device("gpu0")
    with pytest.raises(InputError, match="received 3.5"):
        as_device(3.5)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            as_device("cuda:0")


@pytest.mark.parametrize("device", ["meta", "mps", "xpu"])
def test_devices_gdla_does_not_solve_on_are_input_errors(device: str) -> None:
    with pytest.raises(InputError, match=r"device: expected 'cpu' or a CUDA device"):
        gdla.solve("inverse", device=device)


def test_a_meta_matrix_is_an_input_error_naming_the_argument() -> None:
    with pytest.raises(InputError, match=r"A: expected a matrix on the CPU or a CUDA device, received one on 'meta'"):
        gdla.get_problem("inverse")(torch.rand(4, 4, device="meta"))
