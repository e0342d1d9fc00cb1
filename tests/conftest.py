"""Shared fixtures: every test starts from a fixed seed and leaves the registry as it found it."""

from __future__ import annotations

import pytest
import torch

import gdla


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def register_plugin():
    """Register plugin objects for one test; they are unregistered afterwards."""
    names: list[str] = []

    def register(plugin, **kwargs):
        name = gdla.registry.register_plugin(plugin, **kwargs)
        names.append(name)
        return name

    yield register
    for name in reversed(names):
        gdla.registry.unregister_plugin(name)
