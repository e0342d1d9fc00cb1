"""The example third-party plugin, installed as a real distribution and used as a user would.

The plugin is built into a wheel and installed with ``pip install --target`` into a temporary
folder, never into the shared environment; subprocesses see it through ``PYTHONPATH``, this process
through a fresh registry with that folder on ``sys.path``. The tests use it through ``gdla.solve``
(here), through ``python -m gdla`` and by running the plugin's own tests (fresh processes).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import gdla
from gdla.cli import main

PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "examples" / "gdla-example-plugin"
TIMEOUT = 120  # seconds per subprocess; a hang fails the test instead of blocking the run


def _run(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=TIMEOUT, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """Build and install the plugin; yield the environment that sees it and the source copy."""
    probe = _run([sys.executable, "-m", "pip", "--version"])
    if probe.returncode != 0:
        pytest.skip(f"pip is unavailable in this environment: {probe.stderr.strip()[:200]}")
    try:
        import setuptools  # noqa: F401  (the build backend, used without build isolation)
    except ImportError:
        pytest.skip("setuptools is not installed, so the plugin cannot be built without network access")
    root = tmp_path_factory.mktemp("example-plugin")
    # build from a copy: an in-tree build would leave build/ and *.egg-info in the repository
    source = root / "source"
    shutil.copytree(
        PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")
    )
    wheels, site = root / "wheels", root / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    built = _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)])
    assert built.returncode == 0, f"building the wheel failed:\n{built.stdout}\n{built.stderr}"
    (wheel,) = wheels.glob("gdla_example_plugin-0.1.0-*.whl")
    done = _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)])
    assert done.returncode == 0, f"installing the wheel failed:\n{done.stdout}\n{done.stderr}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    env.update({"OMP_NUM_THREADS": "1", "GDLA_STRICT_PLUGINS": "0", "PYTHONDONTWRITEBYTECODE": "1"})
    yield env, source


@pytest.fixture
def loaded_here(installed: tuple[dict[str, str], Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The installed plugin found by a fresh registry of this process (its site folder on ``sys.path``).

    What a new interpreter would do: read the entry points of every distribution on the path. The command
    line and the plugin's own tests below still run in fresh processes; afterwards this process forgets
    the plugin (the registry, the path and its modules are restored).
    """
    env, _ = installed
    site = env["PYTHONPATH"].split(os.pathsep)[0]
    monkeypatch.syspath_prepend(site)
    monkeypatch.setenv("GDLA_STRICT_PLUGINS", "0")
    monkeypatch.setattr(gdla.registry, "registry", gdla.registry.Registry())
    try:
        yield
    finally:
        for module in [name for name in sys.modules if name.split(".")[0] == "gdla_example_plugin"]:
            del sys.modules[module]


@pytest.mark.usefixtures("loaded_here")
def test_used_through_the_python_api() -> None:
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(12, 4, generator=generator, dtype=torch.float64)
    B = torch.randn(12, 2, generator=generator, dtype=torch.float64)
    listed, errors = io.StringIO(), io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gdla.PluginWarning)  # a broken built-in must not matter here
        entries = {e.name: e.to_dict() for e in gdla.registry.entries()}
        result = gdla.solve(gdla.get_problem("least-squares")(A, B), optimizer="nadam")
        tiny = gdla.solve(gdla.get_problem("least-squares")(A, B * 1e-160))  # its declared form: normalised units
        with contextlib.redirect_stdout(listed):
            main(["plugins", "--json"])
        with contextlib.redirect_stderr(errors):
            bad = main(["solve", "least-squares", "--optimizer", "nadam", "-o", "beta=0.9"])
    reference = torch.linalg.lstsq(A, B).solution
    error = float(torch.linalg.norm(result.solution - reference) / torch.linalg.norm(reference))
    assert entries["least-squares"] == {
        "name": "least-squares",
        "kind": "problem",
        "plugin": "gdla-example-plugin",
        "version": "0.1.0",
    }
    assert entries["nadam"] == {
        "name": "nadam",
        "kind": "optimizer",
        "plugin": "gdla-example-plugin",
        "version": "0.1.0",
    }
    assert result.stop_reason == "converged"
    assert error < 1e-8
    assert result.metrics["error"] == pytest.approx(error, rel=1e-3, abs=1e-14)
    # the units promise, for a third party
    tiny_error = float(gdla.relative_norm(tiny.solution - reference * 1e-160, reference * 1e-160))
    assert tiny.stop_reason == "converged" and tiny_error < 1e-8
    listed_here = [e for e in json.loads(listed.getvalue()) if e["plugin"] == "gdla-example-plugin"]
    assert sorted((e["kind"], e["name"]) for e in listed_here) == [
        ("optimizer", "nadam"),
        ("problem", "least-squares"),
    ]
    # the plugin's own option check reaches the command line as a clean error
    assert bad == 1
    assert "gdla: error: nadam: unknown option(s) beta" in errors.getvalue()


def test_used_through_the_command_line(installed: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    env, _ = installed
    generator = torch.Generator().manual_seed(1)
    A = torch.randn(10, 3, generator=generator, dtype=torch.float64)
    np.save(tmp_path / "A.npy", A.numpy())
    done = _run(
        [
            sys.executable,
            "-m",
            "gdla",
            "solve",
            "least-squares",
            "--matrix",
            str(tmp_path / "A.npy"),
            "--optimizer",
            "nadam",
            "-o",
            "betas=[0.9, 0.99]",
            "--json",
        ],
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    assert (result["problem"], result["optimizer"], result["stop_reason"]) == ("least-squares", "nadam", "converged")
    assert result["settings"]["lr"] == 0.01
    expected = torch.linalg.lstsq(A, torch.ones(10, 1, dtype=torch.float64)).solution.squeeze(-1)
    torch.testing.assert_close(torch.tensor(result["solution"], dtype=torch.float64), expected, rtol=1e-8, atol=0)


def test_the_plugins_own_tests_pass(installed: tuple[dict[str, str], Path]) -> None:
    env, source = installed
    done = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], env=env, cwd=source)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
