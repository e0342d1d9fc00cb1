"""What the ranks of a distributed solve agree on after every step, and how a fault becomes the same stop everywhere.

A step ends with one *agreement* (two when a callback watches: it sees the agreed loss): an
``all_gather`` of four numbers from every rank, ``[failed, loss, residual, stop]``, from which each
rank computes the same

* loss: the **sum** of the ranks' losses, in rank order (the batched loss is a sum over members),
* residual: the **max** over the ranks (the worst member decides the stop test); a NaN anywhere wins,
* stop: whether any rank's callback asked to stop.

So the stop rules (divergence, tolerance, stall, callback) read the same numbers on every rank and
decide the same stop at the same step. A rank whose step raises (the optimizer, the problem's code,
its callback, even ``KeyboardInterrupt``) still takes part in the agreement the others wait in, with
``failed`` set; the ranks then exchange what failed and every rank raises: the failing rank its own
error, the others a :class:`~gdla.RankError` naming it, its exception's type and message.

A rank that never arrives (dead, gone, stuck elsewhere) cannot be told apart from a slow one but by
waiting: every collective here turns the process group's own failure (gloo raises after the group's
``timeout``, or at once when a peer's connection closes) into a :class:`~gdla.RankError` naming the
rank(s) that did not arrive. With more than two ranks those are found through the group's store: each
rank that reached the failed collective leaves its mark there, and the ranks without one within
:data:`ARRIVAL_GRACE_SECONDS` are named.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from gdla.errors import InputError, RankError

__all__ = [
    "ARRIVAL_GRACE_SECONDS",
    "Agreed",
    "Agreement",
    "SetupFailure",
    "absent_ranks",
    "raise_setup_failures",
    "tell_setup_failure",
]

T = TypeVar("T")

#: How long a rank whose collective failed waits for the others' marks in the store before it names the ranks
#: without one (only with more than two ranks: with two, the one that did not arrive is the other).
ARRIVAL_GRACE_SECONDS = 1.0
#: The longest part of another rank's error message quoted in a :class:`~gdla.RankError`.
QUOTED_CHARACTERS = 500


@dataclass(frozen=True)
class Agreed:
    """The numbers every rank read after a step's agreement: the same on every rank."""

    loss: float
    residual: float
    stop: bool


@dataclass(frozen=True)
class SetupFailure:
    """What a rank whose set-up failed (building the plan, the start, the method) sends to the comparison before
    the run that the other ranks wait in, in place of its problem's or settings' description."""

    rank: int
    text: str


class Agreement:
    """The collectives of one distributed solve: each completes on every rank, or raises on every rank.

    Args:
        group: a ``torch.distributed`` process group; ``None`` for the default one.
        device: where the collectives' tensors live (the current GPU for NCCL, else the CPU).

    Attributes:
        rank, world_size: this process's place in ``group``.
    """

    def __init__(self, group: Any, rank: int, world_size: int, device: torch.device) -> None:
        self.group, self.rank, self.world_size, self.device = group, rank, world_size, device
        self.token = "setup"  # the run's key in the store (rank 0's, set by whoever agrees on one)

    # -- every collective ------------------------------------------------------------------------
    def collective(self, where: str, run: Callable[..., T], *args: Any) -> T:
        """``run(*args, group=self.group)``, a collective of every rank at ``where`` (a phrase: "the agreement after
        step 3"); the group's failure (a timeout, a peer gone) as a :class:`RankError` naming the rank(s) that did
        not arrive."""
        try:
            return run(*args, group=self.group)
        except RankError:
            raise
        except RuntimeError as exc:  # gloo's timeouts and closed connections (DistBackendError is one)
            raise self._lost(where, exc) from exc

    def _lost(self, where: str, exc: RuntimeError) -> RankError:
        said = re.sub(r"^\[[^\]]*\] ", "", " ".join(str(exc).split()))  # gloo's source location first
        said = said.split(". ")[0][:QUOTED_CHARACTERS]  # the first sentence: gloo's advice is not ours
        absent = absent_ranks(_store(self.group), self.token, self.rank, self.world_size, where)
        others = _ranks(absent) if absent else f"the other {self.world_size - 1} ranks (which could not be told)"
        timed_out = re.search(r"[Tt]imed out waiting (\d+) ?ms", said)
        if timed_out:
            seconds = int(timed_out[1]) / 1000
            received = f"nothing from {others} within the process group's timeout ({seconds:g} s): it stopped, "
            received += "crashed or is stuck elsewhere"
        elif "timeout" in said.lower():
            received = f"nothing from {others}: an earlier collective timed out, which closed the connections"
        else:
            received = f"no answer from {others}: the connection closed (it exited, crashed or gave up waiting)"
        return RankError(
            f"distributed: rank {self.rank} expected every rank at {where}, received {received} (gloo: {said}). The "
            "process group cannot be used after this. A collective waits as long as the group's timeout: set it "
            "with torch.distributed.init_process_group(..., timeout=datetime.timedelta(seconds=N)) (torch's "
            "default: 30 minutes)"
        )

    # -- the run's settings ----------------------------------------------------------------------
    def check_run(self, settings: dict[str, Any]) -> None:
        """Every rank runs the same plan (its stop rules and the collectives a step takes), or an
        :class:`InputError` on every rank naming the settings that differ (a :class:`RankError` where a rank's
        set-up failed: :func:`tell_setup_failure`)."""
        everyone: list[Any] = [None] * self.world_size
        gather = torch_distributed().all_gather_object
        where = "the comparison of the run's settings"
        self.collective(where, gather, everyone, settings)
        raise_setup_failures(everyone, self.rank, where)
        differ = {
            rank: {key: value for key, value in other.items() if everyone[0].get(key) != value}
            for rank, other in enumerate(everyone)
            if other != everyone[0]
        }
        if differ:
            first = {key: everyone[0].get(key) for changes in differ.values() for key in changes}
            shown = "; ".join(f"rank {rank}: {changes}" for rank, changes in differ.items())
            raise InputError(
                f"distributed: expected every rank to run the same solve (optimizer, max_steps, tol, patience, a "
                f"callback or none), received rank 0: {first}; {shown}; pass the same arguments on every rank"
            )

    # -- after every step ------------------------------------------------------------------------
    def agree(self, step: int, *, loss: float = math.nan, residual: float = math.nan, stop: bool = False) -> Agreed:
        """The step's agreement: the ranks' losses summed, the worst residual, any rank's stop.

        Raises:
            RankError: a rank failed in this step (it raises its own error), or a rank did not arrive.
        """
        table = self._exchange(step, [0.0, float(loss), float(residual), 1.0 if stop else 0.0], None)
        residuals = table[:, 2]
        worst = math.nan if bool(torch.isnan(residuals).any()) else float(residuals.max())  # max drops NaN
        return Agreed(loss=sum(table[:, 1].tolist()), residual=worst, stop=bool((table[:, 3] > 0).any()))

    @contextlib.contextmanager
    def guard(self, step: int) -> Iterator[None]:
        """This rank's part of step ``step``: an exception in it is told to the other ranks (in the agreement they
        wait in) before it propagates, so they raise too instead of waiting."""
        try:
            yield
        except BaseException as exc:
            if not isinstance(exc, RankError):  # a RankError: the ranks know, or are gone
                self.tell_failure(step, exc)
            raise

    def tell_failure(self, step: int, error: BaseException) -> None:
        """Take part in the agreement the other ranks wait in, with ``error``; the caller raises it afterwards.

        A failure to tell them (they are gone too) becomes a note on ``error``, which stays the error raised.
        """
        try:
            self._exchange(step, [1.0, math.nan, math.nan, 0.0], error)
        except RankError as exc:
            if hasattr(error, "add_note"):  # Python 3.11 and later; 3.10 raises the error without the note
                error.add_note(f"gdla could not tell the other ranks: {exc}")

    def _exchange(self, step: int, row: list[float], error: BaseException | None) -> torch.Tensor:
        """The ``(world_size, 4)`` table of every rank's row; where a rank failed, what failed, then a raise."""
        dist = torch_distributed()
        mine = torch.tensor(row, dtype=torch.float64, device=self.device)
        pieces = [torch.empty_like(mine) for _ in range(self.world_size)]
        where = f"the agreement after step {step}"
        self.collective(where, dist.all_gather, pieces, mine)
        table = torch.stack(pieces).cpu()
        if not bool((table[:, 0] > 0).any()):
            return table
        said = None if error is None else ": ".join(filter(None, [type(error).__name__, str(error)]))
        said = None if said is None else said[:QUOTED_CHARACTERS]
        failures: list[Any] = [None] * self.world_size
        self.collective(where, dist.all_gather_object, failures, said)
        if error is not None:
            return table  # the failing rank raises its own error
        failed = {rank: text for rank, text in enumerate(failures) if text is not None}
        if len(failed) == 1:
            shown = f"a failure on {_ranks(list(failed))} ({next(iter(failed.values()))})"
            own = "it raises its own error"
        else:
            shown = f"failures on {_ranks(list(failed))} ({'; '.join(f'rank {r}: {t}' for r, t in failed.items())})"
            own = "they raise their own errors"
        raise RankError(
            f"distributed: rank {self.rank} expected every rank to complete step {step}, received {shown}; every "
            f"rank stops there ({own}, the others this one)"
        )


def raise_setup_failures(gathered: list[Any], rank: int, where: str) -> None:
    """A :class:`RankError` on ``rank`` naming the ranks whose set-up failed (what they sent to the comparison
    before the run at ``where`` is a :class:`SetupFailure`), if any did."""
    failed = [entry for entry in gathered if isinstance(entry, SetupFailure)]
    if not failed:
        return
    shown = "; ".join(f"rank {entry.rank}: {entry.text}" for entry in failed)
    raise RankError(
        f"distributed: rank {rank} expected every rank to be ready to run at {where}, received a failed set-up on "
        f"{_ranks([entry.rank for entry in failed])} ({shown}); no rank runs (each raises its own error, the "
        "others this one)"
    )


def tell_setup_failure(error: BaseException, group: Any = None) -> None:
    """Tell the other ranks that this rank's set-up failed with ``error``, before the run's first agreement.

    They wait in one of the comparisons before the run (of the problems, when this rank failed before its
    :class:`~gdla.distributed.Sharding` was built; of the run's settings, after); both are an
    ``all_gather_object``, so this rank joins whichever it is with a :class:`SetupFailure`, and they raise a
    :class:`RankError` naming it at once instead of waiting for the group's timeout. Nothing to tell without an
    initialised process group, or after a :class:`RankError` (the ranks know, or are gone); a failure to tell
    them becomes a note on ``error``, the error raised.
    """
    import torch.distributed as dist

    if isinstance(error, RankError) or not dist.is_available() or not dist.is_initialized():
        return
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    text = ": ".join(filter(None, [type(error).__name__, str(error)]))[:QUOTED_CHARACTERS]
    gathered: list[Any] = [None] * world_size
    try:
        agreement = Agreement(group, rank, world_size, torch.device("cpu"))
        failure = SetupFailure(rank, text)
        agreement.collective("the comparison before the run", dist.all_gather_object, gathered, failure)
    except RankError as exc:
        if hasattr(error, "add_note"):
            error.add_note(f"gdla could not tell the other ranks: {exc}")


def absent_ranks(store: Any, token: str, rank: int, world_size: int, where: str) -> list[int]:
    """The ranks that did not reach the collective at ``where`` that failed on ``rank``.

    With two ranks, the other one. With more, every rank that reached it leaves a mark in ``store``
    (the process group's, which outlives its collectives) and the ranks without one after
    :data:`ARRIVAL_GRACE_SECONDS` are named; an empty list where the store cannot tell.
    """
    others = [r for r in range(world_size) if r != rank]
    if world_size == 2:
        return others
    if store is None:
        return []
    try:
        store.set(f"gdla/arrived/{token}/{rank}", where)
        deadline = time.monotonic() + ARRIVAL_GRACE_SECONDS
        while True:
            absent = [r for r in others if not store.check([f"gdla/arrived/{token}/{r}"])]
            if not absent or time.monotonic() > deadline:
                return absent
            time.sleep(0.02)
    except Exception:  # the store's host is gone too
        return []


def _ranks(ranks: list[int]) -> str:
    """``"rank 1"`` or ``"ranks 1, 2"``."""
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


def _store(group: Any) -> Any:
    """The default group's store (it outlives a failed collective), or ``None`` for another group."""
    if group is not None:
        return None
    try:
        return torch_distributed().distributed_c10d._get_default_store()
    except Exception:
        return None


def torch_distributed() -> Any:
    """``torch.distributed`` with an initialised default process group, or an :class:`InputError` saying how."""
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError("distributed: expected a PyTorch build with torch.distributed, received one without it")
    if not dist.is_initialized():
        raise InputError(
            "distributed: expected an initialised torch.distributed process group, received none; call "
            "torch.distributed.init_process_group() first (under torchrun: init_process_group('gloo') on CPU, "
            "'nccl' on GPU), or start the command line with torchrun --nproc-per-node N -m gdla ... --distributed"
        )
    return dist
