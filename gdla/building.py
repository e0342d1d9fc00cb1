"""Building a problem from its registered name: its example (of a size), or a user's matrix (a tensor or a file).

One function, :func:`build_problem`, for ``gdla.solve("name")``, the ``gdla solve`` command and
anything else that starts from a name: the registry lookup, the option names checked against the
problem's declared ``options``, an example's memory checked before anything is allocated, then
``example`` or ``from_matrix``, then the dtype and device conversion. Given only a name it is
exactly ``get_problem(name).example()``.

Bad usage and bad data are told apart by type. An option name the problem does not declare, or
an option it refuses (an :class:`~gdla.errors.InputError` or a ``TypeError`` raised while building
with the options, where building without them succeeds), is a :class:`~gdla.errors.UsageError`;
whatever the problem says about its data keeps its type (for a file, with the file named).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from gdla.errors import InputError, UsageError
from gdla.io import load_matrix, matrix_file_size
from gdla.memory import check_fits
from gdla.options import check_names
from gdla.problem import Problem
from gdla.registry import get_problem
from gdla.validation import as_device, as_dtype, check_int

__all__ = ["build_problem"]


def build_problem(
    problem: str | type[Problem],
    *,
    size: int | None = None,
    matrix: torch.Tensor | str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    seed: int | None = None,
    options_name: str = "options",
) -> Problem:
    """Build a registered problem: its example, or ``from_matrix`` on a user's matrix.

    Args:
        problem: a registered problem name, or a :class:`~gdla.Problem` subclass.
        size: the example's dimension (``None``: the example's own). Its memory, as the class
            estimates it (:meth:`~gdla.Problem.estimated_bytes`), is checked before building.
        matrix: build with ``from_matrix`` instead of the example: a tensor, or a ``.npy``/``.pt``/
            ``.mtx`` file (kept sparse for a class that sets ``accepts_sparse_matrix``; integer and
            dense pattern files become ``dtype``, float64 by default).
        options: keyword options of ``example``/``from_matrix`` (``{"pseudo": True}``).
        dtype: ``"float32"``/``"float64"`` or a torch dtype: the example is built in it, a matrix's
            problem converted to it (``None``: as built).
        device: convert the problem's data to this device (``None``: as built).
        seed: the example's seed (``None``: the example's own, 0).
        options_name: how messages name ``options`` (``--problem-option`` on the command line).

    Returns:
        The problem, built once.

    Raises:
        UnknownNameError: no plugin registered ``problem``.
        UsageError: an option name the class does not declare, an option it refuses (it builds
            without the options), or ``size``/``seed`` with a ``matrix``.
        ResourceError: the example of ``size`` would not fit in the memory available.
        MatrixFileError: the file cannot be read.
        InputError: the problem refuses the data (for a file, the message names the file).
    """
    cls, name = _problem_class(problem)
    given = dict(options or {})
    try:
        check_names("problem", name, cls.options, given)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    float_dtype, target = as_dtype(dtype), as_device(device)
    if matrix is None:
        built = _example(cls, name, size, seed, given, float_dtype, options_name)
    elif size is not None or seed is not None:
        raise UsageError(
            f"matrix: expected no size or seed with a matrix (they choose the example), received size={size!r}, "
            f"seed={seed!r} for problem {name!r}"
        )
    elif isinstance(matrix, torch.Tensor):
        built = _construct(cls.from_matrix, name, given, options_name, matrix)
    else:
        built = _from_file(cls, name, matrix, given, float_dtype, options_name)
    if float_dtype is None and target is None:
        return built
    return built.to(dtype=float_dtype, device=target)


def _problem_class(problem: str | type[Problem]) -> tuple[type[Problem], str]:
    if isinstance(problem, str):
        return get_problem(problem), problem
    if isinstance(problem, type) and issubclass(problem, Problem):
        return problem, problem.name
    raise InputError(
        f"problem: expected a registered problem name or a gdla.Problem subclass, received {type(problem).__name__}"
    )


def _example(
    cls: type[Problem],
    name: str,
    size: int | None,
    seed: int | None,
    options: dict[str, Any],
    dtype: torch.dtype | None,
    options_name: str,
) -> Problem:
    """``cls.example`` with only the settings given (none: exactly ``example()``), after the memory check."""
    keywords: dict[str, Any] = {}
    if size is not None:
        keywords["size"] = check_int(size, "size", minimum=1)
        needed = _estimate(cls, keywords["size"], dtype or torch.float64, options)
        check_fits(needed, f"problem {name!r} of size {size}")
    if seed is not None:
        keywords["seed"] = check_int(seed, "seed")
    if dtype is not None:
        keywords["dtype"] = dtype
    return _construct(cls.example, name, options, options_name, **keywords)


def _estimate(cls: type[Problem], size: int, dtype: torch.dtype, options: dict[str, Any]) -> int | None:
    try:
        return cls.estimated_bytes(size, dtype, **options)
    except (TypeError, ValueError):  # options the estimate cannot read: the build will say what is wrong
        return None


def _from_file(
    cls: type[Problem],
    name: str,
    path: str | os.PathLike[str],
    options: dict[str, Any],
    dtype: torch.dtype | None,
    options_name: str,
) -> Problem:
    """``cls.from_matrix`` on the file's matrix; the problem's refusal of the data names the file."""
    # a problem that declares it takes a sparse matrix gets a coordinate file as one: never n² numbers
    keep_sparse = bool(getattr(cls, "accepts_sparse_matrix", False))
    _check_file_fits(cls, name, path, options, dtype, keep_sparse)
    matrix = load_matrix(path, keep_sparse=keep_sparse)
    positions_only = matrix.layout != torch.strided and matrix.dtype == torch.bool
    if not (matrix.is_floating_point() or matrix.is_complex() or positions_only):
        matrix = matrix.to(dtype or torch.float64)  # integer and dense pattern files hold exact values
    try:
        return _construct(cls.from_matrix, name, options, options_name, matrix)
    except UsageError:
        raise
    except InputError as exc:
        # the problem names its argument ("A: ..."); say which file that argument came from
        raise type(exc)(f"matrix file {os.fspath(path)!r} for problem {name!r}: {exc}") from None


def _check_file_fits(
    cls: type[Problem], name: str, path: str | os.PathLike[str], options: dict[str, Any], dtype: torch.dtype | None,
    keep_sparse: bool,
) -> None:
    """The memory check of ``--size``, for a file, from its header, before anything is read.

    A square matrix is checked with the problem's own estimate for that size (what a solve of it needs);
    otherwise, or without an estimate, with three dense copies (the file's values, the problem's, the answer).
    """
    size = matrix_file_size(path)
    if size is None:
        return
    shape, entries = size
    itemsize = torch.finfo(dtype or torch.float64).bits // 8
    if keep_sparse and entries is not None:
        needed: int | None = 3 * entries * (itemsize + 16)  # values and two int64 indices, a few copies
    else:
        needed = None
        if len(shape) == 2 and shape[0] == shape[1]:
            needed = _estimate(cls, shape[0], dtype or torch.float64, options)
        if needed is None:
            needed = 3 * math.prod(shape) * itemsize
    check_fits(needed, f"matrix file {os.fspath(path)!r} ({' × '.join(map(str, shape))}) for problem {name!r}")


def _construct(
    factory: Callable[..., Problem], name: str, options: dict[str, Any], options_name: str, *args: Any, **keywords: Any
) -> Problem:
    """``factory(*args, **keywords, **options)``; what it refuses only because of ``options`` is a UsageError."""
    try:
        return factory(*args, **keywords, **options)
    except (InputError, TypeError) as exc:
        # a subclass (a singular or misshapen matrix) is about the data, whatever the options
        if not options or type(exc) not in (InputError, TypeError) or not _builds(factory, args, keywords):
            raise
        if isinstance(exc, TypeError):
            raise UsageError(
                f"{options_name}: problem {name!r} does not accept these options ({', '.join(sorted(options))}): {exc}"
            ) from None
        raise UsageError(str(exc)) from None


def _builds(factory: Callable[..., Problem], args: tuple[Any, ...], keywords: dict[str, Any]) -> bool:
    """Whether ``factory`` builds without the options (then they are what it refused); its warnings unshown."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            factory(*args, **keywords)
    except Exception:
        return False
    return True
