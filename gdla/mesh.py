r"""A problem's matrix as a ``DTensor``: checks and helpers for solving it on its ``DeviceMesh``.

A problem whose data is a :class:`torch.distributed.tensor.DTensor` (rows sharded, ``Shard(0)``, or
``Replicate`` on a 1-D mesh) runs its products as DTensor ops: every rank holds its rows of ``A``
and of the iterate, and ``torch.distributed`` moves what a product needs. The helpers here keep the
rest of gdla ignorant of DTensor:

* :func:`check_mesh_matrix` refuses what the solvers do not handle (other placements, meshes of
  more than one dimension, ranks that disagree on the matrix), before any collective could hang;
* :func:`full_tensor` turns a DTensor (a loss, a norm, an iterate) into the same plain tensor on
  every rank, and leaves plain tensors alone;
* :func:`distribute_like` and :func:`identity_like` put plain data on a matrix's mesh without
  communication (every rank already holds the same full tensor);
* :func:`replicated` and :func:`placed_like` make a product's communication explicit: the rows
  of the left factor times the gathered right factor give rows again, one all-gather per product.

Nothing here imports ``torch.distributed.tensor`` unless the caller already did: a plain tensor
is told apart by a look into :data:`sys.modules`, so dense solves pay nothing.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from gdla.errors import InputError, ShapeError

__all__ = [
    "check_mesh_matrix",
    "distribute_like",
    "full_tensor",
    "identity_like",
    "is_dtensor",
    "mesh_summary",
    "placed_like",
    "replicated",
]

_MODULE = "torch.distributed.tensor"


def is_dtensor(value: Any) -> bool:
    """Whether ``value`` is a :class:`torch.distributed.tensor.DTensor` (without importing that module)."""
    module = sys.modules.get(_MODULE)
    return module is not None and isinstance(value, module.DTensor)


def full_tensor(value: Any) -> Any:
    """The whole tensor, identical on every rank, for a DTensor (a collective); anything else unchanged."""
    return value.full_tensor() if is_dtensor(value) else value


def distribute_like(tensor: torch.Tensor, like: Any) -> Any:
    """``tensor`` (the same full tensor on every rank) placed like the DTensor ``like``; no communication.

    Returns ``tensor`` itself when ``like`` is not a DTensor (or ``tensor`` already is one).
    """
    if not is_dtensor(like) or is_dtensor(tensor):
        return tensor
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: each rank keeps its own slice of its own (identical) copy, nothing is sent
    return distribute_tensor(tensor, like.device_mesh, like.placements, src_data_rank=None)


def replicated(value: Any) -> Any:
    """A DTensor made whole on every rank (``Replicate``: one all-gather if sharded); anything else unchanged.

    ``rows @ replicated(right)`` is the row-sharded product made explicit: each rank multiplies its
    rows of the left factor by the whole right one, one all-gather and a row-sharded result. (Left
    to itself, DTensor may pick a plan that leaves a partial sum to be reduce-scattered later.)
    """
    if not is_dtensor(value):
        return value
    from torch.distributed.tensor import Replicate

    return value.redistribute(value.device_mesh, [Replicate()] * value.device_mesh.ndim)


def placed_like(value: Any, like: Any) -> Any:
    """The DTensor ``value`` redistributed to ``like``'s placements (if they differ); anything else unchanged."""
    if not (is_dtensor(value) and is_dtensor(like)) or tuple(value.placements) == tuple(like.placements):
        return value
    return value.redistribute(like.device_mesh, like.placements)


def identity_like(like: Any, size: int) -> Any:
    """The identity of order ``size`` in ``like``'s dtype and device, placed like ``like`` if it is a DTensor."""
    eye = torch.eye(size, dtype=like.dtype, device=_local_device(like))
    return distribute_like(eye, like)


def mesh_summary(value: Any) -> str | None:
    """``"Shard(dim=0) on a 1-D mesh of 2 ranks"`` for a DTensor, ``None`` for a plain tensor."""
    if not is_dtensor(value):
        return None
    mesh = value.device_mesh
    placements = ", ".join(repr(p) for p in value.placements)
    return f"{placements} on a {mesh.ndim}-D {mesh.device_type} mesh of {mesh.size()} ranks"


def check_mesh_matrix(value: Any, name: str) -> Any:
    """Check a DTensor matrix the row-sharded solvers handle; return it unchanged.

    Accepted: a 2-D DTensor on a 1-D ``DeviceMesh`` with placement ``Shard(0)`` (rows split over the
    ranks, evenly or not) or ``Replicate()``, whose global shape, dtype and placement every rank
    agrees on and whose local pieces add up to that shape.

    Args:
        value: the DTensor.
        name: the argument's name, for the messages.

    Returns:
        ``value``.

    Raises:
        InputError: a mesh of more than one dimension, another placement (``Shard(1)``, ``Partial``),
            or ranks that disagree on the matrix (this is checked by an object all-gather first,
            so a disagreement raises on every rank instead of hanging in a product).
        ShapeError: a DTensor that is not 2-D.
    """
    from torch.distributed.tensor import Replicate, Shard

    mesh = value.device_mesh
    placements = tuple(value.placements)
    if mesh.ndim != 1:
        raise InputError(
            f"{name}: expected a DTensor on a 1-D DeviceMesh, received one on a {mesh.ndim}-D mesh of shape "
            f"{tuple(mesh.shape)}; build the mesh with init_device_mesh(device_type, (world_size,))"
        )
    if value.dim() != 2:
        raise ShapeError(
            f"{name}: expected a 2-D DTensor (one matrix, rows sharded), received shape {tuple(value.shape)}; "
            "for a batch of matrices pass a plain tensor and solve with distributed=True"
        )
    placement = placements[0]
    rows = isinstance(placement, Shard) and placement.dim in (0, -2)
    if not (rows or isinstance(placement, Replicate)):
        raise InputError(
            f"{name}: expected a DTensor with placement Shard(0) (rows split over the ranks) or Replicate(), "
            f"received {placement!r}; redistribute it first: {name}.redistribute(mesh, [Shard(0)])"
        )
    _check_agreement(value, name, mesh, rows)
    return value


def _check_agreement(value: Any, name: str, mesh: Any, rows: bool) -> None:
    """Every rank of ``mesh`` holds the same global matrix description, and the local rows add up."""
    import torch.distributed as dist

    local = tuple(value.to_local().shape)
    signature = {
        "shape": list(value.shape),
        "dtype": str(value.dtype).removeprefix("torch."),
        "placement": repr(value.placements[0]),
    }
    group = mesh.get_group()
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, (signature, local), group=group)
    differ = [r for r, (other, _) in enumerate(everyone) if other != everyone[0][0]]
    if differ:
        shown = "; ".join(f"rank {r}: {everyone[r][0]}" for r in [0, *differ])
        raise InputError(
            f"{name}: expected every rank to hold the same DTensor (global shape, dtype, placement), received "
            f"different ones on ranks 0 and {', '.join(map(str, differ))} ({shown}); build it on every rank alike"
        )
    m, n = value.shape
    pieces = [piece for _, piece in everyone]
    if rows:  # DTensor's Shard convention: torch.chunk's pieces, trailing ranks possibly empty
        chunks = [len(c) for c in torch.arange(m).chunk(len(pieces))]
        expected = [(rows_r, n) for rows_r in chunks + [0] * (len(pieces) - len(chunks))]
    else:
        expected = [(m, n)] * len(pieces)
    if pieces != expected:
        raise InputError(
            f"{name}: expected local pieces of shapes {expected} (rank order) for the global shape {(m, n)} "
            f"under {value.placements[0]!r}, received {pieces}; a DTensor built by from_local(..., run_check=False) "
            "must pass each rank its own rows"
        )


def _local_device(value: Any) -> torch.device:
    return value.to_local().device if is_dtensor(value) else value.device
