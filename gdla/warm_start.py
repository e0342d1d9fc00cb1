"""A solve's starting point from a previous answer (``gdla.solve(..., init=...)``).

``init`` is a previous :class:`~gdla.Result` (its ``params``) or a mapping of parameter tensors in
the caller's units. :func:`check_init` checks its type when the run is planned; :func:`given_start`
checks its names, shapes, dtype and device against the problem's own start and converts it into
the normalised units the optimizer works in, exactly: the normalisation's ``restore`` scales every
parameter entry by a power of two (:mod:`gdla.scaling`), so dividing by that factor is exact.

The start it returns is a :class:`GivenStart`, a ``dict`` that says so: a method that would
overwrite the problem's start (Newton-Schulz's safe start) asks :func:`is_given` first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from gdla.errors import InputError
from gdla.problem import Params
from gdla.result import Result

__all__ = ["ONLY", "GivenStart", "check_init", "given_start", "is_given"]

#: The name :func:`check_init` gives a bare tensor: the problem's only parameter, whatever its name.
ONLY = ""


class GivenStart(dict):  # type: ignore[type-arg]
    """Parameters the caller gave as the start (``init``), in the work problem's units: a plain ``Params`` dict."""


def is_given(params: Params) -> bool:
    """Whether ``params`` is a start the caller gave (``gdla.solve(..., init=...)``), not the problem's own."""
    return isinstance(params, GivenStart)


def check_init(init: Any) -> dict[str, torch.Tensor] | None:
    """``init`` as a ``{name: tensor}`` dict in the caller's units (detached), or ``None``; its type checked.

    Raises:
        InputError: ``init`` is neither ``None``, a :class:`~gdla.Result` nor a mapping of names to tensors.
    """
    if init is None:
        return None
    if isinstance(init, Result):
        init = init.params
    if isinstance(init, torch.Tensor):  # the one parameter of a problem that has one (a saved answer)
        init = {ONLY: init}
    if not isinstance(init, Mapping):
        raise InputError(
            f"init: expected a gdla.Result, a dict of parameter tensors or one tensor, received {type(init).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in init.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"init[{key!r}]: expected a tensor, received {type(value).__name__}")
        out[str(key)] = value.detach()
    return out


def given_start(init: dict[str, torch.Tensor], fresh: Params, restore: Callable[[Params], Params]) -> GivenStart:
    """``init`` (caller's units) checked against ``fresh`` (the problem's own start, work units) and converted.

    Args:
        init: what :func:`check_init` returned.
        fresh: the seeded start of the work problem: the names, shapes, dtypes and devices expected.
        restore: the normalisation's map from work to caller's units (per-entry powers of two).

    Raises:
        InputError: a missing or unknown name, or a tensor of another shape, dtype or device (named).
    """
    if set(init) == {ONLY}:
        if len(fresh) != 1:
            raise InputError(
                f"init: expected a dict naming the parameters {', '.join(map(repr, fresh))}, received one tensor "
                "(a bare tensor serves a problem with one parameter)"
            )
        init = {next(iter(fresh)): init[ONLY]}
    missing, unknown = sorted(set(fresh) - set(init)), sorted(set(init) - set(fresh))
    if missing or unknown:
        raise InputError(
            f"init: expected the parameters {', '.join(map(repr, fresh))}, received {', '.join(map(repr, init))}"
            + (f" (missing {', '.join(map(repr, missing))})" if missing else "")
            + (f" (unknown {', '.join(map(repr, unknown))})" if unknown else "")
        )
    for key, expected in fresh.items():
        value = init[key]
        for what, want, got in (
            ("shape", tuple(expected.shape), tuple(value.shape)),
            ("dtype", expected.dtype, value.dtype),
            ("device", expected.device, value.device),
        ):
            if want != got:
                raise InputError(f"init[{key!r}]: expected {what} {want}, received {got}")
        if not bool(torch.isfinite(value).all()):
            raise InputError(f"init[{key!r}]: expected finite values, received NaN or infinite entries")
    factors = restore({key: torch.ones_like(value) for key, value in fresh.items()})
    start = GivenStart()
    for key, value in init.items():
        factor = factors[key]
        mantissa, _ = torch.frexp(factor)
        if not bool((mantissa.abs() == 0.5).all()):  # not a power of two: the conversion would not be exact
            raise InputError(
                f"init[{key!r}]: expected a problem whose normalisation scales {key!r} by powers of two, received "
                "one whose restore() does not; leave init out"
            )
        start[key] = (value / factor).contiguous()  # a power of two: exact
    return start
