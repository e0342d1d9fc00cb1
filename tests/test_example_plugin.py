"""The example third-party plugin, installed as a real distribution and used as a user would.

The plugin is built into a wheel and installed with ``pip install --target`` into a temporary
folder, never into the shared environment; subprocesses see it through ``PYTHONPATH``. They use
it through ``gdla.solve``, through ``python -m gdla`` and by running the plugin's own tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

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


def test_used_through_the_python_api(installed: tuple[dict[str, str], Path]) -> None:
    env, _ = installed
    script = textwrap.dedent(
        """
        import contextlib, io, json, warnings, torch, gdla
        from gdla.cli import main
        warnings.simplefilter("ignore", gdla.PluginWarning)  # a broken built-in must not matter here
        entries = {e.name: e.to_dict() for e in gdla.registry.entries()}
        generator = torch.Generator().manual_seed(0)
        A = torch.randn(12, 4, generator=generator, dtype=torch.float64)
        B = torch.randn(12, 2, generator=generator, dtype=torch.float64)
        result = gdla.solve(gdla.get_problem("least-squares")(A, B), optimizer="nadam")
        reference = torch.linalg.lstsq(A, B).solution
        tiny = gdla.solve(gdla.get_problem("least-squares")(A, B * 1e-160))  # its declared form: normalised units
        listed, errors = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(listed):
            main(["plugins", "--json"])
        with contextlib.redirect_stderr(errors):
            bad = main(["solve", "least-squares", "--optimizer", "nadam", "-o", "beta=0.9"])
        print(json.dumps({
            "problem": entries["least-squares"], "optimizer": entries["nadam"],
            "stop": result.stop_reason,
            "error": float(torch.linalg.norm(result.solution - reference) / torch.linalg.norm(reference)),
            "reported_error": result.metrics["error"],
            "tiny_stop": tiny.stop_reason,
            "tiny_error": float(gdla.relative_norm(tiny.solution - reference * 1e-160, reference * 1e-160)),
            "listed": [e for e in json.loads(listed.getvalue()) if e["plugin"] == "gdla-example-plugin"],
            "bad_code": bad, "bad_stderr": errors.getvalue(),
        }))
        """
    )
    done = _run([sys.executable, "-c", script], env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["problem"] == {
        "name": "least-squares",
        "kind": "problem",
        "plugin": "gdla-example-plugin",
        "version": "0.1.0",
    }
    assert data["optimizer"] == {
        "name": "nadam",
        "kind": "optimizer",
        "plugin": "gdla-example-plugin",
        "version": "0.1.0",
    }
    assert data["stop"] == "converged"
    assert data["error"] < 1e-8
    assert data["reported_error"] == pytest.approx(data["error"], rel=1e-3, abs=1e-14)
    assert data["tiny_stop"] == "converged" and data["tiny_error"] < 1e-8  # the units promise, for a third party
    assert sorted((e["kind"], e["name"]) for e in data["listed"]) == [
        ("optimizer", "nadam"),
        ("problem", "least-squares"),
    ]
    # the plugin's own option check reaches the command line as a clean error
    assert data["bad_code"] == 1
    assert "gdla: error: nadam: unknown option(s) beta" in data["bad_stderr"]


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
