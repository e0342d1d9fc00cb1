"""The ``sparse`` problem: the masked least-squares reference, several hops, activations, errors."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

import gdla
from gdla.errors import InputError, ShapeError
from gdla.testing import ProblemContract, assert_close_relative
from gdla_plugins.problems.sparse import SparseProblem

DTYPES = [torch.float32, torch.float64]
#: The fused path has its own test; everything else runs the autograd reference, built or not.
AUTOGRAD = {"backend": "autograd"}


class TestSparseContract(ProblemContract):
    problem_name = "sparse"
    solve_options = {"optimizer": "lbfgs", "max_steps": 300, **AUTOGRAD}


class TestSparseMseContract(ProblemContract):
    """The same checks on a random 8×8 masked problem with the mean-squared loss."""

    problem_name = "sparse"
    solve_options = {"optimizer": "lbfgs", "max_steps": 300, **AUTOGRAD}

    def make_problem(self, dtype: torch.dtype) -> SparseProblem:
        return SparseProblem.example(8, dtype=dtype, loss="mse")


def random_problem(n: int, p: int, *, seed: int = 0, **options) -> SparseProblem:
    """Random mask (with one free entry per row at least), data and Init; Y is not an exact fit."""
    generator = torch.Generator().manual_seed(seed)
    omega = torch.rand(n, n, generator=generator) < 0.5
    omega[torch.arange(n), torch.arange(n)] = True
    X = torch.randn(n, p, generator=generator, dtype=torch.float64)
    Y = torch.randn(n, p, generator=generator, dtype=torch.float64)
    init = 0.1 * torch.randn(n, n, generator=generator, dtype=torch.float64)
    return SparseProblem(X, Y, omega=omega, init=init, **options)


def dense_min_norm(problem: SparseProblem) -> torch.Tensor:
    """All free entries at once: vec((Ω ⊙ U) X) = kron(I, Xᵀ)[:, free] u, min-norm least squares."""
    n = problem.n
    X, Y, init = problem.X.double(), problem.Y.double(), problem.init.double()
    free = problem.omega.reshape(-1) != 0
    system = torch.kron(torch.eye(n, dtype=torch.float64), X.T.contiguous())[:, free]
    rhs = (Y - init @ X).reshape(-1)
    u = torch.linalg.pinv(system) @ rhs
    U = torch.zeros(n * n, dtype=torch.float64)
    U[free] = u
    return init + U.reshape(n, n)


def test_seed_scenario() -> None:
    problem = SparseProblem.example()
    torch.testing.assert_close(problem.X, torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64))
    torch.testing.assert_close(problem.Y, torch.tensor([[0.0], [0.0], [2.0]], dtype=torch.float64))
    expected_init = 0.1 * torch.rand(3, 3, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    torch.testing.assert_close(problem.init, expected_init)
    assert torch.equal(problem.omega, torch.ones(3, 3, dtype=torch.float64))
    assert (problem.hops, problem.activation, problem.loss_kind) == (1, None, "frobenius")
    # Ω = 1: U = (Y − Init X) X⁺, the seed's "exact solution" with the pseudo-inverse
    expected = expected_init + (problem.Y - expected_init @ problem.X) @ torch.linalg.pinv(problem.X)
    torch.testing.assert_close(problem.reference(), expected)
    torch.testing.assert_close(problem.reference() @ problem.X, problem.Y)


@pytest.mark.parametrize("n,p", [(6, 3), (6, 6), (5, 12)])
def test_row_by_row_reference_matches_a_dense_solve(n: int, p: int) -> None:
    problem = random_problem(n, p)
    expected = dense_min_norm(problem)
    assert_close_relative(problem.reference(), expected, 1e-10, "masked least-squares operator")
    # the reference changes nothing where the mask is 0
    fixed = problem.omega == 0
    torch.testing.assert_close(problem.reference()[fixed], problem.init[fixed])
    U = problem.reference() - problem.init
    assert float(problem.residual({"U": U})) < 1e-12


STEPS = 600


def test_gradient_descent_from_zero_finds_the_minimum_norm_answer() -> None:
    problem = random_problem(6, 2, loss="mse")  # fewer examples than free entries per row: many exact fits
    U = torch.zeros(6, 6, dtype=torch.float64, requires_grad=True)
    # 1/L for the mean-squared loss: its Hessian is 2/(n p) X Xᵀ restricted to each row's free set
    lipschitz = 2 / 12 * float(torch.linalg.eigvalsh(problem.X @ problem.X.T)[-1])
    optimizer = torch.optim.SGD([U], lr=1 / lipschitz)
    for _ in range(STEPS):
        optimizer.zero_grad()
        problem.loss({"U": U}).backward()
        optimizer.step()
    params = {"U": U.detach()}
    assert float(problem.fit_residual(params)) < 1e-7
    assert float(problem.error(params)) < 1e-7
    assert float(problem.omega.sum(dim=1).min()) > 2  # so the minimum-norm choice mattered
    result = gdla.solve(problem, optimizer="lbfgs", max_steps=300, **AUTOGRAD)
    assert result.converged, result.summary()
    assert result.metrics["error"] < 1e-8


def test_residual_reaches_zero_without_an_exact_fit_and_is_scale_invariant() -> None:
    problem = random_problem(5, 12)  # more examples than unknowns: no exact fit
    S_ref = problem.reference()
    U = S_ref - problem.init
    assert float(problem.fit_residual({"U": U})) > 0.1
    assert float(problem.residual({"U": U})) < 1e-12
    nearby = {"U": U + 1e-3 * torch.randn(5, 5, dtype=torch.float64)}
    scaled = SparseProblem(problem.X, 5.0 * problem.Y, omega=problem.omega, init=5.0 * problem.init)
    expected = float(problem.residual(nearby))
    assert 0 < expected < 1
    assert float(scaled.residual({"U": 5.0 * nearby["U"]})) == pytest.approx(expected, rel=1e-10)
    S = problem.solution(nearby)
    assert float(problem.error(nearby)) == pytest.approx(
        float(torch.linalg.matrix_norm(S - S_ref) / torch.linalg.matrix_norm(S_ref))
    )
    zero_target = SparseProblem(problem.X, torch.zeros_like(problem.Y), omega=problem.omega)
    assert float(zero_target.residual(zero_target.init_params(torch.Generator()))) == 0.0


@pytest.mark.parametrize("loss", ["frobenius", "mse"])
@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid", "cube"])
def test_forward_and_loss_values(loss: str, activation: str | None) -> None:
    problem = random_problem(4, 3, hops=2, activation=activation, loss=loss)
    U = torch.randn(4, 4, dtype=torch.float64)
    S = problem.init + problem.omega * U
    functions = {
        None: lambda x: x,
        "relu": torch.relu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "cube": lambda x: x**3,
    }
    act = functions[activation]
    expected_y = act(S @ act(S @ problem.X))
    torch.testing.assert_close(problem.forward(S), expected_y)
    diff = problem.Y - expected_y
    expected = torch.sqrt(diff.square().sum()) if loss == "frobenius" else diff.square().sum() / 12
    torch.testing.assert_close(problem.loss({"U": U}), expected)
    torch.testing.assert_close(problem.solution({"U": U}), S)


@pytest.mark.parametrize("activation", [None, "tanh"])
def test_two_hops_fit_a_consistent_problem(activation: str | None) -> None:
    problem = SparseProblem.example(8, hops=2, activation=activation)
    start = problem.init_params(torch.Generator())
    assert float(problem.residual(start)) > 0.5
    result = gdla.solve(problem, optimizer="lbfgs", max_steps=400, **AUTOGRAD)
    assert result.metrics["residual"] < 1e-6, result.summary()
    assert result.metrics["residual"] == pytest.approx(result.metrics["fit"])
    assert math.isnan(result.metrics["error"])
    assert json.loads(json.dumps(result.to_dict()))["metrics"]["error"] is None
    with pytest.raises(InputError, match="no closed form for hops=2"):
        problem.reference()


def test_seed_scenario_with_two_hops() -> None:
    problem = SparseProblem.example(hops=2)
    result = gdla.solve(problem, optimizer="lbfgs", max_steps=300, **AUTOGRAD)
    S = result.solution
    torch.testing.assert_close(S @ S @ problem.X, problem.Y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [3, 12, 30])
def test_random_examples_are_exact_and_solved(dtype: torch.dtype, size: int) -> None:
    problem = SparseProblem.example(size, dtype=dtype)
    assert problem.dtype == dtype and problem.omega.dtype == dtype
    assert bool((problem.omega.sum(dim=1) >= 1).all())
    if size >= 12:
        assert 0.3 < float(problem.omega.mean()) < 0.7
    reference = problem.reference()
    assert float(problem.fit_residual({"U": reference - problem.init})) < (1e-10 if dtype == torch.float64 else 1e-4)
    result = gdla.solve(problem, optimizer="lbfgs", max_steps=300, **AUTOGRAD)
    # the seed's loss ‖Y − Ŷ‖_F has a kink at an exact fit, so a run may stall just above tol
    assert result.stop_reason in ("converged", "stalled"), result.summary()
    assert result.metrics["error"] < (1e-7 if dtype == torch.float64 else 1e-3)


def test_from_matrix_learns_the_masked_operator() -> None:
    target = torch.randn(5, 5, dtype=torch.float64)
    omega = torch.eye(5, dtype=torch.bool) | torch.diag(torch.ones(4, dtype=torch.bool), 1)
    problem = SparseProblem.from_matrix(target, omega=omega)
    expected = torch.where(omega, target, torch.zeros_like(target))
    torch.testing.assert_close(problem.reference(), expected)


@pytest.mark.skipif(
    not gdla.extension_status()[0], reason=f"compiled extension unavailable: {gdla.extension_status()[1]}"
)
@pytest.mark.parametrize("hops, activation", [(1, None), (2, "tanh")])
def test_fused_path_matches_autograd(hops: int, activation: str | None) -> None:
    problem = random_problem(6, 4, hops=hops, activation=activation)
    params = {"U": torch.randn(6, 6, dtype=torch.float64)}
    loss, grads = problem.loss_and_grad(params, "autograd")
    fused_loss, fused_grads = problem.loss_and_grad(params, "fused")
    torch.testing.assert_close(fused_loss, loss)
    torch.testing.assert_close(fused_grads["U"], grads["U"])
    result = gdla.solve(SparseProblem.example(8), optimizer="lbfgs", backend="fused", max_steps=300)
    assert result.backend == "fused" and result.metrics["error"] < 1e-7


def test_fused_path_builds_the_operator_with_masked_hadamard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plumbing, without the compiled extension: a stand-in ``gdla.ops`` records its calls."""
    calls: list[tuple[torch.Tensor, ...]] = []

    def masked_hadamard(init: torch.Tensor, omega: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        calls.append((init, omega, U))
        return init + omega * U

    stand_in = types.SimpleNamespace(masked_hadamard=masked_hadamard)
    monkeypatch.setitem(sys.modules, "gdla.ops", stand_in)
    monkeypatch.setattr(gdla, "ops", stand_in, raising=False)  # once imported, it is an attribute too
    problem = random_problem(5, 4, hops=2, activation="tanh")
    params = {"U": torch.randn(5, 5, dtype=torch.float64)}
    loss, grads = problem.loss_and_grad(params, "autograd")
    fused_loss, fused_grads = problem.loss_and_grad(params, "fused")
    assert len(calls) == 1 and calls[0][0] is problem.init and calls[0][1] is problem.omega
    assert calls[0][1].dtype == problem.dtype  # the op takes the mask in the data's dtype
    torch.testing.assert_close(fused_loss, loss)
    torch.testing.assert_close(fused_grads["U"], grads["U"])
    with pytest.raises(InputError, match="backend"):
        problem.loss_and_grad(params, "cuda")


X3 = torch.rand(3, 2, dtype=torch.float64)


@pytest.mark.parametrize(
    "args, kwargs, error, words",
    [
        ((X3, torch.rand(3, 3, dtype=torch.float64)), {}, ShapeError, ["Y", "X", "(3, 2)", "(3, 3)"]),
        ((X3, torch.rand(2, 2, dtype=torch.float64)), {}, ShapeError, ["Y", "X", "(3, 2)", "(2, 2)"]),
        ((X3, X3), {"omega": torch.ones(2, 3)}, ShapeError, ["omega", "(n, n) = (3, 3)", "(2, 3)"]),
        ((X3, X3), {"omega": torch.ones(3)}, ShapeError, ["omega", "(3,)"]),
        ((X3, X3), {"omega": torch.full((3, 3), 0.5)}, InputError, ["omega", "0 and 1", "0.5"]),
        ((X3, X3), {"init": torch.zeros(3, 4, dtype=torch.float64)}, ShapeError, ["init", "(n, n) = (3, 3)", "(3, 4)"]),
        ((X3, X3), {"init": torch.full((3, 3), math.inf)}, InputError, ["init", "NaN/Inf"]),
        ((torch.ones(3, 2, dtype=torch.int64), X3), {}, InputError, ["X", "int64"]),
        ((X3, torch.ones(3, 2, dtype=torch.int32)), {}, InputError, ["Y", "int32"]),
        ((X3, torch.full((3, 2), math.nan, dtype=torch.float64)), {}, InputError, ["Y", "NaN"]),
        ((torch.zeros(3, 0), torch.zeros(3, 0)), {}, ShapeError, ["X", "non-empty"]),
        ((torch.rand(2, 3, 2), torch.rand(2, 3, 2)), {}, ShapeError, ["X", "2-D"]),
        ((X3, X3), {"hops": 0}, InputError, ["hops", ">= 1", "0"]),
        ((X3, X3), {"activation": "gelu"}, InputError, ["activation", "'tanh'", "'gelu'"]),
        ((X3, X3), {"loss": "l1"}, InputError, ["loss", "'frobenius'", "'mse'", "'l1'"]),
    ],
)
def test_bad_input_is_named(args: tuple, kwargs: dict, error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        SparseProblem(*args, **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_wrong_parameter_shape_is_named() -> None:
    problem = SparseProblem.example()
    with pytest.raises(ShapeError, match=r"params\['U'\].*\(3, 3\).*\(2, 2\)"):
        problem.loss({"U": torch.zeros(2, 2, dtype=torch.float64)})


def test_conversion_keeps_every_setting() -> None:
    problem = random_problem(4, 3, hops=2, activation="tanh", loss="mse")
    converted = problem.to(dtype=torch.float32)
    assert converted.dtype == torch.float32 and converted.omega.dtype == torch.float32
    assert (converted.hops, converted.activation, converted.loss_kind) == (2, "tanh", "mse")
    torch.testing.assert_close(converted.Y, problem.Y.float())
    assert problem.to(dtype=torch.float64) is problem


def test_quadratic_only_for_one_linear_hop_with_the_squared_loss() -> None:
    assert SparseProblem.example(loss="mse").quadratic
    assert not SparseProblem.example().quadratic  # ‖Y − Ŷ‖_F is not quadratic
    assert not SparseProblem.example(loss="mse", hops=2).quadratic
    assert not SparseProblem.example(4, loss="mse", activation="tanh").quadratic
    result = gdla.solve(SparseProblem.example(12, loss="mse"), optimizer="cg", max_steps=100, **AUTOGRAD)
    assert result.converged, result.summary()
    assert result.metrics["error"] < 1e-9


# -- the values-only form: Ω a torch sparse tensor --------------------------------------------------
class TestSparseStorageContract(ProblemContract):
    """The contract on the values-only form (U and Init stored on Ω's pattern)."""

    problem_name = "sparse"
    solve_options = {"optimizer": "cg", "max_steps": 300}

    def make_problem(self, dtype: torch.dtype) -> SparseProblem:
        return SparseProblem.example(30, dtype=dtype, storage="sparse", per_row=3, columns=12, loss="mse")


def sparse_pair(n: int = 40, p: int = 6, **options) -> tuple[SparseProblem, SparseProblem]:
    """The same random problem in the values-only form and in the dense form."""
    generator = torch.Generator().manual_seed(3)
    dense_mask = torch.rand(n, n, generator=generator) < 0.2
    dense_mask[torch.arange(n), torch.arange(n)] = True
    omega = dense_mask.double().to_sparse()
    init = (0.1 * torch.randn(n, n, generator=generator, dtype=torch.float64) * dense_mask).to_sparse()
    init = torch.sparse_coo_tensor(
        omega.indices(), init.to_dense()[tuple(omega.indices())], (n, n), check_invariants=True
    )
    X = torch.randn(n, p, generator=generator, dtype=torch.float64)
    Y = torch.randn(n, p, generator=generator, dtype=torch.float64)
    sparse = SparseProblem(X, Y, omega=omega, init=init, **options)
    dense = SparseProblem(X, Y, omega=dense_mask, init=init.to_dense(), **options)
    return sparse, dense


@pytest.mark.parametrize(
    "options",
    [{}, {"loss": "mse"}, {"hops": 2, "activation": "tanh"}, {"hops": 3, "loss": "mse"}],
    ids=["frobenius", "mse", "2-hops-tanh", "3-hops"],
)
def test_values_form_equals_the_dense_form(options: dict) -> None:
    sparse, dense = sparse_pair(**options)
    pattern = sparse.pattern
    assert pattern is not None and sparse.init_params(torch.Generator())["U"].shape == (pattern.nnz,)
    U = 0.3 * torch.randn(pattern.nnz, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    U_dense = torch.zeros(sparse.n, sparse.n, dtype=torch.float64)
    U_dense[pattern.rows, pattern.cols] = U
    loss, grad = sparse.loss_and_grad({"U": U})
    loss_d, grad_d = dense.loss_and_grad({"U": U_dense})
    torch.testing.assert_close(loss, loss_d, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad["U"], grad_d["U"][pattern.rows, pattern.cols], rtol=1e-10, atol=1e-14)
    assert grad_d["U"].count_nonzero() <= pattern.nnz  # the dense gradient lives on the pattern too
    torch.testing.assert_close(sparse.residual({"U": U}), dense.residual({"U": U_dense}), rtol=1e-10, atol=0)
    S = sparse.solution({"U": U})
    assert S.layout == torch.sparse_coo
    torch.testing.assert_close(S.to_dense(), dense.solution({"U": U_dense}), rtol=0, atol=0)


def test_values_form_reference_equals_the_dense_one() -> None:
    sparse, dense = sparse_pair()
    torch.testing.assert_close(sparse.reference().to_dense(), dense.reference(), rtol=1e-9, atol=1e-12)
    params = sparse.reference_params()
    assert params is not None
    assert float(sparse.residual(params)) < 1e-12 and float(sparse.error(params)) == 0.0


def test_values_form_least_squares_capability() -> None:
    sparse, _ = sparse_pair(loss="mse")
    form = sparse.least_squares()
    assert form is not None and form.key == "U"
    g = torch.Generator().manual_seed(4)
    U = torch.randn(sparse.pattern.nnz, generator=g, dtype=torch.float64)
    r = torch.randn(sparse.n, sparse.p, generator=g, dtype=torch.float64)
    torch.testing.assert_close(form.loss_of(form.residual(U)), sparse.loss({"U": U}), rtol=1e-13, atol=0)
    # adjointness ⟨J d, r⟩ = ⟨d, Jᵀ r⟩, and Jᵀ r = ∂loss/∂U · n p / 2 for the mean-squared loss
    torch.testing.assert_close((form.apply(U) * r).sum(), (U * form.adjoint(r)).sum(), rtol=1e-12, atol=0)
    _, grad = sparse.loss_and_grad({"U": U})
    scale = 2 / (sparse.n * sparse.p)
    torch.testing.assert_close(grad["U"], scale * form.adjoint(form.residual(U)), rtol=1e-12, atol=1e-16)


def test_csr_mask_equals_coo_mask() -> None:
    sparse, _ = sparse_pair()
    csr = SparseProblem(sparse.X, sparse.Y, omega=sparse.omega.to_sparse_csr(), init=sparse.init.to_sparse_csr())
    U = torch.linspace(-1, 1, sparse.pattern.nnz, dtype=torch.float64)
    torch.testing.assert_close(csr.loss({"U": U}), sparse.loss({"U": U}), rtol=0, atol=0)


@pytest.mark.parametrize("optimizer", ["auto", "momentum"])
def test_values_form_fits_a_large_operator(optimizer: str) -> None:
    n = 10_000 if optimizer == "auto" else 5_000
    problem = SparseProblem.example(n, storage="sparse", per_row=3, columns=12, loss="mse")
    assert problem.describe()["storage"] == "sparse" and problem.describe()["free_entries"] > 2.9 * n
    options = {"tol": 1e-6, "max_steps": 3000} if optimizer == "auto" else {"tol": 0.0, "max_steps": 30}
    result = gdla.solve(problem, optimizer=optimizer, **options)
    assert result.params["U"].shape == (problem.pattern.nnz,)
    assert result.solution.layout == torch.sparse_coo
    if optimizer == "auto":
        assert result.stop_reason == "converged" and result.metrics["residual"] <= 1e-6
        # the truth is the unique answer (more columns than free entries); error ≲ condition × residual
        assert result.metrics["error"] < 1e-4 and result.metrics["fit"] < 1e-4
    else:  # momentum moves every stored value (update_masks() is empty: all of them are free)
        assert result.losses[-1] < 0.1 * result.losses[0]


def test_values_form_errors() -> None:
    sparse, _ = sparse_pair()
    X, Y, omega = sparse.X, sparse.Y, sparse.omega
    moved = omega.to_dense()  # one free entry of row 0 moved to a column omega does not free
    j, c0 = int((moved[0] == 0).nonzero()[0]), int(omega.indices()[1, 0])
    moved[0, j], moved[0, c0] = 1.0, 0.0
    with pytest.raises(InputError, match=rf"^init: expected a sparse tensor with omega's pattern .* e.g. \(0, {j}\)"):
        SparseProblem(X, Y, omega=omega, init=moved.to_sparse())
    fewer = torch.sparse_coo_tensor(omega.indices()[:, 1:], omega.values()[1:], omega.shape, check_invariants=True)
    with pytest.raises(InputError, match=r"received one with \d+ entries, missing \(0, \d+\) which omega frees"):
        SparseProblem(X, Y, omega=omega, init=fewer)
    with pytest.raises(InputError, match=r"^init: with a sparse omega, expected a torch sparse tensor"):
        SparseProblem(X, Y, omega=omega, init=torch.zeros(sparse.n, sparse.n, dtype=torch.float64))
    with pytest.raises(InputError, match=r"^omega: a sparse init needs a sparse omega"):
        SparseProblem(X, Y, init=sparse.init)
    twos = torch.sparse_coo_tensor(omega.indices(), 2 * omega.values(), omega.shape, check_invariants=True)
    with pytest.raises(InputError, match=r"^omega: expected only 0 and 1 .* received 2.0 at \(0, "):
        SparseProblem(X, Y, omega=twos)
    with pytest.raises(ShapeError, match=r"^omega: expected a sparse matrix of shape \(n, n\) = \(40, 40\)"):
        SparseProblem(X, Y, omega=torch.eye(41, dtype=torch.float64).to_sparse())
    with pytest.raises(ShapeError, match=r"^params\['U'\]: expected the values on omega's pattern, shape \(nnz,\)"):
        sparse.loss({"U": torch.zeros(sparse.n, sparse.n, dtype=torch.float64)})


def test_dense_example_too_big_says_to_store_sparse() -> None:
    from gdla.errors import ResourceError

    with pytest.raises(
        ResourceError, match=r"^size: the dense sparse-problem example of size 10000000 .* storage='sparse'"
    ):
        SparseProblem.example(10_000_000)
    # the sparse form of the same size is estimated in O(n), far below the dense n²
    assert SparseProblem.estimated_bytes(10_000_000, storage="sparse") < 1e-4 * SparseProblem.estimated_bytes(
        10_000_000
    )
