"""The CUDA compile checks run last, while nvcc works from the end of collection (see test_cuda_build.py)."""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: compile only when the checks will run
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    builds = [item for item in items if item.path.name == "test_cuda_build.py"]
    if not builds:
        return
    items[:] = [item for item in items if item.path.name != "test_cuda_build.py"] + builds
    builds[0].module.start_compilations()  # the compile overlaps every other test
