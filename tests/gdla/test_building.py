"""Tests for gdla.building: one builder of a problem from a name, a size, a matrix or a file, with options."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import gdla
from gdla import memory
from gdla.building import build_problem
from gdla.errors import InputError, MatrixFileError, ResourceError, UnknownNameError, UsageError
from gdla.testing import SmallLeastSquares

BUILTIN = ("inverse", "svd", "sparse", "toeplitz", "toeplitz-net")


def tensors(problem: gdla.Problem) -> dict[str, torch.Tensor]:
    """The problem's tensor attributes, sparse ones as (indices, values) of their coalesced form."""
    found: dict[str, Any] = {}
    for key, value in vars(problem).items():
        if isinstance(value, torch.Tensor):
            found[key] = (value.coalesce().indices(), value.coalesce().values()) if value.is_sparse else (value,)
    return found


def assert_same_bits(built: gdla.Problem, expected: gdla.Problem) -> None:
    assert type(built) is type(expected)
    mine, theirs = tensors(built), tensors(expected)
    assert mine.keys() == theirs.keys() and mine, "the problems hold different tensors"
    for key in mine:
        for a, b in zip(mine[key], theirs[key], strict=True):
            assert a.dtype == b.dtype and a.device == b.device and torch.equal(a, b), key


@pytest.mark.parametrize("name", BUILTIN)
def test_a_name_alone_is_exactly_the_example(name: str) -> None:
    assert_same_bits(build_problem(name), gdla.get_problem(name).example())


def test_size_dtype_seed_and_options_reach_the_example() -> None:
    built = build_problem("inverse", size=5, dtype="float32", seed=3, options={"kind": "diagonal"})
    expected = gdla.get_problem("inverse").example(5, seed=3, dtype=torch.float32, kind="diagonal")
    assert_same_bits(built, expected)
    assert built.dtype == torch.float32


def test_a_class_is_built_like_its_name() -> None:
    assert_same_bits(build_problem(gdla.get_problem("toeplitz"), size=6), gdla.get_problem("toeplitz").example(6))
    assert_same_bits(build_problem(SmallLeastSquares, seed=2), SmallLeastSquares.example(seed=2))


def test_a_matrix_tensor_goes_to_from_matrix_and_is_converted() -> None:
    A = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    inverse = gdla.get_problem("inverse")
    assert_same_bits(build_problem("inverse", matrix=A, options={"pseudo": True}), inverse.from_matrix(A, pseudo=True))
    single = build_problem("inverse", matrix=A, options={"pseudo": True}, dtype=torch.float32, device="cpu")
    assert_same_bits(single, inverse.from_matrix(A, pseudo=True).to(dtype=torch.float32))


def test_a_matrix_file_is_read_and_integers_become_floats(tmp_path: Path) -> None:
    np.save(tmp_path / "A.npy", np.array([[4.0, 1.0], [1.0, 3.0]]))
    np.save(tmp_path / "int.npy", np.array([[4, 1], [1, 3]], dtype=np.int64))
    expected = gdla.get_problem("inverse").from_matrix(torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64))
    assert_same_bits(build_problem("inverse", matrix=tmp_path / "A.npy"), expected)
    assert_same_bits(build_problem("inverse", matrix=str(tmp_path / "int.npy")), expected)
    single = build_problem("inverse", matrix=tmp_path / "int.npy", dtype="float32")
    assert_same_bits(single, gdla.get_problem("inverse").from_matrix(torch.tensor([[4.0, 1.0], [1.0, 3.0]])))


def test_a_coordinate_file_stays_sparse_where_the_problem_takes_sparse(tmp_path: Path) -> None:
    import scipy.io
    import scipy.sparse

    scipy.io.mmwrite(tmp_path / "S.mtx", scipy.sparse.diags([1.0, 2.0, 3.0, 4.0]).tocoo())
    assert build_problem("sparse", matrix=tmp_path / "S.mtx", options={"loss": "mse"}).sparse_storage() == ((4, 4), 4)
    assert build_problem("inverse", matrix=tmp_path / "S.mtx").sparse_storage() is None


class Huge(SmallLeastSquares):
    """Test double: an example that says it needs a TiB, and counts how often it is built."""

    name = "huge-double"
    built = 0

    @classmethod
    def estimated_bytes(cls, size: int, dtype: torch.dtype = torch.float64, **options: Any) -> int | None:
        return size * 2**40

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> Huge:
        cls.built += 1
        return super().example(size, seed=seed, dtype=dtype)  # type: ignore[return-value]


def test_an_oversized_example_is_refused_before_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**30)
    with pytest.raises(ResourceError, match=r"^problem 'huge-double' of size 3 needs about 3 TiB of memory, and 1 GiB"):
        build_problem(Huge, size=3)
    assert Huge.built == 0
    with pytest.raises(ResourceError, match="problem 'inverse' of size 200000 needs about"):
        build_problem("inverse", size=200_000)
    build_problem(Huge)  # no size: the example's own, nothing to estimate
    assert Huge.built == 1


def test_unknown_names_and_options_are_usage_errors_that_name_them() -> None:
    with pytest.raises(UnknownNameError, match="problem: unknown name 'inverze' .*did you mean 'inverse'"):
        build_problem("inverze")
    with pytest.raises(UsageError) as caught:
        build_problem("inverse", options={"sides": "left"})
    assert str(caught.value).startswith("sides: problem 'inverse' has no option 'sides' (did you mean 'side'?)")
    with pytest.raises(UsageError, match=r"^options: problem 'contract-least-squares' does not accept these "):
        build_problem(SmallLeastSquares, options={"bogus": 1, "other": 2})
    with pytest.raises(UsageError, match=r"^--problem-option: problem .* these options \(bogus, other\): "):
        build_problem(SmallLeastSquares, options={"bogus": 1, "other": 2}, options_name="--problem-option")
    with pytest.raises(UsageError, match="^matrix: expected no size or seed with a matrix"):
        build_problem("inverse", size=3, matrix=torch.eye(3, dtype=torch.float64))
    with pytest.raises(InputError, match="^problem: expected a registered problem name or a gdla.Problem subclass"):
        build_problem(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "words"),
    [({"side": "diagonal"}, ["side", "diagonal"]), ({"init": "gaussian"}, ["init", "gaussian"])],
)
def test_an_option_the_problem_refuses_is_a_usage_error(options: dict[str, Any], words: list[str]) -> None:
    for matrix in (None, torch.eye(3, dtype=torch.float64)):
        with pytest.raises(UsageError) as caught:
            build_problem("inverse", matrix=matrix, options=options)
        assert all(word in str(caught.value) for word in words), str(caught.value)


def test_bad_data_stays_bad_data_with_options_given(tmp_path: Path) -> None:
    # the problem refuses the file whatever the options: not the options' fault, so not usage
    np.save(tmp_path / "nan.npy", np.array([[1.0, math.nan], [0.0, 1.0]]))
    with pytest.raises(InputError) as caught:
        build_problem("inverse", matrix=tmp_path / "nan.npy", options={"pseudo": True})
    assert type(caught.value) is InputError
    assert str(caught.value).startswith(f"matrix file {str(tmp_path / 'nan.npy')!r} for problem 'inverse': ")
    assert "NaN/Inf" in str(caught.value)
    np.save(tmp_path / "ones.npy", np.ones((3, 3)))
    with pytest.raises(gdla.SingularMatrixError, match="for problem 'inverse'.*singular"):
        build_problem("inverse", matrix=tmp_path / "ones.npy", options={"init": "zeros"})
    with pytest.raises(MatrixFileError, match="no such file"):
        build_problem("inverse", matrix=tmp_path / "missing.npy")


def test_building_imports_nothing_above_the_registry() -> None:
    import subprocess
    import sys

    above = ("gdla.loop", "gdla.plan", "gdla.cli", "gdla.commands", "gdla.demo")
    code = f"import sys, gdla.building; print(sorted(m for m in {above!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_a_matrix_file_is_checked_against_memory_from_its_header(tmp_path: Any, monkeypatch: Any) -> None:
    """An 84-byte .mtx may declare a huge matrix: refused before anything is read, as --size is."""
    import gdla.building as building
    from gdla import memory
    from gdla.errors import ResourceError

    path = tmp_path / "huge.mtx"
    path.write_text("%%MatrixMarket matrix coordinate real general\n60000 60000 1\n1 1 1.0\n")
    read: list[Any] = []
    monkeypatch.setattr(building, "load_matrix", lambda *args, **kwargs: read.append(args))
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**34)  # 16 GiB, whatever this machine has
    with pytest.raises(ResourceError, match=r"matrix file .*huge.mtx' \(60000 × 60000\) for problem 'inverse' needs"):
        building.build_problem("inverse", matrix=str(path))
    assert read == []  # nothing was read
