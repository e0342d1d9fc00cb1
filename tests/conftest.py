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


@pytest.fixture
def register_classes(register_plugin):
    """Register problem and optimizer classes for one test as one plugin named ``name``."""

    def register(*classes: type, name: str) -> str:
        problems = [cls for cls in classes if issubclass(cls, gdla.Problem)]
        optimizers = [cls for cls in classes if issubclass(cls, gdla.Optimizer)]

        class Plugin:
            @staticmethod
            @gdla.hookimpl
            def register_problems(register) -> None:
                for cls in problems:
                    register(cls)

            @staticmethod
            @gdla.hookimpl
            def register_optimizers(register) -> None:
                for cls in optimizers:
                    register(cls)

        return register_plugin(Plugin, name=name)

    return register
