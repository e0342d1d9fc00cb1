"""The ``svd`` problem: loss, retractions, answer ordering and signs, orientations, ranks, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

import gdla
from gdla.errors import InputError, ShapeError
from gdla.loop import default_tol
from gdla.testing import ProblemContract, assert_close_relative
from gdla_plugins.problems._common import polar_factor_differentiable, sign_fixed_qr_differentiable
from gdla_plugins.problems.svd import SVDProblem

DTYPES = [torch.float32, torch.float64]
#: L-BFGS with a long history (as ``auto`` picks it for svd); autograd so that runs do not depend on the build.
LBFGS = {"optimizer": "lbfgs", "history_size": 200, "max_steps": 2000, "backend": "autograd"}
REACH = {torch.float64: 1e-10, torch.float32: 1e-4}


class TestSVDContract(ProblemContract):
    problem_name = "svd"
    solve_options = LBFGS


class TestSVDPolarWideContract(ProblemContract):
    """The same checks on a wide matrix kept orthonormal by the polar retraction."""

    problem_name = "svd"
    solve_options = LBFGS

    def make_problem(self, dtype: torch.dtype) -> SVDProblem:
        return SVDProblem(random_matrix(4, 6).to(dtype), orthonormal="polar")


def random_matrix(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def exact_params(M: torch.Tensor, k: int | None = None) -> dict[str, torch.Tensor]:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    k = k or S.numel()
    return {"U": U[:, :k].clone(), "s": S[:k].sqrt(), "V": Vh[:k].mT.clone()}


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x - y) ** 2).mean()


# -- registry and example ------------------------------------------------------------------------
def test_registered_through_the_entry_point() -> None:
    assert gdla.get_problem("svd") is SVDProblem


def test_example_is_the_seed_notebooks_matrix() -> None:
    torch.manual_seed(314)
    seed_matrix = torch.rand(5, 4)
    problem = SVDProblem.example()
    assert torch.equal(problem.M, seed_matrix.double())
    assert problem.rank == 4
    assert (problem.weight_u, problem.weight_v, problem.orthonormal) == (0.01, 0.01, "penalty")
    assert SVDProblem.example(6).M.shape == (7, 6)
    assert SVDProblem.example(orthonormal="qr").orthonormal == "qr"


# -- definitions --------------------------------------------------------------------------------
def test_penalty_loss_is_the_seed_notebooks_loss() -> None:
    M = random_matrix(5, 3)
    params = {"U": random_matrix(5, 2, seed=1), "s": random_matrix(2, seed=2), "V": random_matrix(3, 2, seed=3)}
    U, s, V = params["U"], params["s"], params["V"]
    eye = torch.eye(2, dtype=torch.float64)
    expected = mse(U @ torch.diag(s**2) @ V.T, M) + 0.5 * mse(U.T @ U, eye) + 0.25 * mse(V.T @ V, eye)
    problem = SVDProblem(M, rank=2, weight_u=0.5, weight_v=0.25)
    torch.testing.assert_close(problem.loss(params), expected)


@pytest.mark.parametrize("orthonormal", ["qr", "polar"])
def test_retraction_modes_fit_the_retracted_factors_without_penalties(orthonormal: str) -> None:
    M = random_matrix(5, 3)
    problem = SVDProblem(M, orthonormal=orthonormal, weight_u=100.0)
    params = problem.init_params(torch.Generator().manual_seed(0))
    U, s, V = params["U"], params["s"], params["V"]
    # at orthonormal factors: the plain fit, no penalty whatever its weight
    torch.testing.assert_close(problem.loss(params), mse(U @ torch.diag(s**2) @ V.T, M))
    # off the constraint set the loss is the fit at the retracted factors, so project() keeps it
    moved = {key: value + 0.1 * random_matrix(*value.shape, seed=7) for key, value in params.items()}
    before = problem.loss(moved)
    problem.project(moved)
    torch.testing.assert_close(problem.loss(moved), before)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(moved["U"].T @ moved["U"], eye)
    torch.testing.assert_close(moved["V"].T @ moved["V"], eye)


def test_polar_gradient_is_the_riemannian_one_at_orthonormal_factors() -> None:
    M = random_matrix(6, 4)
    problem = SVDProblem(M, orthonormal="polar")
    params = problem.init_params(torch.Generator().manual_seed(1))
    _, grads = problem.loss_and_grad(params)
    _, euclidean = SVDProblem(M, weight_u=0.0, weight_v=0.0).loss_and_grad(params)
    for key in ("U", "V"):
        X, G = params[key], euclidean[key]
        symmetric = (X.T @ G + G.T @ X) / 2
        torch.testing.assert_close(grads[key], G - X @ symmetric, msg=key)
    torch.testing.assert_close(grads["s"], euclidean["s"])


@pytest.mark.parametrize("retraction", [polar_factor_differentiable, sign_fixed_qr_differentiable])
def test_retractions_have_exact_gradients(retraction) -> None:
    for X in (random_matrix(6, 3) - 0.5, torch.linalg.qr(random_matrix(5, 5) - 0.5)[0]):
        assert torch.autograd.gradcheck(retraction, (X.clone().requires_grad_(True),))


def test_residual_is_the_worst_defining_equation() -> None:
    M = random_matrix(5, 4)
    params = exact_params(M)
    problem = SVDProblem(M)
    assert float(problem.residual(params)) < 1e-14
    assert float(problem.error(params)) < 1e-14
    skewed = dict(params, U=1.01 * params["U"])
    U, S, V = skewed["U"], skewed["s"] ** 2, skewed["V"]
    eye = torch.eye(4, dtype=torch.float64)
    parts = [
        torch.linalg.matrix_norm(M @ V - U * S) / torch.linalg.matrix_norm(M),
        torch.linalg.matrix_norm(M.T @ U - V * S) / torch.linalg.matrix_norm(M),
        torch.linalg.matrix_norm(U.T @ U - eye) / 2,
        torch.linalg.matrix_norm(V.T @ V - eye) / 2,
    ]
    torch.testing.assert_close(problem.residual(skewed), max(parts))


def test_error_and_condition_estimate() -> None:
    M = random_matrix(4, 6)
    sigma = torch.linalg.svdvals(M)
    problem = SVDProblem(M, rank=3)
    params = exact_params(M, 3)
    params["s"] = (sigma[:3] * torch.tensor([1.0, 1.001, 1.0], dtype=torch.float64)).sqrt()
    expected = 0.001 * sigma[1] / torch.linalg.vector_norm(sigma[:3])
    assert float(problem.error(params)) == pytest.approx(float(expected), rel=1e-9)
    assert problem.condition_estimate() == pytest.approx(float(sigma[0] / sigma[-1]), rel=1e-12)


def test_solution_is_sorted_and_signed_like_torch() -> None:
    M = random_matrix(6, 4)
    U, S, V = SVDProblem(M).reference()
    order = torch.tensor([2, 0, 3, 1])
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    scrambled = {"U": U[:, order] * signs, "s": S[order].sqrt(), "V": V[:, order] * signs}
    got_u, got_s, got_v = SVDProblem(M).solution(scrambled)
    torch.testing.assert_close(got_s, torch.linalg.svdvals(M))
    torch.testing.assert_close(got_u, U)
    torch.testing.assert_close(got_v, V)
    reference_u, reference_s, reference_vh = torch.linalg.svd(M, full_matrices=False)
    torch.testing.assert_close(got_u @ torch.diag(got_s) @ got_v.T, M)
    torch.testing.assert_close(got_v, reference_vh.T)


# -- project ------------------------------------------------------------------------------------
def test_qr_and_polar_projections() -> None:
    M = random_matrix(7, 3)
    X = random_matrix(7, 3, seed=4) - 0.5
    eye = torch.eye(3, dtype=torch.float64)
    for mode in ("qr", "polar"):
        params = {"U": X.clone(), "s": torch.ones(3, dtype=torch.float64), "V": random_matrix(3, 3, seed=5)}
        SVDProblem(M, orthonormal=mode).project(params)
        Q = params["U"]
        torch.testing.assert_close(Q.T @ Q, eye)
        factor = Q.T @ X  # X = Q R (qr, R upper triangular, diag > 0) or X = Q H (polar, H spd)
        if mode == "qr":
            torch.testing.assert_close(factor, torch.triu(factor))
            assert bool((torch.diagonal(factor) > 0).all())
        else:
            torch.testing.assert_close(factor, factor.T)
            assert bool((torch.linalg.eigvalsh(factor) > 0).all())


@pytest.mark.parametrize("orthonormal", ["penalty", "qr", "polar"])
def test_project_flips_a_triple_whose_sign_s2_cannot_carry(orthonormal: str) -> None:
    M = random_matrix(5, 4)
    params = exact_params(M)
    params["V"][:, 2] *= -1  # u_2ᵀ M v_2 = -σ_2: the fit would drive s_2 to the dead point 0
    assert float(SVDProblem(M).residual(params)) > 0.01
    SVDProblem(M, orthonormal=orthonormal).project(params)
    assert float(SVDProblem(M).residual(params)) < 1e-13
    exact = exact_params(M)
    SVDProblem(M, orthonormal=orthonormal).project(exact)
    torch.testing.assert_close(exact, exact_params(M), msg="a solution is left alone")


def test_initial_triples_all_carry_the_right_sign() -> None:
    M = random_matrix(6, 5) - 0.5
    problem = SVDProblem(M)
    params = problem.init_params(torch.Generator().manual_seed(3))
    U, s, V = params["U"], params["s"], params["V"]
    torch.testing.assert_close(U.T @ U, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(V.T @ V, torch.eye(5, dtype=torch.float64))
    diagonal = torch.diagonal(U.T @ M @ V)
    assert bool((diagonal > 0).all())
    torch.testing.assert_close(s**2, diagonal.clamp(min=1e-3 * float(torch.linalg.matrix_norm(M)) / math.sqrt(5)))


# -- solving ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [None, 2])
@pytest.mark.parametrize("orthonormal", ["qr", "polar"])
def test_retractions_reach_the_singular_values_to_float64_precision(orthonormal: str, rank: int | None) -> None:
    problem = SVDProblem.example(orthonormal=orthonormal, rank=rank)
    result = gdla.solve(problem, **LBFGS)
    k = problem.rank
    U, S, V = result.solution
    assert float(torch.linalg.vector_norm(S - torch.linalg.svdvals(problem.M)[:k])) <= 1e-10 * float(
        torch.linalg.vector_norm(torch.linalg.svdvals(problem.M)[:k])
    ), result.summary()
    reference_u, _, reference_v = problem.reference()
    assert_close_relative(U, reference_u, 1e-8, "U")
    assert_close_relative(V, reference_v, 1e-8, "V")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5)])
def test_both_orientations_reach_the_reference(shape: tuple[int, int], dtype: torch.dtype) -> None:
    M = random_matrix(*shape, seed=sum(shape))
    problem = SVDProblem(M.to(dtype), orthonormal="polar")
    result = gdla.solve(problem, **LBFGS)
    # near float64's floor L-BFGS's line search can no longer tell losses of ~1e-20 apart and may
    # stall just above tol; the answer is then already exact to ~1e-11
    assert result.stop_reason in ("converged", "stalled"), result.summary()
    assert result.metrics["residual"] <= 100 * default_tol(dtype)
    U, S, V = result.solution
    k = min(shape)
    assert (U.shape, S.shape, V.shape) == ((shape[0], k), (k,), (shape[1], k))
    assert result.metrics["error"] <= REACH[dtype], result.summary()
    assert_close_relative(U @ torch.diag(S) @ V.T, M, 10 * REACH[dtype], "U S Vᵀ")


@pytest.mark.parametrize("shape", [(8, 5), (5, 8)])
def test_lower_rank_gives_the_best_rank_k_approximation(shape: tuple[int, int]) -> None:
    M = random_matrix(*shape, seed=11)
    problem = SVDProblem(M, rank=2, orthonormal="polar")
    result = gdla.solve(problem, **LBFGS)
    U, S, V = result.solution
    assert (U.shape, S.shape, V.shape) == ((shape[0], 2), (2,), (shape[1], 2))
    full_u, full_s, full_vh = torch.linalg.svd(M, full_matrices=False)
    best = full_u[:, :2] @ torch.diag(full_s[:2]) @ full_vh[:2]
    assert_close_relative(S, full_s[:2], 1e-9, "S")
    assert_close_relative(U @ torch.diag(S) @ V.T, best, 1e-8, "rank-2 approximation")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [2, 3])
def test_penalty_mode_reaches_the_reference(size: int, dtype: torch.dtype) -> None:
    problem = SVDProblem.example(size, dtype=dtype)
    result = gdla.solve(problem, **LBFGS)
    assert result.metrics["error"] <= {torch.float64: 1e-8, torch.float32: 1e-4}[dtype], result.summary()


# -- refused inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "options", "error", "argument"),
    [
        (torch.tensor([[1.0, math.nan], [0.0, 1.0]]), {}, InputError, "M"),
        (torch.tensor([[math.inf, 0.0], [0.0, 1.0]]), {}, InputError, "M"),
        (torch.ones(3, 3, dtype=torch.int32), {}, InputError, "M"),
        (torch.zeros(0, 3), {}, ShapeError, "M"),
        (torch.ones(3), {}, ShapeError, "M"),
        (torch.ones(2, 3, 3), {}, ShapeError, "M"),
        (torch.ones(3, 4), {"rank": 4}, InputError, "rank"),
        (torch.ones(3, 4), {"rank": 0}, InputError, "rank"),
        (torch.ones(3, 4), {"rank": 2.0}, InputError, "rank"),
        (torch.ones(3, 4), {"weight_u": -1.0}, InputError, "weight_u"),
        (torch.ones(3, 4), {"weight_v": math.nan}, InputError, "weight_v"),
        (torch.ones(3, 4), {"orthonormal": "gram-schmidt"}, InputError, "orthonormal"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(value, options, error, argument) -> None:
    with pytest.raises(error, match=rf"^{argument}: "):
        SVDProblem(value, **options)


# -- conversion, description, fused path ----------------------------------------------------------
def test_conversion_keeps_the_options_and_describe_is_json_ready() -> None:
    problem = SVDProblem(random_matrix(4, 6), rank=3, weight_u=0.1, weight_v=0.2, orthonormal="qr")
    converted = problem.to(dtype=torch.float32)
    assert converted.M.dtype == torch.float32
    assert converted.describe() == problem.describe()
    assert problem.to(dtype=torch.float64) is problem
    assert json.loads(json.dumps(problem.describe())) == {
        "name": "svd",
        "shape": [4, 6],
        "rank": 3,
        "weight_u": 0.1,
        "weight_v": 0.2,
        "orthonormal": "qr",
    }


@pytest.mark.parametrize("orthonormal", ["penalty", "qr", "polar"])
@pytest.mark.parametrize(("shape", "rank"), [((5, 4), None), ((4, 6), 2)])
def test_fused_loss_and_gradient_match_autograd(orthonormal: str, shape: tuple[int, int], rank: int | None) -> None:
    loaded, detail = gdla.extension_status()
    if not loaded:
        pytest.skip(f"the compiled extension is unavailable: {detail}")
    problem = SVDProblem(random_matrix(*shape), rank=rank, orthonormal=orthonormal)
    params = problem.init_params(torch.Generator().manual_seed(0))
    # off the constraint set, where the retraction's chain rule matters
    params = {key: value + 0.05 * random_matrix(*value.shape, seed=9) for key, value in params.items()}
    loss, grads = problem.loss_and_grad(params, "autograd")
    fused_loss, fused_grads = problem.loss_and_grad(params, "fused")
    torch.testing.assert_close(fused_loss, loss)
    for key in ("U", "s", "V"):
        torch.testing.assert_close(fused_grads[key], grads[key], msg=key)


# -- the declared singular value decomposition (riemannian-svd) ------------------------------------
def test_declares_its_matrix_rank_and_how_to_store_an_answer() -> None:
    M = random_matrix(6, 4)
    problem = SVDProblem(M, rank=3)
    form = problem.singular_value_decomposition()
    assert form is not None and form.rank == 3 and form.matrix is problem.M
    params = problem.init_params(torch.Generator().manual_seed(0))
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    form.store(params, U[:, :3], S[:3], Vh[:3].mT)
    loaded_u, loaded_v = form.load(params)
    torch.testing.assert_close(loaded_u, U[:, :3])
    torch.testing.assert_close(loaded_v, Vh[:3].mT)
    torch.testing.assert_close(params["s"].square(), S[:3])
    assert float(problem.residual(params)) < 1e-14  # the exact answer reaches any reachable tol


@pytest.mark.parametrize("orthonormal", ["penalty", "qr", "polar"])
def test_auto_picks_the_riemannian_method_and_reaches_the_default_tol(orthonormal: str) -> None:
    problem = SVDProblem(random_matrix(9, 6, seed=3), orthonormal=orthonormal)
    result = gdla.solve(problem)
    assert result.settings["optimizer.method"] == "riemannian-svd"
    assert result.stop_reason == "converged" and result.metrics["residual"] <= default_tol(torch.float64)
    S = problem.solution(result.params)[1]
    torch.testing.assert_close(S, torch.linalg.svdvals(problem.M), rtol=0, atol=1e-12)


def test_penalty_form_with_lbfgs_is_unchanged_by_the_new_capability() -> None:
    """The seed notebook's scenario: the penalised loss with an explicit L-BFGS, exactly as before."""
    problem = SVDProblem.example()
    result = gdla.solve(problem, seed=0, **LBFGS)
    assert result.metrics["error"] <= 1e-6
