"""gdla.mesh: an ``inverse`` problem whose matrix is a DTensor is solved on its mesh, as one process would.

Two ranks are started once (``torchrun --standalone --nproc-per-node 2``, gloo) for the whole module:
the worker solves n = 96 row-sharded (``Shard(0)``) and replicated matrices with Newton-Schulz, sgd
and auto, tries the inputs that must be refused, and saves what each rank saw; the tests compare it
with the one-process solve. The checks of a single rank run in this process on a one-rank group.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from typing import Any

import pytest
import torch
import torch.distributed as dist

import gdla
from gdla.backend import resolve_backend
from gdla.distributed import Sharding
from gdla.errors import InputError, ShapeError
from gdla.mesh import distribute_like, full_tensor, identity_like, is_dtensor, mesh_summary
from gdla_plugins.optimizers.newton_schulz import NewtonSchulz
from gdla_plugins.problems.inverse import InverseProblem

N = 96  # the size is not what is tested: the placements, the agreement and the answers are
SEED = 3
RUNS: dict[str, dict[str, Any]] = {
    "newton-schulz": {"optimizer": "newton-schulz"},
    "sgd": {"optimizer": "sgd", "max_steps": 25, "tol": 0.0},  # default lr: 1/L from the gathered A
    "auto": {"optimizer": "auto"},
}

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
    import gdla
    from gdla.errors import InputError
    from gdla_plugins.problems.inverse import InverseProblem

    out, runs, n, seed = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    A = InverseProblem.well_conditioned(n, seed=seed).A
    saved = {}

    def seen(step, loss, params):  # the iterate as the optimizer holds it, at the first step
        M = params["M"]
        if step == 1:
            saved.setdefault("iterates", []).append(
                (type(M).__name__, [repr(p) for p in getattr(M, "placements", [])], tuple(M.to_local().shape))
            )

    for name, options in runs.items():
        result = gdla.solve(InverseProblem(distribute_tensor(A, mesh, [Shard(0)])), seed=5, callback=seen, **options)
        saved[name] = result
    saved["replicate"] = gdla.solve(InverseProblem(distribute_tensor(A, mesh, [Replicate()])), **runs["newton-schulz"])
    small = A[:7, :7].clone()  # 7 rows on 2 ranks: 4 + 3
    saved["uneven"] = gdla.solve(InverseProblem(distribute_tensor(small, mesh, [Shard(0)])), **runs["newton-schulz"])
    for key, (matrix, options, method) in small_cases().items():  # the left side; cg's adjoint products
        spread = distribute_tensor(matrix, mesh, [Shard(0)])
        saved[key] = gdla.solve(InverseProblem(spread, **options), optimizer=method, seed=2)

    def refused(build):
        try:
            build()
        except InputError as exc:
            return str(exc)
        return None

    local = torch.eye(4 + rank, 4, dtype=torch.float64)  # rank 0 says 8 x 4, rank 1 says 9 x 4
    saved["errors"] = {
        "column_sharded": refused(lambda: InverseProblem(distribute_tensor(A[:8, :8], mesh, [Shard(1)]))),
        "disagree": refused(lambda: InverseProblem(
            DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=(8 + rank, 4), stride=(4, 1))
        )),
        "distributed_flag": refused(lambda: gdla.solve(
            InverseProblem(distribute_tensor(A[:8, :8], mesh, [Shard(0)])), distributed=True
        )),
    }
    torch.save(saved, f"{out}/rank{rank}.pt")
    dist.barrier()  # no rank tears the group down while another still talks
    dist.destroy_process_group()
    """
)


def small_cases() -> dict[str, tuple[torch.Tensor, dict[str, Any], str]]:
    """Small matrices for the left side (X is 5 × 9: rows 3 + 2) and cg's adjoint on a rank-deficient A.

    The worker gets this function's source, so both processes build the same matrices.
    """
    g = torch.Generator().manual_seed(0)
    tall = torch.randn(9, 5, generator=g, dtype=torch.float64)
    low = torch.randn(6, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 6, generator=g, dtype=torch.float64)
    return {"tall": (tall, {}, "newton-schulz"), "pseudo": (low, {"pseudo": True}, "cg")}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, torchrun: Any) -> list[dict[str, Any]]:
    """What each of the 2 ranks saw (one torchrun launch for the module)."""
    folder = tmp_path_factory.mktemp("dtensor")
    header = "from __future__ import annotations\nfrom typing import Any\nimport torch\n\n"
    (folder / "worker.py").write_text(header + inspect.getsource(small_cases) + WORKER)
    done = torchrun("worker.py", str(folder), json.dumps(RUNS), str(N), str(SEED), cwd=folder)
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def single() -> dict[str, gdla.Result]:
    """The one-process solves of the same matrix (auto runs Newton-Schulz: the same run)."""
    A = InverseProblem.well_conditioned(N, seed=SEED).A
    runs = {name: gdla.solve(InverseProblem(A), seed=5, **RUNS[name]) for name in ("newton-schulz", "sgd")}
    return runs | {"auto": runs["newton-schulz"]}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b))


def _assert_same_run(got: gdla.Result, single: gdla.Result) -> None:
    assert isinstance(got.solution, torch.Tensor) and not is_dtensor(got.solution)  # the full inverse, plain
    assert got.solution.shape == single.solution.shape
    assert (got.steps, got.stop_reason) == (single.steps, single.stop_reason)
    assert _relative(got.solution, single.solution) <= 1e-10
    torch.testing.assert_close(torch.tensor(got.losses[:-1]), torch.tensor(single.losses[:-1]), rtol=1e-10, atol=0)
    # the loss at the answer: rounding-level at convergence, summed in another order over the mesh
    assert got.losses[-1] == pytest.approx(single.losses[-1], rel=1e-10, abs=1e-12 * single.losses[0])
    assert got.metrics["residual"] == pytest.approx(single.metrics["residual"], rel=1e-6, abs=1e-13)


@pytest.mark.parametrize("name", list(RUNS))
def test_row_sharded_solve_equals_one_process(
    ranks: list[dict[str, Any]], single: dict[str, gdla.Result], name: str
) -> None:
    for saved in ranks:
        _assert_same_run(saved[name], single[name])
    if name != "sgd":
        assert single[name].stop_reason == "converged"
        reference = torch.linalg.inv(InverseProblem.well_conditioned(N, seed=SEED).A)
        assert _relative(ranks[0][name].solution, reference) <= 1e-9


def test_auto_picks_newton_schulz_on_the_mesh(ranks: list[dict[str, Any]]) -> None:
    for saved in ranks:
        result = saved["auto"]
        assert result.settings["optimizer.method"] == "newton-schulz"
        assert result.backend == "autograd"


def test_every_rank_returns_the_same_result(ranks: list[dict[str, Any]]) -> None:
    for name in [*RUNS, "replicate", "uneven"]:
        first, second = ranks[0][name], ranks[1][name]
        assert torch.equal(first.solution, second.solution), name
        assert first.losses == second.losses and first.metrics == second.metrics, name
        assert (first.steps, first.stop_reason) == (second.steps, second.stop_reason), name


def test_the_iterate_is_a_row_sharded_dtensor(ranks: list[dict[str, Any]]) -> None:
    for rank, saved in enumerate(ranks):
        # one entry per run of RUNS: the iterate lives on the mesh, each rank holding its N // 2 rows
        assert saved["iterates"] == [("DTensor", ["Shard(dim=0)"], (N // 2, N))] * len(RUNS), rank


def test_replicated_and_unevenly_sharded_matrices(
    ranks: list[dict[str, Any]], single: dict[str, gdla.Result]
) -> None:
    _assert_same_run(ranks[0]["replicate"], single["newton-schulz"])  # the seed does not matter to it
    small = InverseProblem.well_conditioned(N, seed=SEED).A[:7, :7].clone()
    _assert_same_run(ranks[1]["uneven"], gdla.solve(InverseProblem(small), **RUNS["newton-schulz"]))


@pytest.mark.parametrize("key", ["tall", "pseudo"])
def test_left_side_and_pseudo_inverse_on_the_mesh(ranks: list[dict[str, Any]], key: str) -> None:
    matrix, options, method = small_cases()[key]
    single = gdla.solve(InverseProblem(matrix, **options), optimizer=method, seed=2)
    assert single.stop_reason == "converged"
    for saved in ranks:
        _assert_same_run(saved[key], single)


def test_bad_dtensors_are_refused_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for saved in ranks:
        errors = saved["errors"]
        assert errors["column_sharded"] == (
            "A: expected a DTensor with placement Shard(0) (rows split over the ranks) or Replicate(), received "
            "Shard(dim=1); redistribute it first: A.redistribute(mesh, [Shard(0)])"
        )
        message = errors["disagree"]
        assert message is not None and message.startswith("A: expected every rank to hold the same DTensor")
        assert "ranks 0 and 1" in message and "[8, 4]" in message and "[9, 4]" in message
        message = errors["distributed_flag"]
        assert message is not None and message.startswith("distributed: expected a problem on plain tensors")
        assert "Shard(dim=0) on a 1-D cpu mesh of 2 ranks" in message and "distributed=False" in message


# -- one process: a one-rank group ----------------------------------------------------------
@pytest.fixture
def mesh() -> Any:
    """A 1-D DeviceMesh over a one-rank gloo group in this process (in-memory store)."""
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _matrix(n: int = 6) -> torch.Tensor:
    return InverseProblem.well_conditioned(n, seed=1).A


def test_column_sharded_and_partial_placements_are_input_errors(mesh: Any) -> None:
    from torch.distributed.tensor import DTensor, Partial, Shard, distribute_tensor

    expected = r"^A: expected a DTensor with placement Shard\(0\) .* received Shard\(dim=1\)"
    with pytest.raises(InputError, match=expected):
        InverseProblem(distribute_tensor(_matrix(), mesh, [Shard(1)]))
    partial = DTensor.from_local(_matrix(), mesh, [Partial()])
    with pytest.raises(InputError, match=r"received Partial\(sum\); redistribute it first"):
        InverseProblem(partial)


def test_two_dimensional_mesh_and_batched_dtensor_are_refused(mesh: Any) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    square = init_device_mesh("cpu", (1, 1))
    with pytest.raises(InputError, match=r"^A: expected a DTensor on a 1-D DeviceMesh, received one on a 2-D mesh"):
        InverseProblem(distribute_tensor(_matrix(), square, [Shard(0), Replicate()]))
    batch = torch.stack([_matrix(), _matrix()])
    with pytest.raises(ShapeError, match=r"^A: expected a 2-D DTensor .* received shape \(2, 6, 6\)"):
        InverseProblem(distribute_tensor(batch, mesh, [Shard(0)]))


def test_side_both_is_refused_for_a_dtensor(mesh: Any) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    with pytest.raises(InputError, match=r"^side: expected 'right' or 'left' for A given as a DTensor, received"):
        InverseProblem(distribute_tensor(_matrix(), mesh, [Shard(0)]), side="both")


def test_local_pieces_that_do_not_make_up_the_shape_are_refused(mesh: Any) -> None:
    from torch.distributed.tensor import DTensor, Shard

    wrong = DTensor.from_local(_matrix(4), mesh, [Shard(0)], run_check=False, shape=(5, 4), stride=(4, 1))
    with pytest.raises(InputError, match=r"^A: expected local pieces of shapes \[\(5, 4\)\] .* received \[\(4, 4\)\]"):
        InverseProblem(wrong)


def test_a_non_finite_dtensor_is_refused_like_a_tensor(mesh: Any) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    A = _matrix()
    A[2, 3] = float("nan")
    with pytest.raises(InputError, match=r"^A: expected finite entries, received 1 NaN/Inf entry"):
        InverseProblem(distribute_tensor(A, mesh, [Shard(0)]))


def test_dtensor_problem_skips_the_fused_backend(mesh: Any) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    problem = InverseProblem(distribute_tensor(_matrix(4), mesh, [Shard(0)]))
    assert problem.fused_reason() == (
        "problem 'inverse' holds A as a DTensor (Shard(dim=0) on a 1-D cpu mesh of 1 ranks): its products run as "
        "DTensor ops on the mesh, and the fused kernels take plain tensors"
    )
    assert problem.fused_loss() is None
    assert NewtonSchulz.fused_reason(problem, {}) == (
        "'newton-schulz' runs DTensor products on the mesh; its fused kernel takes plain tensors"
    )
    assert resolve_backend("auto", problem, NewtonSchulz, {}) == "autograd"
    assert InverseProblem(_matrix(4)).fused_reason() is None  # a plain 4×4 keeps its fused path


def test_one_rank_mesh_solve_gives_the_plain_answer(mesh: Any) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    A = _matrix(16)
    got = gdla.solve(InverseProblem(distribute_tensor(A, mesh, [Shard(0)])), optimizer="newton-schulz")
    single = gdla.solve(InverseProblem(A), optimizer="newton-schulz", backend="autograd")
    _assert_same_run(got, single)
    assert got.stop_reason == "converged"
    described = InverseProblem(distribute_tensor(A, mesh, [Shard(0)])).describe()
    assert described["mesh"] == "Shard(dim=0) on a 1-D cpu mesh of 1 ranks"
    assert "mesh" not in InverseProblem(A).describe()


def test_sharding_refuses_a_dtensor_problem(mesh: Any) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    with pytest.raises(InputError, match=r"^distributed: expected a problem on plain tensors to shard"):
        Sharding(InverseProblem(distribute_tensor(_matrix(), mesh, [Shard(0)])))


def test_mesh_helpers_on_plain_and_distributed_tensors(mesh: Any) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    plain = _matrix(4)
    assert not is_dtensor(plain) and full_tensor(plain) is plain and mesh_summary(plain) is None
    assert distribute_like(plain, plain) is plain
    torch.testing.assert_close(identity_like(plain, 3), torch.eye(3, dtype=torch.float64), rtol=0, atol=0)
    spread = distribute_tensor(plain, mesh, [Shard(0)])
    placed = distribute_like(plain * 2, spread)
    assert is_dtensor(placed) and placed.placements == spread.placements
    torch.testing.assert_close(full_tensor(placed), plain * 2, rtol=0, atol=0)
    eye = identity_like(spread, 4)
    assert is_dtensor(eye)
    torch.testing.assert_close(full_tensor(eye), torch.eye(4, dtype=torch.float64), rtol=0, atol=0)
