"""gdla.distributed: a batched problem sharded over 2 gloo ranks equals the one-process solve.

Two ranks are started once (``torchrun --standalone --nproc-per-node 2``) for the whole module: the
worker runs every scenario and saves what each rank saw; the tests compare it with one process.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import gdla
from gdla.distributed import Sharding, shard_bounds
from gdla.errors import InputError
from gdla_plugins.problems.inverse import InverseProblem

BATCH = 5  # uneven over 2 ranks: 3 + 2
RUNS: dict[str, dict[str, Any]] = {
    "newton-schulz": {"max_steps": 60},
    "momentum": {"lr": 0.5, "max_steps": 80, "tol": 0.0},
    "sgd": {"lr": 0.5, "max_steps": 40, "tol": 0.0},
    "adam": {"lr": 0.01, "max_steps": 40, "tol": 0.0},
    "cg": {"max_steps": 30},
}

WORKER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    import torch, torch.distributed as dist
    import gdla
    from gdla.cli import main
    from gdla.distributed import Sharding
    from gdla.errors import InputError
    from gdla_plugins.problems.inverse import InverseProblem

    out, runs, batch = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    saved = {}

    def matrices(b):
        g = torch.Generator().manual_seed(11)
        return torch.eye(4, dtype=torch.float64) + 0.3 * torch.randn(b, 4, 4, generator=g, dtype=torch.float64)

    sharding = Sharding(InverseProblem(matrices(batch)))
    saved["bounds"] = (sharding.start, sharding.stop)
    saved["local_A"] = sharding.local.A
    saved["loss_sum"] = sharding.agree(1, loss=float(rank + 1)).loss
    saved["residual_max"] = sharding.agree(2, residual=float(10 * rank + 1)).residual
    saved["residual_nan"] = sharding.agree(3, residual=float("nan") if rank == 1 else 1.0).residual
    saved["stop_any"] = [sharding.agree(4, stop=rank == 1).stop, sharding.agree(5, stop=False).stop]
    saved["gathered"] = sharding.gather_params({"M": torch.full((sharding.stop - sharding.start, 2), float(rank))})
    for name, options in runs.items():
        result = gdla.solve(InverseProblem(matrices(batch)), optimizer=name, distributed=True, seed=5, **options)
        saved[name] = (result.losses, result.params["M"], result.steps, result.stop_reason, result.metrics)
    stop_on_rank_0 = lambda step, loss, params: rank == 0 and step == 3
    result = gdla.solve(InverseProblem(matrices(batch)), optimizer="momentum", lr=0.5, max_steps=50, tol=0,
                        distributed=True, callback=stop_on_rank_0)
    saved["one_rank_stops"] = (result.steps, result.stop_reason)
    for key, problem in [
        ("mismatch", lambda: InverseProblem(matrices(batch + rank))),
        ("other_data", lambda: InverseProblem(matrices(batch) + 0.01 * rank)),
        ("too_few", lambda: InverseProblem(matrices(1))),
    ]:
        try:
            Sharding(problem())
            saved[key] = None
        except InputError as exc:
            saved[key] = str(exc)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = main(["solve", "inverse", "-p", "batch=6", "--optimizer", "newton-schulz", "--json", "--distributed"])
    saved["cli"] = (code, text.getvalue())
    torch.save(saved, f"{out}/rank{rank}.pt")
    dist.barrier()  # no rank tears the group down while another still talks
    dist.destroy_process_group()
    """
)


def _matrices(batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.eye(4, dtype=torch.float64) + 0.3 * torch.randn(batch, 4, 4, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, torchrun: Any) -> list[dict[str, Any]]:
    """What each of the 2 ranks saw (one torchrun launch for the module)."""
    folder = tmp_path_factory.mktemp("distributed")
    (folder / "worker.py").write_text(WORKER)
    done = torchrun("worker.py", str(folder), json.dumps(RUNS), str(BATCH), cwd=folder)
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_shards_are_contiguous_and_cover_the_batch(ranks: list[dict[str, Any]]) -> None:
    A = _matrices(BATCH)
    assert [saved["bounds"] for saved in ranks] == [(0, 3), (3, 5)]
    for saved in ranks:
        start, stop = saved["bounds"]
        torch.testing.assert_close(saved["local_A"], A[start:stop], rtol=0, atol=0)


def test_agreements_sum_the_loss_take_the_worst_residual_and_any_stop(ranks: list[dict[str, Any]]) -> None:
    for saved in ranks:
        assert saved["loss_sum"] == 1.0 + 2.0
        assert saved["residual_max"] == 11.0
        assert math.isnan(saved["residual_nan"])  # one rank's NaN stops every rank
        assert saved["stop_any"] == [True, False]  # one rank's callback stop stops every rank


def test_gather_params_concatenates_in_rank_order_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0])[:, None].expand(BATCH, 2)
    for saved in ranks:
        torch.testing.assert_close(saved["gathered"]["M"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(RUNS))
def test_distributed_solve_equals_one_process(ranks: list[dict[str, Any]], name: str) -> None:
    single = gdla.solve(InverseProblem(_matrices(BATCH)), optimizer=name, seed=5, **RUNS[name])
    for saved in ranks:
        losses, M, steps, stop, metrics = saved[name]
        assert (steps, stop) == (single.steps, single.stop_reason)
        # the loss is a sum over members: only its summation order differs from one process; at a converged answer
        # the loss is rounding itself (1e-31), computed in one process by the whole-run kernel, so the floor is
        # rounding relative to the first loss
        floor = 1e-14 * single.losses[0]
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(single.losses), rtol=1e-12, atol=floor)
        torch.testing.assert_close(M, single.params["M"], rtol=1e-12, atol=1e-14)
        assert metrics["residual"] == pytest.approx(single.metrics["residual"], rel=1e-9, abs=1e-15)
    reference = torch.linalg.inv(_matrices(BATCH))
    if single.stop_reason == "converged":
        torch.testing.assert_close(ranks[0][name][1], reference, rtol=1e-8, atol=1e-8)


def test_ranks_that_disagree_on_shapes_are_refused(ranks: list[dict[str, Any]]) -> None:
    for saved in ranks:
        message = saved["mismatch"]
        assert message is not None and message.startswith("distributed: expected every rank to hold the same")
        assert "ranks 0 and 1" in message and "'batch': 5" in message and "'batch': 6" in message


def test_a_stop_asked_by_one_rank_stops_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert [rank["one_rank_stops"] for rank in ranks] == [(3, "callback"), (3, "callback")]


def test_ranks_with_different_data_of_the_same_shape_are_refused(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        assert rank["other_data"] is not None and "same problem" in rank["other_data"], rank["other_data"]


def test_fewer_members_than_ranks_is_refused(ranks: list[dict[str, Any]]) -> None:
    for saved in ranks:
        assert saved["too_few"] == (
            "distributed: expected at least one batch member per rank, received a batch of 1 on 2 ranks; "
            "run with at most 1 processes"
        )


def test_cli_distributed_reports_once_the_one_process_answer(ranks: list[dict[str, Any]], cli: Any) -> None:
    code, out, _ = cli("solve", "inverse", "-p", "batch=6", "--optimizer", "newton-schulz", "--json")
    single = json.loads(out)
    (code0, out0), (code1, out1) = ranks[0]["cli"], ranks[1]["cli"]
    assert (code0, code1) == (0, 0) and out1 == ""  # rank 0 reports, the others stay quiet
    got = json.loads(out0)
    assert got["steps"] == single["steps"] and got["stop_reason"] == single["stop_reason"]
    assert got["metrics"]["residual"] == pytest.approx(single["metrics"]["residual"], rel=1e-9, abs=1e-15)


def test_torchrun_module_command_line(tmp_path: Path, torchrun: Any) -> None:
    done = torchrun(
        "-m",
        "gdla",
        "solve",
        "inverse",
        "-p",
        "batch=4",
        "--size",
        "3",
        "--optimizer",
        "newton-schulz",
        "--distributed",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("inverse with newton-schulz") == 1 and "converged" in done.stdout


# -- without a second process ---------------------------------------------------------------
def test_no_process_group_is_an_input_error() -> None:
    assert not dist.is_initialized()
    with pytest.raises(InputError, match=r"^distributed: expected an initialised torch.distributed process group"):
        Sharding(InverseProblem(_matrices(2)))
    with pytest.raises(InputError, match="init_process_group"):
        gdla.solve(InverseProblem(_matrices(2)), optimizer="newton-schulz", distributed=True)


def test_cli_distributed_outside_torchrun_says_how(cli: Any, error_of: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = cli("solve", "inverse", "-p", "batch=2", "--distributed")
    assert code != 0
    assert "--distributed: expected to be started by torchrun" in error_of(err)


@pytest.fixture
def one_rank() -> Any:
    """A default process group of one rank in this process (gloo, in-memory store)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("one_rank")
def test_unbatched_problem_is_refused() -> None:
    with pytest.raises(InputError, match=r"^distributed: expected a batched problem .* unbatched problem 'inverse'"):
        Sharding(InverseProblem(_matrices(1)[0]))


@pytest.mark.usefixtures("one_rank")
def test_one_rank_shard_is_the_whole_problem_and_starts_where_it_does() -> None:
    problem = InverseProblem(_matrices(3))
    sharding = Sharding(problem)
    assert (sharding.start, sharding.stop) == (0, 3)
    start = sharding.local.init_params(torch.Generator().manual_seed(2))["M"]
    torch.testing.assert_close(start, problem.init_params(torch.Generator().manual_seed(2))["M"], rtol=0, atol=0)


@pytest.mark.parametrize(("batch", "world"), [(5, 2), (7, 3), (4, 4), (1_000_003, 8)])
def test_shard_bounds_partition_the_batch(batch: int, world: int) -> None:
    bounds = [shard_bounds(batch, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == batch
    assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
