"""The ``inverse`` problem: loss and residual definitions, sides, pseudo-inverses, batches, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

import gdla
from gdla.errors import InputError, ShapeError, SingularMatrixError
from gdla.testing import ProblemContract, assert_close_relative, relative_error
from gdla_plugins.problems import inverse as inverse_module
from gdla_plugins.problems.inverse import InverseProblem

DTYPES = [torch.float32, torch.float64]
#: Tolerance on the relative error against torch.linalg after a converged solve, per dtype.
REACH = {torch.float64: 1e-8, torch.float32: 1e-3}
#: The fused path has its own test; everything else runs the autograd reference, built or not.
GD = {"optimizer": "momentum", "max_steps": 5000, "backend": "autograd"}


class TestInverseContract(ProblemContract):
    problem_name = "inverse"
    solve_options = GD


class TestInverseBatchedContract(ProblemContract):
    """The same checks on a batch of two by three well-conditioned 5×5 matrices."""

    problem_name = "inverse"
    solve_options = GD

    def make_problem(self, dtype: torch.dtype) -> InverseProblem:
        return InverseProblem.well_conditioned(5, batch=(2, 3), dtype=dtype)


def random_matrix(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rank_deficient(m: int, n: int, rank: int, *, seed: int = 0) -> torch.Tensor:
    return random_matrix(m, rank, seed=seed) @ random_matrix(rank, n, seed=seed + 1)


# -- registry and examples ----------------------------------------------------------------------
def test_registered_through_the_entry_point() -> None:
    assert gdla.get_problem("inverse") is InverseProblem
    assert "inverse" in gdla.problems()


def test_example_is_the_seed_notebooks_matrix() -> None:
    torch.manual_seed(314)
    seed_matrix = torch.rand(4, 4)
    assert torch.equal(InverseProblem.example().A, seed_matrix.double())
    assert torch.equal(InverseProblem.example(dtype=torch.float32).A, seed_matrix)
    assert not torch.equal(InverseProblem.example(seed=1).A, seed_matrix.double())
    assert InverseProblem.example(7).A.shape == (7, 7)
    diagonal = InverseProblem.example(kind="diagonal")
    assert torch.equal(diagonal.A, torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)))
    assert InverseProblem.example(kind="diagonal", side="left").side == "left"


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_well_conditioned_is_well_conditioned(n: int) -> None:
    problem = InverseProblem.well_conditioned(n, batch=(3,), seed=n)
    assert problem.batch_shape == (3,)
    conditions = torch.linalg.cond(problem.A)
    assert float(conditions.max()) < 5
    assert problem.condition_estimate() == pytest.approx(float(conditions.max()), rel=1e-10)


# -- definitions --------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "side"), [((4, 4), "right"), ((3, 5), "right"), ((5, 3), "left")])
def test_default_side_is_the_attainable_one(shape: tuple[int, int], side: str) -> None:
    problem = InverseProblem(random_matrix(*shape))
    assert problem.side == side
    assert problem.pseudo is False
    assert problem.init == "random"


@pytest.mark.parametrize("side", ["right", "left", "both"])
def test_loss_is_the_mean_squared_distance_to_the_identity(side: str) -> None:
    A, M = random_matrix(4, 4), random_matrix(4, 4, seed=1)
    product = {"right": A @ M, "left": M @ A, "both": (A @ M + M @ A) / 2}[side]
    expected = ((product - torch.eye(4, dtype=torch.float64)) ** 2).mean()
    problem = InverseProblem(A, side=side)
    torch.testing.assert_close(problem.loss({"M": M}), expected)


@pytest.mark.parametrize(("shape", "side"), [((3, 5), "right"), ((5, 3), "left"), ((4, 4), "right")])
def test_gradient_has_the_closed_form(shape: tuple[int, int], side: str) -> None:
    m, n = shape
    A, M = random_matrix(m, n), random_matrix(n, m, seed=1)
    loss, grads = InverseProblem(A, side=side).loss_and_grad({"M": M})
    if side == "right":
        expected = 2 * A.T @ (A @ M - torch.eye(m, dtype=torch.float64)) / m**2
    else:
        expected = 2 * (M @ A - torch.eye(n, dtype=torch.float64)) @ A.T / n**2
    torch.testing.assert_close(grads["M"], expected)
    assert loss.dim() == 0


def test_batch_loss_is_the_sum_of_per_problem_losses() -> None:
    A, M = random_matrix(2, 3, 4, 4), random_matrix(2, 3, 4, 4, seed=1)
    batched = InverseProblem(A)
    loss, grads = batched.loss_and_grad({"M": M})
    singles = [InverseProblem(A[i, j]).loss_and_grad({"M": M[i, j]}) for i in range(2) for j in range(3)]
    torch.testing.assert_close(loss, sum(single[0] for single in singles))
    # each problem's gradient is what it would be alone: independent of the batch size
    torch.testing.assert_close(grads["M"].reshape(6, 4, 4), torch.stack([single[1]["M"] for single in singles]))


def test_residual_and_error_definitions() -> None:
    A = InverseProblem.well_conditioned(5).A
    problem = InverseProblem(A)
    inverse = torch.linalg.inv(A)
    assert float(problem.residual({"M": inverse})) < 1e-14
    assert float(problem.error({"M": inverse})) < 1e-14
    shift = 1e-3 * random_matrix(5, 5, seed=4)
    eye = torch.eye(5, dtype=torch.float64)
    expected_residual = torch.linalg.matrix_norm(A @ (inverse + shift) - eye) / math.sqrt(5)
    torch.testing.assert_close(problem.residual({"M": inverse + shift}), expected_residual)
    assert float(problem.error({"M": inverse + shift})) == pytest.approx(
        float(torch.linalg.matrix_norm(shift) / torch.linalg.matrix_norm(inverse)), rel=1e-12
    )


def test_both_sides_residual_is_the_larger_side() -> None:
    A = InverseProblem.well_conditioned(4).A
    M = torch.linalg.inv(A) + 1e-3 * random_matrix(4, 4, seed=2)
    eye = torch.eye(4, dtype=torch.float64)
    right = torch.linalg.matrix_norm(A @ M - eye) / 2
    left = torch.linalg.matrix_norm(M @ A - eye) / 2
    torch.testing.assert_close(InverseProblem(A, side="both").residual({"M": M}), torch.maximum(right, left))


def test_batch_residual_and_error_are_the_worst_member() -> None:
    problem = InverseProblem.well_conditioned(4, batch=(3,))
    M = torch.linalg.inv(problem.A)
    M[1] += 1e-2 * random_matrix(4, 4)
    single = InverseProblem(problem.A[1])
    torch.testing.assert_close(problem.residual({"M": M}), single.residual({"M": M[1]}))
    torch.testing.assert_close(problem.error({"M": M}), single.error({"M": M[1]}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", ["right", "left", "both"])
@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_fused_residuals_equal_the_torch_products(monkeypatch, dtype, side, batch) -> None:
    """Square n <= 16 problems take their residuals from ``gdla.ops.small_inverse_residuals`` (the fast path);
    the products through torch (the extension switched off) give the same values to rounding."""
    pytest.importorskip("gdla.ops")
    problem = InverseProblem(InverseProblem.well_conditioned(6, batch=batch, dtype=dtype).A, side=side)
    params = problem.init_params(torch.Generator().manual_seed(2))
    assert problem._fused_residuals(params["M"]) is not None
    fast, fast_members = problem.residual(params), problem.member_residuals(params)
    monkeypatch.setattr(inverse_module, "extension_status", lambda: (False, "switched off by the test"))
    assert problem._fused_residuals(params["M"]) is None
    slow, slow_members = problem.residual(params), problem.member_residuals(params)
    tol = {"rtol": 1e-5, "atol": 0} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
    torch.testing.assert_close(fast, slow, **tol)
    assert fast.dtype == slow.dtype == dtype
    if batch:
        torch.testing.assert_close(fast_members, slow_members, **tol)
    else:
        assert fast_members is None and slow_members is None


def test_reference_and_condition_estimate() -> None:
    A = random_matrix(2, 4, 4)
    torch.testing.assert_close(InverseProblem(A).reference(), torch.linalg.inv(A))
    torch.testing.assert_close(InverseProblem(A, pseudo=True).reference(), torch.linalg.pinv(A))
    assert InverseProblem(A).condition_estimate() == pytest.approx(float(torch.linalg.cond(A).max()), rel=1e-10)
    wide = random_matrix(3, 5)
    torch.testing.assert_close(InverseProblem(wide).reference(), torch.linalg.pinv(wide))


# -- starting points ------------------------------------------------------------------------------
def test_random_start_is_reproducible_and_scaled_to_the_identity() -> None:
    problem = InverseProblem.example(6)
    first = problem.init_params(torch.Generator().manual_seed(5))["M"]
    second = problem.init_params(torch.Generator().manual_seed(5))["M"]
    assert torch.equal(first, second)
    assert bool((first >= 0).all()), "a square invertible A keeps the seed's non-negative uniform draws"
    assert float(torch.linalg.matrix_norm(problem.A @ first)) == pytest.approx(math.sqrt(6), rel=1e-12)
    float32 = problem.to(dtype=torch.float32).init_params(torch.Generator().manual_seed(5))["M"]
    assert float32.dtype == torch.float32
    assert relative_error(float32, first) < 1e-6, "both dtypes start from the same draws"


def test_zeros_and_scaled_transpose_starts() -> None:
    A = random_matrix(5, 5)
    assert torch.equal(InverseProblem(A, init="zeros").init_params(torch.Generator())["M"], torch.zeros(5, 5).double())
    start = InverseProblem(A, init="scaled-transpose").init_params(torch.Generator())["M"]
    expected = A.T / (torch.linalg.matrix_norm(A, ord=1) * torch.linalg.matrix_norm(A, ord=math.inf))
    torch.testing.assert_close(start, expected)
    # the Newton-Schulz safe start: the spectral radius of I - A M0 is below one
    radius = torch.linalg.eigvals(torch.eye(5, dtype=torch.float64) - A @ start).abs().max()
    assert float(radius) < 1


@pytest.mark.parametrize(("shape", "side"), [((3, 6), "right"), ((6, 3), "left")])
def test_random_start_and_projection_stay_where_the_pseudo_inverse_lies(shape: tuple[int, int], side: str) -> None:
    A = random_matrix(*shape)
    problem = InverseProblem(A, side=side)
    params = problem.init_params(torch.Generator().manual_seed(0))
    pinv = torch.linalg.pinv(A)

    def off_subspace(M: torch.Tensor) -> float:
        # right: M must lie in the row space of A (range of Aᵀ); left: Mᵀ in the column space
        away = M - pinv @ A @ M if side == "right" else M - M @ A @ pinv
        return float(torch.linalg.matrix_norm(away))

    assert off_subspace(params["M"]) < 1e-12
    params["M"] += random_matrix(shape[1], shape[0], seed=3)
    assert off_subspace(params["M"]) > 0.1
    problem.project(params)
    assert off_subspace(params["M"]) < 1e-12


# -- solving ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", ["right", "left", "both"])
def test_every_side_reaches_the_inverse(side: str, dtype: torch.dtype) -> None:
    problem = InverseProblem.example(dtype=dtype, side=side)
    result = gdla.solve(problem, **GD)
    assert result.stop_reason == "converged", result.summary()
    assert_close_relative(result.solution, torch.linalg.inv(problem.A.double()), REACH[dtype], "M")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [2, 8, 24])
def test_sizes_reach_the_inverse(n: int, dtype: torch.dtype) -> None:
    problem = InverseProblem.well_conditioned(n, seed=n, dtype=dtype)
    result = gdla.solve(problem, **GD)
    assert result.converged, result.summary()
    assert result.metrics["error"] <= REACH[dtype]
    assert_close_relative(result.solution, torch.linalg.inv(problem.A.double()), REACH[dtype], "M")


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.parametrize(("shape", "side"), [((3, 6), "right"), ((6, 3), "left")])
def test_rectangular_matrices_reach_the_pseudo_inverse(shape: tuple[int, int], side: str, optimizer: str) -> None:
    # adam's per-entry steps leave the subspace of the least-norm answer; the projection keeps it there
    A = random_matrix(*shape, seed=2)
    problem = InverseProblem(A)
    assert problem.side == side
    result = gdla.solve(problem, optimizer=optimizer, max_steps=5000, backend="autograd")
    assert result.converged, result.summary()
    assert_close_relative(result.solution, torch.linalg.pinv(A), 1e-8, "M")


def test_batched_solve_matches_per_problem_solves() -> None:
    problem = InverseProblem.well_conditioned(5, batch=(3, 2), seed=1)
    assert problem.batch_shape == (3, 2)
    batched = gdla.solve(problem, **GD)
    assert batched.converged, batched.summary()
    assert batched.solution.shape == (3, 2, 5, 5)
    for i in range(3):
        for j in range(2):
            alone = gdla.solve(InverseProblem(problem.A[i, j]), **GD)
            assert alone.converged
            assert_close_relative(batched.solution[i, j], alone.solution, 1e-8, f"problem {(i, j)}")
            assert_close_relative(batched.solution[i, j], torch.linalg.inv(problem.A[i, j]), 1e-8, "M")


@pytest.mark.parametrize("side", ["right", "left"])
def test_singular_matrix_with_pseudo_reaches_the_pseudo_inverse(side: str) -> None:
    A = rank_deficient(5, 5, 3, seed=3)
    problem = InverseProblem(A, pseudo=True, side=side)
    assert problem.condition_estimate() > 1e12
    pinv = torch.linalg.pinv(A)
    torch.testing.assert_close(problem.reference(), pinv)
    # A M = I is unattainable: the residual is the normal equations', zero at the pseudo-inverse
    assert float(problem.residual({"M": pinv})) < 1e-12
    assert float(problem.residual({"M": pinv + 1e-3 * random_matrix(5, 5)})) > 1e-6
    result = gdla.solve(problem, optimizer="cg", max_steps=200, backend="autograd")
    assert result.converged, result.summary()
    assert_close_relative(result.solution, pinv, 1e-8, "M")


def test_zero_matrix_has_the_zero_pseudo_inverse() -> None:
    problem = InverseProblem(torch.zeros(3, 4, dtype=torch.float64), pseudo=True)
    assert problem.condition_estimate() == math.inf
    result = gdla.solve(problem, **GD)
    assert result.converged, result.summary()
    assert torch.equal(result.solution, torch.zeros(4, 3, dtype=torch.float64))


def test_non_finite_parameters_give_a_non_finite_residual() -> None:
    problem = InverseProblem.well_conditioned(3, batch=(2,))
    M = torch.linalg.inv(problem.A)
    M[1, 0, 0] = math.nan
    assert math.isnan(float(problem.residual({"M": M})))
    assert math.isnan(float(problem.error({"M": M})))


def test_pseudo_residual_is_scale_invariant() -> None:
    A = rank_deficient(4, 6, 2)
    M = torch.linalg.pinv(A) + 1e-3 * random_matrix(6, 4, seed=5)
    base = InverseProblem(A, pseudo=True).residual({"M": M})
    scaled = InverseProblem(1e3 * A, pseudo=True).residual({"M": M / 1e3})
    torch.testing.assert_close(scaled, base)


def test_tall_matrix_on_the_right_side_is_a_least_squares_problem() -> None:
    A = random_matrix(6, 3)
    with pytest.raises(ShapeError, match="side: 'right'.*pseudo=True"):
        InverseProblem(A, side="right")
    problem = InverseProblem(A, side="right", pseudo=True)
    result = gdla.solve(problem, **GD)
    assert result.converged, result.summary()
    assert_close_relative(result.solution, torch.linalg.pinv(A), 1e-8, "M")


# -- refused inputs -----------------------------------------------------------------------------
def test_singular_matrix_is_refused_with_a_hint() -> None:
    with pytest.raises(SingularMatrixError, match=r"A: .*singular.*pseudo=True"):
        InverseProblem(torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64))
    batch = InverseProblem.well_conditioned(3, batch=(2, 2)).A.clone()
    batch[1, 0] = rank_deficient(3, 3, 2)
    with pytest.raises(SingularMatrixError, match=r"batch index \(1, 0\)"):
        InverseProblem(batch)
    with pytest.raises(SingularMatrixError, match="rank-deficient"):
        InverseProblem(rank_deficient(3, 5, 2))
    with pytest.raises(SingularMatrixError, match="side='both'"):
        InverseProblem(rank_deficient(4, 4, 3), side="both", pseudo=True)


def test_numerically_singular_depends_on_the_dtype() -> None:
    A = torch.diag(torch.tensor([1.0, 1e-6], dtype=torch.float64))  # condition number 1e6
    assert InverseProblem(A).condition_estimate() == pytest.approx(1e6)
    with pytest.raises(SingularMatrixError, match="float32"):
        InverseProblem(A.float())
    with pytest.raises(SingularMatrixError, match="numerically"):
        InverseProblem(torch.diag(torch.tensor([1.0, 1e-15], dtype=torch.float64)))


@pytest.mark.parametrize(
    ("value", "options", "error", "argument"),
    [
        (torch.tensor([[1.0, math.nan], [0.0, 1.0]]), {}, InputError, "A"),
        (torch.tensor([[1.0, 0.0], [math.inf, 1.0]]), {}, InputError, "A"),
        (torch.eye(3, dtype=torch.int64), {}, InputError, "A"),
        (torch.zeros(0, 0), {}, ShapeError, "A"),
        (torch.zeros(2, 0, 3), {}, ShapeError, "A"),
        (torch.ones(4), {}, ShapeError, "A"),
        ("matrix", {}, InputError, "A"),
        (torch.eye(3), {"side": "up"}, InputError, "side"),
        (torch.ones(2, 3), {"side": "both"}, ShapeError, "side"),
        (torch.ones(2, 3), {"side": "left"}, ShapeError, "side"),
        (torch.eye(3), {"init": "ones"}, InputError, "init"),
        (torch.eye(3), {"pseudo": 1}, InputError, "pseudo"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(value, options, error, argument) -> None:
    with pytest.raises(error, match=rf"^{argument}: "):
        InverseProblem(value, **options)


def test_bad_example_arguments() -> None:
    with pytest.raises(InputError, match="^size: "):
        InverseProblem.example(0)
    with pytest.raises(InputError, match="^kind: "):
        InverseProblem.example(kind="hilbert")
    with pytest.raises(InputError, match="^dtype: "):
        InverseProblem.example(dtype=torch.int32)
    with pytest.raises(InputError, match="^backend: "):
        InverseProblem.example().loss_and_grad({"M": torch.eye(4).double()}, "cuda")


# -- conversion, description, fused path ----------------------------------------------------------
def test_conversion_keeps_the_options() -> None:
    problem = InverseProblem(rank_deficient(4, 4, 3), side="left", pseudo=True, init="zeros")
    converted = problem.to(dtype=torch.float32)
    assert (converted.side, converted.pseudo, converted.init) == ("left", True, "zeros")
    assert converted.A.dtype == torch.float32
    assert problem.to(dtype=torch.float64, device="cpu") is problem
    assert InverseProblem(torch.eye(3, dtype=torch.float16)).dtype == torch.float32


def test_describe_is_json_ready() -> None:
    description = InverseProblem.well_conditioned(3, batch=(2,), side="both").describe()
    assert json.loads(json.dumps(description)) == {
        "name": "inverse",
        "shape": [2, 3, 3],
        "batch_shape": [2],
        "m": 3,
        "n": 3,
        "side": "both",
        "pseudo": False,
        "init": "random",
        "reference": "inv",
    }


@pytest.mark.parametrize(
    ("shape", "side"),
    [((4, 4), "right"), ((4, 4), "left"), ((4, 4), "both"), ((2, 3, 5, 5), "right"), ((3, 6), "right")],
)
def test_fused_loss_and_gradient_match_autograd(shape: tuple[int, ...], side: str) -> None:
    loaded, detail = gdla.extension_status()
    if not loaded:
        pytest.skip(f"the compiled extension is unavailable: {detail}")
    A = random_matrix(*shape) + 3 * torch.eye(shape[-2], shape[-1], dtype=torch.float64)
    problem = InverseProblem(A, side=side)
    params = problem.init_params(torch.Generator().manual_seed(0))
    loss, grads = problem.loss_and_grad(params, "autograd")
    fused_loss, fused_grads = problem.loss_and_grad(params, "fused")
    torch.testing.assert_close(fused_loss, loss)
    torch.testing.assert_close(fused_grads["M"], grads["M"])


@pytest.mark.parametrize(("dtype", "bound"), [(torch.float64, 1e-6), (torch.float32, 1e-4)])
@pytest.mark.parametrize("backend", ["autograd", "auto"])
def test_solve_defaults_reach_the_inverse_of_a_well_conditioned_16x16(
    dtype: torch.dtype, bound: float, backend: str
) -> None:
    """gdla.solve's defaults (optimizer, lr, max_steps, tol) meet the library's promise."""
    problem = InverseProblem.well_conditioned(16, seed=5, dtype=dtype)
    result = gdla.solve(problem, backend=backend)
    exact = torch.linalg.inv(problem.A.double())
    error = float(torch.linalg.matrix_norm(result.solution.double() - exact) / torch.linalg.matrix_norm(exact))
    assert result.stop_reason == "converged", result.summary()
    assert error <= bound
    assert result.metrics["error"] <= bound  # its own figure, against a reference in the same dtype


def test_a_zero_member_of_a_pseudo_inverse_batch_bounds_nothing() -> None:
    """The pseudo-inverse of a zero matrix is zero: it must not make the batch look unrepresentable."""
    A = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float32) + 2 * torch.eye(4)
    A[1] = 0
    scaled = A * 1e19
    result = gdla.solve(InverseProblem(scaled, pseudo=True), optimizer="newton-schulz", max_steps=2000)
    reference = torch.linalg.pinv(scaled.double())
    assert torch.equal(result.solution[1], torch.zeros(4, 4))
    for member in (0, 2):
        error = (result.solution[member].double() - reference[member]).norm() / reference[member].norm()
        assert float(error) <= 1e-4
