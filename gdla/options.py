"""Declared options: what a problem or an optimizer accepts, with defaults and one line of documentation.

A plugin class lists its options in the class attribute ``options`` (name -> :class:`Option`);
``gdla plugins --json`` shows them, ``gdla solve`` checks ``-p``/``-o`` names against them (an
unknown name is bad usage, with the closest declared name suggested), and :func:`resolve` turns
what a caller gave into every declared option, checked, with the declared defaults filled in: the
one option checker. A class that declares nothing accepts whatever its constructor takes (older
plugins keep working).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gdla.errors import InputError
from gdla.validation import check_choice, check_int

__all__ = [
    "Option",
    "check_names",
    "choice",
    "count",
    "describe",
    "flag",
    "integer",
    "optional",
    "optional_count",
    "passthrough",
    "resolve",
]

#: A validator: ``check(value, name) -> value`` as the owner receives it, or an :class:`InputError` naming ``name``.
Check = Callable[[Any, str], Any]


def passthrough(value: Any, name: str) -> Any:
    """A validator that accepts any value (the owner checks it when built)."""
    return value


@dataclass(frozen=True)
class Option:
    """One accepted option: its validator ``check(value, name) -> value``, its default and what it means."""

    check: Check = passthrough
    default: Any = None
    doc: str = ""


def check_names(
    kind: str, owner: str, declared: Mapping[str, Option], given: Iterable[str], also: Iterable[str] = ()
) -> None:
    """Raise :class:`InputError` naming the first of ``given`` that ``declared`` (or ``also``) lacks."""
    if not declared:
        return
    names = sorted({*declared, *also})
    for key in given:
        if key in names:
            continue
        hint = difflib.get_close_matches(str(key), names, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise InputError(
            f"{key}: {kind} {owner!r} has no option {key!r}{suggestion}; its options: {', '.join(names)}"
        )


def resolve(kind: str, owner: str, declared: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of ``declared``: the value in ``given`` or the declared default, each through its ``check``.

    With nothing declared, ``given`` itself (a copy): the owner checks what it takes.

    Args:
        kind: ``"optimizer"`` or ``"problem"``, for the messages.
        owner: the registered name of the class whose options these are.
        declared: the class's ``options`` schema.
        given: what the caller passed.

    Raises:
        InputError: an unknown name (with the closest declared one suggested, see :func:`check_names`), or a
            value its validator refuses.
    """
    if not declared:
        return dict(given)
    check_names(kind, owner, declared, given)
    return {key: option.check(given.get(key, option.default), key) for key, option in declared.items()}


# -- validators shared by plugins' schemas ---------------------------------------------------------
def flag(value: Any, name: str) -> bool:
    """A boolean (not a number that happens to be 0 or 1)."""
    if not isinstance(value, bool):
        raise InputError(f"{name}: expected True or False, received {value!r}")
    return value


def count(value: Any, name: str) -> int:
    """An integer >= 1."""
    return check_int(value, name, minimum=1)


def optional_count(value: Any, name: str) -> int | None:
    """``None`` (the owner derives the number) or an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"{name}: expected None or an integer >= 1, received {value!r}")
    return value


def choice(*values: Any) -> Check:
    """A validator accepting one of ``values`` (the error lists them)."""

    def checked(value: Any, name: str) -> Any:
        return check_choice(value, name, values)

    return checked


def integer(minimum: int) -> Check:
    """A validator accepting an integer >= ``minimum``."""

    def checked(value: Any, name: str) -> int:
        return check_int(value, name, minimum=minimum)

    return checked


def optional(check: Check) -> Check:
    """``check``, letting ``None`` (the owner's "derive it") through unchecked."""

    def checked(value: Any, name: str) -> Any:
        return None if value is None else check(value, name)

    return checked


def describe(declared: Mapping[str, Option]) -> list[dict[str, Any]]:
    """JSON-ready ``[{"name", "default", "doc"}]``, sorted by name."""
    out = []
    for name in sorted(declared):
        option = declared[name]
        default = option.default
        if isinstance(default, float) and not math.isfinite(default):
            default = str(default)
        elif not isinstance(default, (bool, int, float, str, list, tuple, type(None))):
            default = repr(default)
        if isinstance(default, tuple):
            default = list(default)
        out.append({"name": name, "default": default, "doc": option.doc})
    return out
