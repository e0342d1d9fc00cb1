"""Reading and writing matrices: NumPy ``.npy``, PyTorch ``.pt`` and Matrix Market ``.mtx``.

:func:`load_matrix` returns the data as stored (its dtype included). It does not convert integer
or boolean data to floating point, so that the problem's own checks can say that the file holds
integers instead of silently solving a different problem. With ``keep_sparse=True`` a
coordinate-format ``.mtx`` (or a sparse ``.pt`` tensor) stays a torch sparse tensor, so a
200,000 × 200,000 file with a million entries never becomes ``n²`` numbers.

:func:`save_matrix` writes an answer (``gdla solve --save``): dense or sparse, ``.pt``, ``.npy``
or ``.mtx``, atomically (a temporary file renamed over the target once it is complete).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from gdla.errors import MatrixFileError

__all__ = ["SUPPORTED_SUFFIXES", "check_save_path", "load_matrix", "load_params", "save_matrix"]


def _read_npy(path: Path, keep_sparse: bool = False) -> torch.Tensor:
    # allow_pickle=False: a .npy file must never run code when it is read.
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):  # np.load sniffs zip archives whatever the suffix
        data.close()
        raise ValueError("the file is a .npz archive, not a single .npy array")
    return _from_numpy(data)


def _read_pt(path: Path, keep_sparse: bool = False) -> torch.Tensor:
    # weights_only=True: tensors and plain containers only, no arbitrary pickled objects.
    # a sparse tensor's indices are checked on load: a file must not describe memory out of bounds
    with torch.sparse.check_sparse_tensor_invariants():
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
        data = data.to_sparse_coo().coalesce() if keep_sparse and data.dim() == 2 else data.to_dense()
    return data.detach()


def matrix_file_size(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], int | None] | None:
    """``(shape, stored entries)`` of a matrix file read from its header alone (``None`` entries: dense), or
    ``None`` where the format has no header to read (``.pt``) or the file cannot be read (the reader says why).

    What the memory check before loading a file reads: an 84-byte ``.mtx`` may declare a 16000 × 16000 matrix.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    try:
        if suffix == ".mtx":
            import scipy.io

            rows, cols, entries, layout, _, _ = scipy.io.mminfo(file)
            return (int(rows), int(cols)), (int(entries) if layout == "coordinate" else None)
        if suffix == ".npy":
            return tuple(int(side) for side in np.load(file, mmap_mode="r").shape), None
    except (OSError, ValueError, TypeError):
        return None
    return None


def _read_mtx(path: Path, keep_sparse: bool = False) -> torch.Tensor:
    import scipy.io

    field = scipy.io.mminfo(path)[4]
    data = scipy.io.mmread(path)
    if hasattr(data, "toarray"):  # coordinate format comes back as a SciPy sparse matrix
        if keep_sparse:
            return _sparse_from_scipy(data, pattern=field == "pattern")
        data = data.toarray()
    return _from_numpy(np.asarray(data))


def _sparse_from_scipy(data: Any, pattern: bool) -> torch.Tensor:
    """A coalesced COO tensor of a SciPy sparse matrix; a ``pattern`` file's entries become ``True``.

    Repeated coordinates are summed (Matrix Market's and SciPy's reading); an explicitly stored
    zero stays a stored entry.
    """
    coo = data.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.ones(coo.nnz, dtype=torch.float64) if pattern else _from_numpy(np.asarray(coo.data))
    shape = tuple(int(side) for side in coo.shape)
    tensor = torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()
    if pattern:  # positions only: a repeated one is still one position
        kept = tensor.indices()
        ones = torch.ones(kept.shape[1], dtype=torch.bool)
        return torch.sparse_coo_tensor(kept, ones, shape, is_coalesced=True, check_invariants=False)
    return tensor


#: File suffixes :func:`load_matrix` understands, with what reads them (``reader(path, keep_sparse)``).
SUPPORTED_SUFFIXES: dict[str, Callable[[Path, bool], torch.Tensor]] = {
    ".npy": _read_npy,
    ".pt": _read_pt,
    ".pth": _read_pt,
    ".mtx": _read_mtx,
}


def load_matrix(
    path: str | os.PathLike[str], *, keep_sparse: bool = False
) -> torch.Tensor:  # returns shape: (m, n) or (n,)
    """Read one 2-D matrix, or a 1-D row, from ``path`` (``.npy``, ``.pt``/``.pth`` or ``.mtx``).

    Args:
        path: the file; its suffix (case-insensitive) selects the reader.
        keep_sparse: return a coordinate-format ``.mtx`` file, or a sparse tensor saved as
            ``.pt``, as a coalesced torch sparse COO tensor instead of a dense one (memory
            ``O(nnz)``). A Matrix Market ``pattern`` file, which holds positions only, then has
            ``bool`` values (``True`` at every stored position). Dense files are read as usual.

    Returns:
        A CPU tensor with the file's dtype (integer data stays integer); sparse COO only with
        ``keep_sparse``.

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
        matrix = reader(file, keep_sparse)
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


def load_params(path: str | os.PathLike[str]) -> dict[str, torch.Tensor] | torch.Tensor:
    """Read a solve's starting parameters (``gdla solve --init FILE``): a ``.pt`` file holding a dict of named
    tensors (a ``Result.params`` saved with ``torch.save``) or one tensor; any other file as :func:`load_matrix`
    reads it (one parameter: a saved answer such as ``--save X.npy``).

    Raises:
        MatrixFileError: as :func:`load_matrix`, or a ``.pt`` file holding something else than tensors.
    """
    file = Path(path)
    if file.suffix.lower() not in (".pt", ".pth") or not file.is_file():
        return load_matrix(file)
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign or corrupt file: one clear error
        raise MatrixFileError(f"parameter file {str(file)!r}: cannot be read as .pt ({type(exc).__name__})") from None
    if isinstance(data, torch.Tensor):
        return data.detach()
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {str(key): value.detach() for key, value in data.items()}
    raise MatrixFileError(
        f"parameter file {str(file)!r}: expected a tensor or a dict of named tensors, found {type(data).__name__}"
    )


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    if array.dtype.kind not in "biufc":
        raise ValueError(f"expected numeric data, found NumPy dtype {array.dtype}")
    if not array.dtype.isnative:  # torch cannot wrap big-endian buffers
        array = array.astype(array.dtype.newbyteorder("="))
    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)
    return torch.from_numpy(np.require(array, requirements="C"))


#: File suffixes :func:`save_matrix` writes.
SAVE_SUFFIXES = (".pt", ".pth", ".npy", ".mtx")
#: What an existing path that is not a regular file is, by the kind bits of its mode.
_SPECIAL_FILES = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_save_path(path: str | os.PathLike[str], what: str = "path") -> Path:
    """``path`` as a :class:`~pathlib.Path` that :func:`save_matrix` can write (checked before a long run).

    Args:
        path: the file to write.
        what: the argument's name in the message (``--save`` on the command line).

    Returns:
        The path.

    Raises:
        MatrixFileError: an unsupported suffix, a folder that does not exist, or an existing path
            that is not a regular file (a folder, a FIFO, a device: a write there would block or
            go nowhere).
    """
    file = Path(path)
    if file.suffix.lower() not in SAVE_SUFFIXES:
        raise MatrixFileError(f"{what}: expected a file ending in {', '.join(SAVE_SUFFIXES)}, received {str(file)!r}")
    if not file.parent.is_dir():
        raise MatrixFileError(f"{what}: the folder {str(file.parent)!r} of {str(file)!r} does not exist")
    try:
        mode = file.stat().st_mode  # follows a link: what matters is what a write would reach
    except OSError:  # nothing there yet (or a dangling link): a new file
        return file
    if stat.S_ISREG(mode):
        return file
    kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "not a regular file")
    raise MatrixFileError(
        f"{what}: expected a new file or a regular file to replace, received {str(file)!r}, which is {kind}"
    )


def save_matrix(value: Any, path: str | os.PathLike[str]) -> None:
    """Write an answer to ``path``: a dense or sparse tensor, or a tuple of tensors (``.pt`` only).

    ``.pt``/``.pth`` keep everything as it is (a sparse tensor stays sparse, a tuple stays a
    tuple); ``.npy`` takes one dense tensor; ``.mtx`` takes one matrix, dense (Matrix Market
    ``array``) or sparse (``coordinate``, only the stored entries: what :func:`load_matrix` reads
    back with ``keep_sparse=True``). The file written is the file named, whatever the case of its
    suffix (``up.NPY`` stays ``up.NPY``).

    The write is atomic: the data goes to a temporary file in the same folder, is flushed to disk
    and then renamed over ``path``, so ``path`` holds either its old contents or the whole new
    file, never a part; a write that fails (a full disk, a file-size limit) removes the temporary
    file and leaves ``path`` as it was. A ``path`` that is a link to a file replaces that file.

    Args:
        value: the tensor(s).
        path: the file; its suffix (case-insensitive) selects the format.

    Raises:
        MatrixFileError: a format that cannot hold ``value`` (a sparse tensor as ``.npy``, a
            tuple or a batch of matrices as ``.npy``/``.mtx``; refused before anything is written),
            or a file that cannot be written (an existing one is then left as it was).
    """
    file = check_save_path(path)
    write = _writer(value, file)
    try:
        with _replacing(file) as stream:
            try:
                write(stream)
            except RuntimeError:  # torch.save turns a failed write into "unexpected pos": say what failed
                if stream.failure is None:
                    raise
                raise stream.failure from None
    except OSError as exc:  # a full disk, a file-size limit, permissions...
        raise MatrixFileError(f"path {str(file)!r}: cannot be written ({exc.strerror or exc})") from None
    except RuntimeError as exc:  # torch.save's own failures
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MatrixFileError(f"path {str(file)!r}: cannot be written ({detail})") from None


class _Stream:
    """A binary file that remembers its first failed write (a writer may report it only as its own error)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.failure: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._raw.write(data)
        except OSError as exc:
            self.failure = self.failure or exc
            raise

    def flush(self) -> None:
        self._raw.flush()


def _writer(value: Any, file: Path) -> Callable[[_Stream], None]:
    """What writes ``value`` in ``file``'s format to an open stream; raises first if the format cannot hold it."""
    suffix = file.suffix.lower()
    tensors = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise MatrixFileError(
            f"path {str(file)!r}: expected a tensor or a tuple of tensors to save, received {type(value).__name__}"
        )
    if suffix in (".pt", ".pth"):
        detached = tuple(t.detach().cpu() for t in tensors)
        kept = detached if isinstance(value, (tuple, list)) else detached[0]
        return lambda stream: torch.save(kept, stream)
    if len(tensors) != 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise MatrixFileError(
            f"path {str(file)!r}: the answer is {len(tensors)} tensors (shapes {shapes}); "
            f"{suffix} holds one matrix, save it as .pt"
        )
    tensor = tensors[0].detach().cpu()
    if suffix == ".npy":
        if tensor.layout != torch.strided:
            raise MatrixFileError(
                f"path {str(file)!r}: the answer is a sparse {tuple(tensor.shape)} tensor with "
                f"{tensor.to_sparse_coo().coalesce().values().numel()} stored entries; .npy stores "
                "dense arrays only, save it as .mtx (coordinate) or .pt (sparse tensor)"
            )
        # to a stream, np.save writes where it is told (given a name, it would append .npy to up.NPY)
        return lambda stream: np.save(stream, tensor.numpy(), allow_pickle=False)
    return _mtx_writer(tensor, file)


def _mtx_writer(tensor: torch.Tensor, file: Path) -> Callable[[_Stream], None]:
    import scipy.io
    import scipy.sparse

    if tensor.dim() != 2:
        raise MatrixFileError(
            f"path {str(file)!r}: .mtx holds one 2-D matrix, the answer has shape {tuple(tensor.shape)}; save it as .pt"
        )
    if tensor.layout != torch.strided:
        coo = tensor.to_sparse_coo().coalesce()
        rows, cols = coo.indices().numpy()
        data: Any = scipy.sparse.coo_matrix((coo.values().numpy(), (rows, cols)), shape=tuple(coo.shape))
    else:
        data = tensor.numpy()
    return lambda stream: scipy.io.mmwrite(stream, data)


@contextmanager
def _replacing(file: Path) -> Iterator[_Stream]:
    """A stream to a new file beside ``file`` that replaces ``file`` once the block has written all of it.

    The new file is flushed and synced before the rename (so a crash right after leaves the whole
    new file or the whole old one), takes the old file's permissions (a new file: the umask's), and
    is removed if the block raises, whatever it raises.
    """
    target = Path(os.path.realpath(file)) if file.is_symlink() else file
    if target.exists() and not os.access(target, os.W_OK):  # a rename would get past a read-only file
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:  # a fresh name: never another writer's temporary file
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            descriptor = os.open(temporary, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(descriptor, "wb") as raw:
            yield _Stream(raw)
            raw.flush()
            os.fsync(raw.fileno())
        if target.exists():
            os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable, where the system allows it (a best effort: the data is already synced)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
