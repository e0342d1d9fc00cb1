"""Reading matrices from files: NumPy ``.npy``, PyTorch ``.pt`` and Matrix Market ``.mtx``.

:func:`load_matrix` returns the data as stored (its dtype included). It does not convert integer
or boolean data to floating point, so that the problem's own checks can say that the file holds
integers instead of silently solving a different problem.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gdla.errors import MatrixFileError

__all__ = ["SUPPORTED_SUFFIXES", "load_matrix"]


def _read_npy(path: Path) -> torch.Tensor:
    # allow_pickle=False: a .npy file must never run code when it is read.
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):  # np.load sniffs zip archives whatever the suffix
        data.close()
        raise ValueError("the file is a .npz archive, not a single .npy array")
    return _from_numpy(data)


def _read_pt(path: Path) -> torch.Tensor:
    # weights_only=True: tensors and plain containers only, no arbitrary pickled objects.
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict):
        tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
        if len(tensors) != 1 or len(data) != 1:
            keys = ", ".join(repr(k) for k in data) or "none"
            raise ValueError(f"expected a tensor or a dict holding exactly one tensor, found a dict with keys {keys}")
        data = tensors[0]
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"expected a tensor or a dict holding exactly one tensor, found {type(data).__name__}")
    if data.layout != torch.strided:
        data = data.to_dense()
    return data.detach()


def _read_mtx(path: Path) -> torch.Tensor:
    import scipy.io

    data = scipy.io.mmread(path)
    if hasattr(data, "toarray"):  # coordinate format comes back as a SciPy sparse matrix
        data = data.toarray()
    return _from_numpy(np.asarray(data))


#: File suffixes :func:`load_matrix` understands, with what reads them.
SUPPORTED_SUFFIXES: dict[str, Callable[[Path], torch.Tensor]] = {
    ".npy": _read_npy,
    ".pt": _read_pt,
    ".pth": _read_pt,
    ".mtx": _read_mtx,
}


def load_matrix(path: str | os.PathLike[str]) -> torch.Tensor:  # returns shape: (m, n) or (n,)
    """Read one 2-D matrix, or a 1-D row, from ``path`` (``.npy``, ``.pt``/``.pth`` or ``.mtx``).

    Args:
        path: the file; its suffix (case-insensitive) selects the reader.

    Returns:
        A CPU tensor with the file's dtype (integer data stays integer).

    Raises:
        MatrixFileError: the file is missing, not a regular file, of an unsupported format,
            corrupt, unreadable (permissions), or does not hold a 1-D or 2-D numeric array. The
            message names the path and why.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    reader = SUPPORTED_SUFFIXES.get(suffix)
    if reader is None:
        known = ", ".join(SUPPORTED_SUFFIXES)
        got = f"suffix {suffix!r}" if suffix else "no suffix"
        raise MatrixFileError(f"matrix file {str(file)!r}: unsupported format ({got}); expected one of {known}")
    try:
        if not file.exists():
            raise MatrixFileError(f"matrix file {str(file)!r}: no such file")
        if not file.is_file():
            raise MatrixFileError(f"matrix file {str(file)!r}: not a regular file")
        matrix = reader(file)
    except MatrixFileError:
        raise
    except OSError as exc:  # permission denied, an unreadable folder, an I/O error...
        reason = exc.strerror or type(exc).__name__
        raise MatrixFileError(f"matrix file {str(file)!r}: cannot be read ({reason})") from None
    except Exception as exc:  # foreign file contents: every reader failure becomes one clear error
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MatrixFileError(
            f"matrix file {str(file)!r}: cannot be read as {suffix} ({type(exc).__name__}: {detail})"
        ) from None
    if matrix.dim() not in (1, 2):
        raise MatrixFileError(
            f"matrix file {str(file)!r}: expected a 2-D array (or a 1-D row), found shape {tuple(matrix.shape)}"
        )
    return matrix


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    if array.dtype.kind not in "biufc":
        raise ValueError(f"expected numeric data, found NumPy dtype {array.dtype}")
    if not array.dtype.isnative:  # torch cannot wrap big-endian buffers
        array = array.astype(array.dtype.newbyteorder("="))
    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)
    return torch.from_numpy(np.require(array, requirements="C"))
