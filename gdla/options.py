"""Declared options: what a problem or an optimizer accepts, with defaults and one line of documentation.

A plugin class lists its options in the class attribute ``options`` (name -> :class:`Option`);
``gdla plugins --json`` shows them, and ``gdla solve`` checks ``-p``/``-o`` names against them
(an unknown name is bad usage, with the closest declared name suggested). The class itself still
validates values when it is built. A class that declares nothing accepts whatever its
constructor takes (older plugins keep working).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gdla.errors import InputError

__all__ = ["Option", "check_names", "describe", "passthrough"]


def passthrough(value: Any, name: str) -> Any:
    """A validator that accepts any value (the owner checks it when built)."""
    return value


@dataclass(frozen=True)
class Option:
    """One accepted option: its validator ``check(value, name) -> value``, its default and what it means."""

    check: Callable[[Any, str], Any] = passthrough
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
