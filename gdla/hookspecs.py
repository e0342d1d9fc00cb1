"""The hooks a gdla plugin implements.

A plugin is any module or object with functions marked ``@gdla.hookimpl`` whose names are the
hooks below. It reaches gdla through an entry point of group ``gdla`` in its package metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "gdla"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_problems(register: Callable[[Any], None]) -> None:
    """Call ``register(ProblemClass)`` once for each problem the plugin provides."""


@hookspec
def register_optimizers(register: Callable[[Any], None]) -> None:
    """Call ``register(OptimizerClass)`` once for each optimizer the plugin provides."""
