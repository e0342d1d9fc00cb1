"""The base Problem's derived members: the recorded constructor arguments, and the generic ``to``,
``batch_slice``, ``batch_size`` and ``rebuild`` made from them; a problem written against the older
API (own ``to``, own ``dtype``, ``*args`` constructor) keeps working unchanged."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch

import gdla
from gdla.errors import InputError
from gdla.problem import Params, Problem
from gdla_plugins.problems.inverse import InverseProblem
from gdla_plugins.problems.sparse import SparseProblem
from gdla_plugins.problems.svd import SVDProblem


def _matrix(*shape: int, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.eye(*shape[-2:], dtype=torch.float64) + 0.2 * noise


class OldStyle(Problem):
    """A third-party problem as written before the record: ``*args`` constructor, own ``dtype`` and ``to``."""

    name = "old-style-test"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.b = torch.as_tensor(args[0], dtype=kwargs.get("dtype", torch.float64))
        self.calls = 0

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> OldStyle:
        return cls([1.0, 2.0, 3.0], dtype=dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.b.dtype

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> OldStyle:
        moved = OldStyle(self.b.tolist(), dtype=dtype or self.b.dtype)
        moved.calls = self.calls + 1
        return moved

    def init_params(self, generator: torch.Generator) -> Params:
        return {"x": torch.zeros_like(self.b)}

    def loss(self, params: Params) -> torch.Tensor:
        return (params["x"] - self.b).square().sum()

    def solution(self, params: Params) -> torch.Tensor:
        return params["x"].detach()

    def residual(self, params: Params) -> torch.Tensor:
        return torch.linalg.vector_norm(params["x"] - self.b) / torch.linalg.vector_norm(self.b)

    def reference(self) -> torch.Tensor:
        return self.b

    def error(self, params: Params) -> torch.Tensor:
        return self.residual(params)


class Wrapped(InverseProblem):
    """A subclass whose own constructor calls the built-in's: only the outermost call is recorded."""

    def __init__(self, A: Any, scale: float = 2.0) -> None:
        super().__init__(torch.as_tensor(A) * scale, side="left")
        self.scale = scale


def test_the_outermost_constructor_call_is_recorded_with_defaults() -> None:
    A = _matrix(3, 3)
    problem = InverseProblem(A, pseudo=False)
    assert problem._constructor_arguments == {"A": A, "side": None, "pseudo": False, "init": "random"}
    wrapped = Wrapped(A)
    assert wrapped._constructor_arguments == {"A": A, "scale": 2.0}
    assert OldStyle([1.0])._constructor_arguments is None  # *args: nothing to record


def test_to_rebuilds_a_builtin_problem_with_converted_data() -> None:
    problem = InverseProblem(_matrix(2, 4, 4), side="left", init="zeros")
    converted = problem.to(dtype=torch.float32)
    assert type(converted) is InverseProblem and converted.dtype == torch.float32 and problem.dtype == torch.float64
    assert torch.equal(converted.A, problem.A.float())
    assert (converted.side, converted.pseudo, converted.init) == ("left", False, "zeros")
    # derived data computed again in the new dtype, not copied
    assert converted._sigma_max.dtype == torch.float32
    assert torch.allclose(converted._sigma_max.double(), problem._sigma_max, rtol=1e-6)
    assert problem.to(dtype=torch.float64, device="cpu") is problem


def test_to_converts_data_given_as_nested_lists() -> None:
    problem = InverseProblem([[2.0, 0.0], [0.0, 4.0]])
    assert problem.dtype == torch.float32
    converted = problem.to(dtype=torch.float64)
    assert converted.dtype == torch.float64
    assert torch.equal(converted.A, torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64))


def test_the_normalisation_cache_is_rebuilt_not_copied() -> None:
    problem = InverseProblem(_matrix(3, 3) * 24)
    first = problem.normalized()
    assert first is not None and first.exponent == 5
    converted = problem.to(dtype=torch.float32)
    assert converted._normalization is None
    again = converted.normalized()
    assert again is not first and again.exponent == 5 and again.problem.A.dtype == torch.float32
    # the normalised copy rebuilds from its own (scaled) A
    assert torch.equal(first.problem.to(dtype=torch.float32).A, first.problem.A.float())


def test_batch_slice_and_size_follow_the_declared_batched_argument() -> None:
    A = _matrix(5, 3, 3, seed=2)
    problem = InverseProblem(A, side="right", init="scaled-transpose")
    assert problem.batch_size() == 5 and InverseProblem(A[0]).batch_size() is None
    part = problem.batch_slice(1, 3)
    assert torch.equal(part.A, A[1:3]) and part.batch_size() == 2
    assert (part.side, part.init) == ("right", "scaled-transpose")
    params = part.reference_params()
    assert torch.allclose(params["M"], torch.linalg.inv(A[1:3]), rtol=1e-12, atol=1e-12)
    with pytest.raises(NotImplementedError, match="problem 'inverse' is not batched"):
        InverseProblem(A[0]).batch_slice(0, 1)


def test_rebuild_replaces_arguments_and_names_unknown_ones() -> None:
    problem = SVDProblem(_matrix(5, 4), rank=2, orthonormal="qr")
    doubled = problem.rebuild(M=problem.M * 2)
    assert torch.equal(doubled.M, problem.M * 2) and (doubled.rank, doubled.orthonormal) == (2, "qr")
    with pytest.raises(InputError, match=r"changes: expected arguments of SVDProblem.__init__ \(M, rank, .*ranks"):
        problem.rebuild(ranks=3)
    with pytest.raises(NotImplementedError, match="does not record"):
        OldStyle([1.0]).rebuild()


def test_a_sparse_problem_in_pattern_storage_converts_its_values() -> None:
    problem = SparseProblem.example(12, storage="sparse", per_row=3, columns=5)
    converted = problem.to(dtype=torch.float32)
    assert converted.dtype == torch.float32 and converted.storage.kind == "sparse"
    assert torch.equal(converted.init_values, problem.init_values.float())
    assert torch.equal(converted.pattern.rows, problem.pattern.rows)


def test_a_subclass_is_rebuilt_through_its_own_constructor() -> None:
    A = _matrix(3, 3, seed=4)
    converted = Wrapped(A, scale=4.0).to(dtype=torch.float32)
    assert type(converted) is Wrapped and converted.scale == 4.0 and converted.side == "left"
    assert torch.equal(converted.A, (A.float() * 4.0))


def test_a_problem_written_against_the_older_api_keeps_working() -> None:
    problem = OldStyle([1.0, -2.0, 0.5])
    converted = problem.to(dtype=torch.float32)
    assert converted.calls == 1 and converted.dtype == torch.float32  # its own to() and dtype
    assert problem.batch_size() is None
    result = gdla.solve(problem, optimizer="momentum", lr=0.1, max_steps=400, tol=1e-8)
    assert torch.allclose(result.solution, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), atol=1e-7)


def test_a_problem_without_a_record_falls_back_to_converting_its_attributes() -> None:
    class Bare(OldStyle):
        to = Problem.to  # the base class's
        dtype = Problem.dtype  # type: ignore[assignment]

    problem = Bare([1.0, 2.0])
    converted = problem.to(dtype=torch.float32)
    assert converted is not problem and converted.b.dtype == torch.float32 and problem.b.dtype == torch.float64


def test_recorded_problems_pickle() -> None:
    problem = InverseProblem(_matrix(2, 3, 3), side="left")
    copy = pickle.loads(pickle.dumps(problem))
    assert torch.equal(copy._constructor_arguments["A"], problem.A) and copy.batch_slice(0, 1).batch_size() == 1
