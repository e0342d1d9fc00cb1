"""Argument checks shared by the typed op wrappers (:mod:`gdla.ops`, :mod:`gdla.ops_small`).

Importing this module loads the compiled extension ``gdla._C``, whose import registers the ops.
Every check looks at metadata only (type, dtype, device, shape), never at values.
"""

from __future__ import annotations

import importlib

import torch

from gdla.errors import InputError, ShapeError
from gdla.limits import DTYPES

try:
    importlib.import_module("gdla._C")  # its import registers the ops (schemas and kernels)
except ImportError as exc:
    raise ImportError(
        f"gdla.ops needs the compiled extension gdla._C, which could not be imported ({exc}); "
        "build it with: pip install --no-build-isolation -e ."
    ) from exc

SIDES = ("right", "left", "both")
OPS = torch.ops.gdla
CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key("gdla::inverse_mse", "CUDA")


_DTYPE_NAMES = " or ".join(str(dtype).removeprefix("torch.") for dtype in DTYPES)  # "float32 or float64"


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return f"{type(value).__name__} {value!r}"[:80]


def _tensor(op: str, value: object, name: str, like: torch.Tensor | None = None, ref: str = "") -> torch.Tensor:
    """``value`` as a float32/float64 tensor with the dtype and device of ``like`` (if given)."""
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{op}: {name} must be a torch.Tensor, received {_describe(value)}")
    if value.dtype not in DTYPES:
        raise InputError(f"{op}: {name} must be {_DTYPE_NAMES}, received {value.dtype}")
    if like is not None and value.dtype != like.dtype:
        raise InputError(f"{op}: {name} must have the dtype of {ref} ({like.dtype}), received {value.dtype}")
    if like is not None and value.device != like.device:
        raise InputError(f"{op}: {name} must be on the device of {ref} ({like.device}), received {value.device}")
    if value.device.type == "cuda" and not CUDA_KERNELS:
        raise InputError(
            f"{op}: {name} is on {value.device}, but gdla._C was built without CUDA kernels; rebuild it on a "
            "machine with a CUDA build of torch (pip install --no-build-isolation -e .)"
        )
    return value


def _matrix(op: str, value: object, name: str, like: torch.Tensor | None = None, ref: str = "") -> torch.Tensor:
    tensor = _tensor(op, value, name, like, ref)
    if tensor.dim() < 2 or tensor.numel() == 0:
        raise ShapeError(
            f"{op}: {name} must be a non-empty matrix of shape (..., m, n), received {tuple(tensor.shape)}"
        )
    return tensor


def _extent(tensor: torch.Tensor) -> tuple[int, int, int]:
    """``(storage pointer, first byte, one past the last byte)`` of the memory ``tensor`` can reach."""
    span = 1 + sum((size - 1) * abs(stride) for size, stride in zip(tensor.shape, tensor.stride(), strict=True))
    first = tensor.storage_offset() * tensor.element_size()
    return tensor.untyped_storage().data_ptr(), first, first + (span if tensor.numel() else 0) * tensor.element_size()


def _in_place(
    op: str, written: dict[str, torch.Tensor], read: dict[str, torch.Tensor], *, elementwise: bool = False
) -> None:
    """The arguments of a kernel that writes ``written`` in place: those contiguous (unless ``elementwise``), and no
    written tensor sharing memory with another argument, as torch refuses an overlapping ``out=``: an aliased
    output computes garbage. An ``elementwise`` kernel may read the very tensor it writes (``U`` as ``G``), as
    ``a.add_(a)`` may; two written tensors may never share memory. Skipped while ``torch.compile`` traces."""
    if torch.compiler.is_compiling():
        return
    everything = {**read, **written}
    for name, tensor in written.items():  # read tensors the wrappers pass on .contiguous()
        if not elementwise and not tensor.is_contiguous():
            back = " and copy the result back" if name in written else ""
            raise InputError(
                f"{op}: {name} must be contiguous, received strides {tensor.stride()} for shape "
                f"{tuple(tensor.shape)}; pass {name}.contiguous(){back}"
            )
    pointers = [tensor.untyped_storage().data_ptr() for tensor in everything.values()]
    if len(set(pointers)) == len(pointers):  # no two share a storage: the common case, decided cheaply
        return
    extents = {name: _extent(tensor) for name, tensor in everything.items()}
    for name in written:
        pointer, first, last = extents[name]
        for other, (other_pointer, other_first, other_last) in extents.items():
            if other == name or other_pointer != pointer or not (first < other_last and other_first < last):
                continue
            same = everything[other].shape == everything[name].shape and (first, last) == (other_first, other_last)
            if elementwise and same and other not in written:
                continue
            raise InputError(
                f"{op}: {name} is written in place and must not share memory with {other}, received "
                f"overlapping tensors; pass separate tensors (e.g. {other}.clone())"
            )


def _shape(op: str, tensor: torch.Tensor, name: str, expected: tuple[int, ...], why: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ShapeError(f"{op}: {name} must have shape {tuple(expected)} {why}, received {tuple(tensor.shape)}")


def _side(op: str, side: object) -> str:
    if isinstance(side, int) and not isinstance(side, bool) and 0 <= side < len(SIDES):
        return SIDES[side]
    if side not in SIDES:
        raise InputError(
            f"{op}: side must be one of 'right' (A@M), 'left' (M@A), 'both' (or 0, 1, 2), received {side!r}"
        )
    return str(side)


def _mask(op: str, omega: object, U: torch.Tensor) -> torch.Tensor:
    """A boolean mask becomes U's dtype; anything else must already match U."""
    if isinstance(omega, torch.Tensor) and omega.dtype == torch.bool:
        omega = omega.to(U.dtype)
    return _tensor(op, omega, "omega", U, "U")
