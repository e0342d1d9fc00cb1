r"""A batched problem split over the ranks of a ``torch.distributed`` process group.

A batched problem is a sum of independent members, :math:`L(M) = \sum_b L_b(M_b)`. Rank ``r`` of
``W`` solves the contiguous members ``start_r:stop_r`` (the first ``B mod W`` ranks take one
extra) and the ranks agree, after every step, on the loss (the sum of the shards'), the residual of
the stop test (the worst shard's) and a callback's stop, and on a failure of any rank
(:mod:`gdla.agreement`): every rank takes the same number of steps and stops for the same reason,
or raises. At the end :meth:`Sharding.gather_params` concatenates the shards' parameters on every
rank, which then computes the metrics of the whole problem: every rank returns the full
:class:`~gdla.Result`.

Equal per member to one process: the local problem's starting point is the slice of the whole
problem's (drawn from the same generator), so optimizers that treat members independently
(Newton-Schulz, cg with independent blocks, momentum, sgd, adam at a given ``lr``) take the same
steps on each member. Methods that couple members through batch-wide scalars (L-BFGS's history
dot products, a line search on the batch loss, a learning rate chosen from the batch's largest
singular value) compute those scalars from the local shard, so their steps differ from one
process; the answer agrees only to the tolerance.

The process group is PyTorch's own (gloo on CPU, NCCL on GPU): start the program with
``torchrun --nproc-per-node N`` and call ``torch.distributed.init_process_group()`` first (the
command line does it for ``--distributed``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

from gdla.agreement import Agreement, raise_setup_failures, torch_distributed
from gdla.errors import InputError
from gdla.mesh import is_dtensor, mesh_summary
from gdla.problem import Params, Problem

__all__ = ["Sharding", "init_from_environment", "is_reporting_rank", "shard_bounds", "shutdown"]


def shard_bounds(batch: int, world: int, rank: int) -> tuple[int, int]:
    """Members ``start:stop`` of rank ``rank``: contiguous, sizes differ by at most one, first ranks larger."""
    quotient, remainder = divmod(batch, world)
    start = rank * quotient + min(rank, remainder)
    return start, start + quotient + (1 if rank < remainder else 0)


class Sharding(Agreement):
    """Splits a batched problem over the ranks of the default process group (or ``group``), whose collectives
    (:class:`~gdla.agreement.Agreement`) complete on every rank or raise on every rank.

    Args:
        problem: a problem whose :meth:`~gdla.Problem.batch_size` is set, the same on every rank.
        group: a ``torch.distributed`` process group; ``None`` for the default one.

    Attributes:
        local: this rank's contiguous shard of the leading batch dimension (never empty).
        start, stop: the members of ``problem`` that ``local`` holds.
        rank, world_size: this process's place in ``group``.

    Raises:
        InputError: no initialised process group, an unbatched problem, a problem whose data is a
            DTensor (it runs on its own mesh), fewer members than ranks, or ranks that disagree on the
            problem's shapes, dtype or data.
        RankError: a rank did not arrive at the comparison within the process group's timeout.
    """

    def __init__(self, problem: Problem, group: Any = None) -> None:
        dist = torch_distributed()
        super().__init__(group, dist.get_rank(group), dist.get_world_size(group), _collective_device(dist, group))
        self.full = problem
        batch = problem.batch_size()
        mesh = next((mesh_summary(v) for v in problem._data().values() if is_dtensor(v)), None)
        if mesh is not None:
            raise InputError(
                f"distributed: expected a problem on plain tensors to shard, received problem {problem.name!r} whose "
                f"data is a DTensor ({mesh}), which runs on its mesh already; solve it with distributed=False"
            )
        if batch is None:
            raise InputError(
                f"distributed: expected a batched problem (one whose batch_size() is set, e.g. 'inverse' with a "
                f"batch of matrices), received the unbatched problem {problem.name!r}; there is nothing to shard"
            )
        self._check_agreement(problem, batch)
        if batch < self.world_size:
            raise InputError(
                f"distributed: expected at least one batch member per rank, received a batch of {batch} "
                f"on {self.world_size} ranks; run with at most {batch} processes"
            )
        self.start, self.stop = shard_bounds(batch, self.world_size, self.rank)
        self._counts = [b - a for a, b in (shard_bounds(batch, self.world_size, r) for r in range(self.world_size))]
        local = problem.batch_slice(self.start, self.stop)
        # the shard starts where the whole problem would: its slice of the full starting point (a random start
        # drawn for the shard alone would use the generator's numbers of the first members)
        start, stop = self.start, self.stop

        def init_params(generator: torch.Generator) -> Params:
            return {key: value[start:stop].clone() for key, value in problem.init_params(generator).items()}

        local.init_params = init_params  # type: ignore[method-assign]
        self.local: Problem = local

    # -- agreement -----------------------------------------------------------------------------
    def _check_agreement(self, problem: Problem, batch: int) -> None:
        """All ranks hold the same problem: name, batch size, dtype, parameter shapes and a digest of the data; the
        ranks take rank 0's token as the run's key in the store."""
        # the shapes of one member's parameters (cheap), not of the whole batch's
        params = problem.batch_slice(0, 1).init_params(torch.Generator().manual_seed(0))
        signature = {
            "problem": problem.name,
            "batch": batch,
            "dtype": str(problem.dtype).removeprefix("torch."),
            "params": {key: [batch, *value.shape[1:]] for key, value in sorted(params.items())},
            "data": data_digest(problem),
        }
        gathered: list[Any] = [None] * self.world_size
        mine = (signature, os.urandom(8).hex())
        where = "the comparison of the problems before the run"
        self.collective(where, torch_distributed().all_gather_object, gathered, mine)
        raise_setup_failures(gathered, self.rank, where)  # a rank whose set-up failed before its Sharding was built
        everyone = [other for other, _ in gathered]
        self.token = gathered[0][1]
        if all(other == everyone[0] for other in everyone):
            return
        differ = [r for r, other in enumerate(everyone) if other != everyone[0]]
        shown = "; ".join(f"rank {r}: {everyone[r]}" for r in [0, *differ])
        raise InputError(
            f"distributed: expected every rank to hold the same problem (shapes, dtype and data), received "
            f"different ones on ranks "
            f"0 and {', '.join(map(str, differ))} ({shown}); build the same problem on every rank"
        )

    def gather_params(self, params: Params) -> Params:
        """The full batch's parameters on every rank: the shards concatenated along dim 0, in rank order."""
        dist = torch_distributed()
        largest = max(self._counts)
        out: Params = {}
        for key in sorted(params):  # the same order on every rank: the collectives pair up
            value = params[key].detach().contiguous()
            home = value.device
            moved = value.to(self.device)
            # all_gather wants equal sizes: pad each shard to the largest and trim after
            padded = torch.zeros((largest, *moved.shape[1:]), dtype=moved.dtype, device=self.device)
            padded[: moved.shape[0]] = moved
            pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
            self.collective("the gathering of the answer", dist.all_gather, pieces, padded)
            out[key] = torch.cat([piece[:count] for piece, count in zip(pieces, self._counts, strict=True)]).to(home)
        return out


def data_digest(problem: Problem) -> str:
    """A digest of the bytes of every floating tensor the problem holds (ranks that built different data of the
    same shape disagree here, and are refused before the run instead of each solving its own matrices)."""
    digest = hashlib.blake2b(digest_size=16)
    for key, value in sorted(problem._data().items()):
        tensor = value.detach()
        if tensor.is_sparse:
            tensor = tensor.coalesce()
            parts = (tensor.indices(), tensor.values())
        else:
            parts = (tensor,)
        digest.update(key.encode())
        for part in parts:
            digest.update(part.cpu().resolve_conj().resolve_neg().numpy().tobytes())  # numpy copies to C order
    return digest.hexdigest()


def _collective_device(dist: Any, group: Any) -> torch.device:
    """Where the collectives' tensors must live: the current GPU for NCCL, the CPU otherwise."""
    if str(dist.get_backend(group)).lower() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_from_environment(device: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment, unless one already is.

    Args:
        device: the run's device; a CUDA device selects NCCL (and this rank's GPU, ``LOCAL_RANK``),
            anything else gloo.

    Returns:
        Whether this call created the group (the caller then destroys it when done).

    Raises:
        InputError: not started by torchrun (no ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` in the environment).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing or not dist.is_available():
        raise InputError(
            f"--distributed: expected to be started by torchrun (environment variables RANK, WORLD_SIZE, MASTER_ADDR "
            f"and MASTER_PORT), received an environment without {', '.join(missing)}; run "
            "torchrun --nproc-per-node N -m gdla solve ... --distributed"
        )
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    import atexit

    atexit.register(shutdown)  # a clean shutdown: NCCL warns about a group left alive
    return True


def shutdown() -> None:
    """Wait for every rank, then destroy the default group (a rank leaving early aborts gloo's peers).

    After a failed collective (a rank gone or timed out) there is nothing to wait for: the group is destroyed
    all the same, which also spares the process gloo's abort at exit.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:
            pass
        finally:
            dist.destroy_process_group()


def is_reporting_rank() -> bool:
    """Whether this process prints results: rank 0 of the default group, or any process outside one."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
