"""gdla.agreement: a fault on one of 2 gloo ranks stops every rank alike (or raises on every rank), and none hangs.

Two plain processes (``RANK`` 0 and 1 on a free local port, the environment torchrun would set) run
every scenario of ``distributed_faults_worker.py`` once for the module, with a process-group timeout
of :data:`TIMEOUT` seconds; the launch itself is killed after :data:`LAUNCH_LIMIT` seconds, so a
hang fails the test instead of the suite.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import gdla
from gdla import agreement
from gdla.agreement import Agreement, absent_ranks
from gdla_plugins.problems.inverse import InverseProblem

TIMEOUT = 4.0
LAUNCH_LIMIT = 90.0
WORKER = Path(__file__).with_name("distributed_faults_worker.py")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each rank saw, per scenario: ``{"steps", "stop"}`` or ``{"error", "message", "seconds"}``."""
    folder = tmp_path_factory.mktemp("faults")
    inherited = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {key: value for key, value in os.environ.items() if key not in inherited}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MASTER_ADDR="127.0.0.1", WORLD_SIZE="2")
    env["MASTER_PORT"] = str(_free_port())
    command = [sys.executable, str(WORKER), str(folder), str(TIMEOUT)]
    processes = [
        subprocess.Popen(
            command,
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for rank in range(2)
    ]
    deadline = time.monotonic() + LAUNCH_LIMIT
    try:
        outputs = [process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for process in processes]
    except subprocess.TimeoutExpired:
        for process in processes:
            os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the 2 ranks did not finish within {LAUNCH_LIMIT:g} s: a collective waited past its timeout")
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0 and (folder / f"rank{rank}.json").exists(), f"rank {rank}:\n{output[-4000:]}"
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]


def _matrices() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.eye(4, dtype=torch.float64) + 0.1 * torch.randn(5, 4, 4, generator=g, dtype=torch.float64)


def test_a_step_that_raises_on_one_rank_raises_on_every_rank(
    ranks: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    momentum = gdla.get_optimizer("momentum")
    advance = momentum.advance

    def failing_advance(self: Any, steps: int, tol: float) -> Any:  # the worker's, in one process
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 4:
            raise ValueError("injected failure in advance")
        return advance(self, steps, tol)

    monkeypatch.setattr(momentum, "advance", failing_advance)
    watched = {"callback": lambda step, loss, params: False}  # one step a call of advance, as on a rank
    with pytest.raises(Exception) as alone:
        gdla.solve(InverseProblem(_matrices()), optimizer="momentum", lr=0.5, max_steps=20, tol=0, **watched)
    failing, other = ranks[1]["advance_raises"], ranks[0]["advance_raises"]
    assert (failing["error"], failing["message"]) == (type(alone.value).__name__, str(alone.value))  # its own
    assert other["error"] == "RankError"
    assert other["message"] == (
        "distributed: rank 0 expected every rank to complete step 4, received a failure on rank 1 (ValueError: "
        "injected failure in advance); every rank stops there (it raises its own error, the others this one)"
    )


def test_a_callback_that_raises_on_one_rank_raises_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    failing, other = ranks[0]["callback_raises"], ranks[1]["callback_raises"]
    assert (failing["error"], failing["message"]) == ("RuntimeError", "injected failure in the callback")
    assert other["error"] == "RankError" and "complete step 2, received a failure on rank 0" in other["message"]
    assert "RuntimeError: injected failure in the callback" in other["message"]


def test_ctrl_c_on_one_rank_stops_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert ranks[1]["interrupt"]["error"] == "KeyboardInterrupt"
    assert ranks[0]["interrupt"]["error"] == "RankError"
    assert "step 3, received a failure on rank 1 (KeyboardInterrupt); every rank" in ranks[0]["interrupt"]["message"]


@pytest.mark.filterwarnings("ignore::gdla.ConvergenceWarning")  # it is expected to diverge: that is the point
def test_divergence_of_one_member_stops_every_rank_at_the_same_step(ranks: list[dict[str, Any]]) -> None:
    A = _matrices()
    A[4] *= 10  # the last member, on rank 1 (members 0-2 on rank 0, 3-4 on rank 1)
    options = {"optimizer": "momentum", "lr": 0.5, "max_steps": 60, "tol": 1e-10}
    single = gdla.solve(InverseProblem(A), **options)
    assert single.stop_reason == "diverged"
    assert gdla.solve(InverseProblem(A[:3]), **options).stop_reason == "max_steps"  # rank 0's shard alone: fine
    assert [saved["diverges"] for saved in ranks] == [{"steps": single.steps, "stop": "diverged"}] * 2


def test_the_tolerance_verdict_is_the_worst_shards(ranks: list[dict[str, Any]]) -> None:
    A = _matrices()
    A[3:, :, 3] *= 0.02  # rank 1's members: ill-conditioned, slower
    options = {"optimizer": "newton-schulz", "max_steps": 500, "tol": 1e-8}
    single = gdla.solve(InverseProblem(A), **options)
    alone = gdla.solve(InverseProblem(A[:3]), **options)
    assert single.stop_reason == alone.stop_reason == "converged" and alone.steps < single.steps
    # rank 0 does not stop when its own members have converged: both stop when the last member has
    assert [saved["converges"] for saved in ranks] == [{"steps": single.steps, "stop": "converged"}] * 2


def test_ranks_with_different_settings_are_refused_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for saved in ranks:
        assert saved["settings"]["error"] == "InputError"
        assert saved["settings"]["message"] == (
            "distributed: expected every rank to run the same solve (optimizer, max_steps, tol, patience, a callback "
            "or none), received rank 0: {'tol': 1e-10, 'callback': False}; rank 1: {'tol': 1e-06, 'callback': True}; "
            "pass the same arguments on every rank"
        )


@pytest.mark.parametrize(
    ("scenario", "where", "error"),
    [
        ("setup_fails", "the comparison of the run's settings", "UsageError"),  # after rank 1's Sharding was built
        ("plan_fails", "the comparison of the problems before the run", "InputError"),  # before it (lr < 0)
    ],
)
def test_a_set_up_that_fails_on_one_rank_raises_on_every_rank_at_once(
    ranks: list[dict[str, Any]], scenario: str, where: str, error: str
) -> None:
    failed, waiting = ranks[1][scenario], ranks[0][scenario]
    assert failed["error"] == error
    assert waiting["error"] == "RankError" and waiting["seconds"] < TIMEOUT  # told, not timed out
    assert waiting["message"] == (
        f"distributed: rank 0 expected every rank to be ready to run at {where}, received a failed set-up on rank 1 "
        f"(rank 1: {failed['error']}: {failed['message']}); no rank runs (each raises its own error, the others "
        "this one)"
    )


def test_an_agreed_error_leaves_the_group_usable(ranks: list[dict[str, Any]]) -> None:
    single = gdla.solve(InverseProblem(_matrices()), optimizer="newton-schulz")
    assert [saved["healthy"] for saved in ranks] == [{"steps": single.steps, "stop": "converged"}] * 2


def test_a_rank_that_stalls_is_named_after_the_group_timeout(ranks: list[dict[str, Any]]) -> None:
    waiting = ranks[0]["stalls"]
    assert waiting["error"] == "RankError"
    assert waiting["message"].startswith(
        "distributed: rank 0 expected every rank at the agreement after step 3, received nothing from rank 1 within "
        f"the process group's timeout ({TIMEOUT:g} s): it stopped, crashed or is stuck elsewhere (gloo: Timed out "
        f"waiting {TIMEOUT * 1000:g}ms for"
    )
    assert "init_process_group(..., timeout=datetime.timedelta(seconds=N))" in waiting["message"]
    assert TIMEOUT - 0.5 < waiting["seconds"] < TIMEOUT + 3  # the group's timeout, not forever
    # the stalled rank, back from its callback, finds the connection closed and is told so (no hang either)
    late = ranks[1]["stalls"]
    assert late["error"] == "RankError" and "received no answer from rank 0: the connection closed" in late["message"]


def test_a_rank_that_exits_is_named_at_once(ranks: list[dict[str, Any]]) -> None:
    waiting = ranks[0]["exits"]
    assert waiting["error"] == "RankError"
    assert waiting["message"].startswith(
        "distributed: rank 0 expected every rank at the agreement after step 7, received no answer from rank 1: the "
        "connection closed (it exited, crashed or gave up waiting) (gloo: Connection closed by peer ["
    )
    assert waiting["seconds"] < 3 * TIMEOUT  # that group's timeout: rank 0 knew when the connection closed


# -- without a second process ---------------------------------------------------------------
def test_absent_ranks_are_those_without_a_mark_in_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agreement, "ARRIVAL_GRACE_SECONDS", 0.05)
    store = dist.HashStore()
    store.set("gdla/arrived/run/2", "the agreement after step 3")  # rank 2 reached it too (and timed out)
    assert absent_ranks(store, "run", 0, 4, "the agreement after step 3") == [1, 3]
    assert store.get("gdla/arrived/run/0") == b"the agreement after step 3"  # rank 0 left its own mark
    assert absent_ranks(store, "other-run", 1, 2, "x") == [0]  # two ranks: the other one, without the store
    assert absent_ranks(None, "run", 0, 3, "x") == []  # no store: cannot tell


def test_a_failed_collective_is_a_rank_error_naming_the_absent_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agreement, "ARRIVAL_GRACE_SECONDS", 0.05)
    monkeypatch.setattr(agreement, "_store", lambda group: None)
    ranks = Agreement(None, 0, 3, torch.device("cpu"))

    def timed_out(*args: Any, group: Any) -> None:
        raise RuntimeError("[gloo/unbound_buffer.cc:78] Timed out waiting 2500ms for recv operation to complete")

    with pytest.raises(gdla.RankError) as caught:
        ranks.collective("the gathering of the answer", timed_out)
    assert str(caught.value) == (
        "distributed: rank 0 expected every rank at the gathering of the answer, received nothing from the other 2 "
        "ranks (which could not be told) within the process group's timeout (2.5 s): it stopped, crashed or is stuck "
        "elsewhere (gloo: Timed out waiting 2500ms for recv operation to complete). The process group cannot be used "
        "after this. A collective waits as long as the group's timeout: set it with "
        "torch.distributed.init_process_group(..., timeout=datetime.timedelta(seconds=N)) (torch's default: 30 "
        "minutes)"
    )
    assert isinstance(caught.value, RuntimeError)  # what callers catching torch's own error still catch


def test_failures_on_several_ranks_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [[0.0, 1.0, 0.5, 0.0], [1.0, math.nan, math.nan, 0.0], [1.0, math.nan, math.nan, 0.0]]
    said = [None, "ValueError: bad step", "KeyboardInterrupt"]

    class ThreeRanks:  # rank 0 of 3, in the agreement after step 9, while ranks 1 and 2 failed
        @staticmethod
        def all_gather(pieces: list[torch.Tensor], mine: torch.Tensor, group: Any) -> None:
            for piece, row in zip(pieces, rows, strict=True):
                piece.copy_(torch.tensor(row, dtype=torch.float64))

        @staticmethod
        def all_gather_object(failures: list[Any], mine: Any, group: Any) -> None:
            failures[:] = said

    monkeypatch.setattr(agreement, "torch_distributed", ThreeRanks)
    with pytest.raises(gdla.RankError) as caught:
        Agreement(None, 0, 3, torch.device("cpu")).agree(9, loss=1.0, residual=0.5)
    assert str(caught.value) == (
        "distributed: rank 0 expected every rank to complete step 9, received failures on ranks 1, 2 (rank 1: "
        "ValueError: bad step; rank 2: KeyboardInterrupt); every rank stops there (they raise their own errors, the "
        "others this one)"
    )
