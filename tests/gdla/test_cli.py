"""The ``gdla`` command, run in-process through ``gdla.cli.main``.

The first part registers a tiny linear-system problem in an empty registry and checks the
command's mechanics (output formats, options, exit codes, error messages). The second part runs
the built-in plugins as users do: real matrix files, real solvers, the demo.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import torch

import gdla
from gdla import registry as registry_module
from gdla.cli import main, parse_option
from gdla.validation import check_matrix


# -- a tiny plugin --------------------------------------------------------------------------------
class LinearSystem(gdla.Problem):
    r"""Solve ``A x = 1``: :math:`L(x) = \tfrac12 \|A x - 1\|^2`."""

    name = "linear-system"
    summary = "A x = 1 for a square A"

    def __init__(self, A: Any) -> None:  # shape: (n, n)
        A = check_matrix(A, "A", square=True, batch=False)
        if torch.linalg.matrix_rank(A) < A.shape[0]:
            raise gdla.SingularMatrixError(
                f"A: expected an invertible matrix, received a singular {tuple(A.shape)} one"
            )
        self.A = A
        self.b = torch.ones(A.shape[0], dtype=A.dtype)

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> LinearSystem:
        n = size or 3
        return cls(torch.eye(n, dtype=dtype) + 0.1 * torch.ones(n, n, dtype=dtype))

    dtype = property(lambda self: self.A.dtype)
    device = property(lambda self: self.A.device)

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> LinearSystem:
        A = self.A.to(dtype=dtype or self.dtype, device=device or self.device)
        return self if A is self.A else type(self)(A)

    def init_params(self, generator: torch.Generator) -> gdla.Params:
        return {"x": torch.zeros_like(self.b)}

    def loss(self, params: gdla.Params) -> torch.Tensor:
        return ((self.A @ params["x"] - self.b) ** 2).sum() / 2

    def solution(self, params: gdla.Params) -> torch.Tensor:
        return params["x"]

    def residual(self, params: gdla.Params) -> torch.Tensor:
        return torch.linalg.norm(self.A @ params["x"] - self.b) / torch.linalg.norm(self.b)

    def reference(self) -> torch.Tensor:
        return torch.linalg.solve(self.A, self.b)

    def error(self, params: gdla.Params) -> torch.Tensor:
        return torch.linalg.norm(params["x"] - self.reference()) / torch.linalg.norm(self.reference())


class GD(gdla.GradientOptimizer):
    name = "gd"
    summary = "gradient descent"
    default_lr = 0.5

    def build(self, tensors: list[torch.Tensor], lr: float | None, **options: Any) -> torch.optim.Optimizer:
        unknown = set(options) - {"momentum", "nesterov"}
        if unknown:
            raise gdla.InputError(f"gd: unknown option(s) {sorted(unknown)}")
        return torch.optim.SGD(tensors, lr=lr, **options)


class Hopeless(GD):
    name = "hopeless"

    def expected_steps(self, tol: float) -> float:
        return 1e9


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> registry_module.Registry:
    fresh = registry_module.Registry(entry_points=lambda: [])
    monkeypatch.setattr(registry_module, "registry", fresh)
    plugin = type(
        "Tiny",
        (),
        {
            "register_problems": staticmethod(gdla.hookimpl(lambda register: register(LinearSystem))),
            "register_optimizers": staticmethod(gdla.hookimpl(lambda register: [register(GD), register(Hopeless)])),
        },
    )
    fresh.register_plugin(plugin, name="tiny", dist="tiny-dist", version="1.2")
    return fresh


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("gdla: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# -- plugins and info -----------------------------------------------------------------------------
def test_plugins_json(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    assert json.loads(out) == [
        {"name": "linear-system", "kind": "problem", "plugin": "tiny-dist", "version": "1.2"},
        {"name": "gd", "kind": "optimizer", "plugin": "tiny-dist", "version": "1.2"},
        {"name": "hopeless", "kind": "optimizer", "plugin": "tiny-dist", "version": "1.2"},
    ]


def test_plugins_table(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PLUGIN", "VERSION", "SUMMARY"]
    assert lines[1].split()[:4] == ["problem", "linear-system", "tiny-dist", "1.2"]
    assert lines[1].endswith("A x = 1 for a square A")
    assert lines[2].split()[:5] == ["optimizer", "gd", "tiny-dist", "1.2", "gradient"]
    loaded, detail = gdla.extension_status()
    assert f"compiled extension gdla._C: {'loaded' if loaded else 'unavailable'} ({detail})" in out


def test_plugins_table_reports_failures(tiny: registry_module.Registry, capsys: pytest.CaptureFixture[str]) -> None:
    tiny.failures.append("gdla plugin skipped: distribution 'x', entry point 'y' (z): import failed: boom")
    code, out, _ = run(capsys, "plugins")
    assert code == 0 and "1 plugin(s) skipped; see `gdla info`" in out
    code, out, _ = run(capsys, "info")
    assert "plugin load failures: 1\n  gdla plugin skipped: distribution 'x'" in out


def test_info(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", "--json")
    assert code == 0
    facts = json.loads(out)
    assert facts["gdla"] == gdla.__version__ and facts["torch"] == torch.__version__
    assert facts["problems"] == ["linear-system"] and facts["optimizers"] == ["gd", "hopeless"]
    loaded, detail = gdla.extension_status()
    assert facts["extension"] == {"loaded": loaded, "detail": detail}
    assert facts["plugin_failures"] == []
    code, text, _ = run(capsys, "info")
    assert text.startswith(f"gdla {gdla.__version__} (Python ")
    assert "problems: linear-system\noptimizers: gd, hopeless\nplugin load failures: 0" in text


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "solve" in out and "Exit codes" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"gdla {gdla.__version__}"
    code, out, _ = run(capsys, "solve", "--help")
    assert code == 0 and "--option KEY=VALUE" in out


# -- solve ----------------------------------------------------------------------------------------
def test_solve_prints_a_summary(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "solve", "linear-system", "--optimizer", "gd")
    assert code == 0, err
    assert out.startswith("linear-system with gd (autograd): converged after ")
    assert "the relative residual reached tol" in out


def test_solve_json_matches_the_reference(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "solve",
        "linear-system",
        "--size",
        "4",
        "--optimizer",
        "gd",
        "--lr",
        "0.4",
        "--seed",
        "3",
        "--tol",
        "1e-12",
        "--json",
        "-o",
        "momentum=0.5",
        "--option",
        "nesterov=true",
    )
    assert code == 0, err
    result = json.loads(out)
    A = torch.eye(4, dtype=torch.float64) + 0.1 * torch.ones(4, 4, dtype=torch.float64)
    expected = torch.linalg.solve(A, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(torch.tensor(result["solution"], dtype=torch.float64), expected, rtol=1e-11, atol=0)
    assert (result["problem"], result["optimizer"], result["stop_reason"]) == ("linear-system", "gd", "converged")
    settings = result["settings"]
    assert (settings["lr"], settings["seed"], settings["tol"], settings["dtype"]) == (0.4, 3, 1e-12, "float64")
    assert (settings["optimizer.momentum"], settings["optimizer.nesterov"]) == (0.5, True)
    assert result["metrics"]["residual"] <= 1e-12


def test_solve_steps_dtype_and_patience(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "solve", "linear-system", "--optimizer", "gd", "--steps", "3", "--dtype", "float32", "--json"
    )
    result = json.loads(out)
    assert code == 0 and (result["steps"], result["stop_reason"]) == (3, "max_steps")
    assert result["settings"]["dtype"] == "float32" and len(result["losses"]) == 3
    code, out, _ = run(
        capsys, "solve", "linear-system", "--optimizer", "gd", "--lr", "1e-9", "--patience", "4", "--json"
    )
    assert (json.loads(out)["stop_reason"], json.loads(out)["steps"]) == ("stalled", 5)


def test_solve_from_a_matrix_file(tiny: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    A = np.array([[2.0, 0.5, 0.0], [0.0, 1.5, 0.2], [0.1, 0.0, 1.0]])
    np.save(tmp_path / "A.npy", A)
    code, out, err = run(
        capsys,
        "solve",
        "linear-system",
        "--matrix",
        str(tmp_path / "A.npy"),
        "--optimizer",
        "gd",
        "--lr",
        "0.3",
        "--json",
    )
    assert code == 0, err
    expected = np.linalg.solve(A, np.ones(3))
    np.testing.assert_allclose(json.loads(out)["solution"], expected, rtol=1e-9)


def test_solve_plot(tiny: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "loss.png"
    code, out, err = run(capsys, "solve", "linear-system", "--optimizer", "gd", "--plot", str(path))
    assert code == 0, err
    assert f"loss plot saved to {path}" in out
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert float(image[..., :3].std()) > 0.05, "the plot must not be blank"
    svg = tmp_path / "loss.svg"
    assert run(capsys, "solve", "linear-system", "--optimizer", "gd", "--plot", str(svg))[0] == 0
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("loss.jpeg", "plot: expected a file ending in .png, .pdf, .svg, received"),
        ("missing/loss.png", "plot: the folder '"),
    ],
)
def test_solve_plot_path_is_checked_before_running(
    tiny: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, pattern: str
) -> None:
    code, out, err = run(capsys, "solve", "linear-system", "--optimizer", "gd", "--plot", str(tmp_path / name))
    assert code == 1 and out == ""  # nothing ran
    assert error_line(err).startswith("gdla: error: --" + pattern)


def test_loss_plot_skips_what_a_log_axis_cannot_show(tmp_path: Path) -> None:
    # zero, NaN and Inf losses (a run that hit the answer exactly, or diverged) must not break
    # the log scale nor warn; a run with nothing positive is listed in the legend only
    from gdla.plotting import _positive, loss_figure, plot_losses

    assert _positive([1.0, 0.0, math.nan, math.inf, 1e-3, -2.0]) == ([1, 5], [1.0, 1e-3])
    result = gdla.Result(
        solution=torch.zeros(1),
        params={},
        losses=[4.0, 0.0, math.nan],
        steps=3,
        stop_reason="diverged",
        seconds=0.1,
        backend="autograd",
        metrics={},
        problem="p",
        optimizer="o",
    )
    assert plot_losses(result, tmp_path / "nan.png").stat().st_size > 1000
    axes = loss_figure(result).axes[0]
    assert axes.get_yscale() == "log"
    assert [tuple(line.get_xdata()) for line in axes.get_lines()] == [(1,)]
    result.losses = [0.0]
    axes = loss_figure(result).axes[0]
    assert axes.get_yscale() == "linear"
    assert axes.get_legend().get_texts()[0].get_text().endswith("(nothing to plot)")


def test_diverged_run_exits_1(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "solve", "linear-system", "--optimizer", "gd", "--lr", "50")
    assert code == 1 and "diverged" in out.splitlines()[0]


def test_gdla_warnings_are_one_line(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "solve", "linear-system", "--optimizer", "hopeless", "--steps", "5")
    assert code == 0
    warning_lines = [line for line in err.splitlines() if line.startswith("gdla: warning: ")]
    assert len(warning_lines) == 1 and "expected to need about 1e+09 steps" in warning_lines[0]
    assert "ConvergenceWarning" not in err and ".py:" not in err


# -- usage errors (exit 2) ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["solve", "linear-system", "--lr", "0"], "argument --lr: expected a number > 0, received '0'"),
        (["solve", "linear-system", "--lr", "-1"], "argument --lr: expected a number > 0, received '-1'"),
        (["solve", "linear-system", "--lr", "nan"], "argument --lr: expected a finite number, received 'nan'"),
        (["solve", "linear-system", "--lr", "fast"], "argument --lr: expected a number, received 'fast'"),
        (["solve", "linear-system", "--steps", "0"], "argument --steps: expected an integer >= 1, received '0'"),
        (["solve", "linear-system", "--steps", "2.5"], "argument --steps: expected an integer, received '2.5'"),
        (["solve", "linear-system", "--tol=-1e-3"], "argument --tol: expected a number >= 0, received '-1e-3'"),
        (["solve", "linear-system", "--size", "0"], "argument --size: expected an integer >= 1, received '0'"),
        (["solve", "linear-system", "--seed", "-1"], "argument --seed: expected an integer >= 0, received '-1'"),
        (["solve", "linear-system", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
        (["solve", "linear-system", "--backend", "gpu"], "argument --backend: invalid choice: 'gpu'"),
        (
            ["solve", "linear-system", "--matrix", "a.npy", "--size", "3"],
            "argument --size: not allowed with argument --matrix",
        ),
        (
            ["solve", "linear-system", "-o", "momentum"],
            "argument --option/-o: expected KEY=VALUE such as momentum=0.9, received 'momentum'",
        ),
        (["solve", "linear-system", "-o", "lr=0.1"], "argument --option/-o: 'lr' is not an optimizer option; use --lr"),
        (["solve", "linear-system", "-o", "max_steps=3"], "'max_steps' is not an optimizer option; use --steps"),
        (["solve", "linear-system", "-o", "x=nan"], "option x: expected a finite value, received 'nan'"),
        (["solve", "linear-system", "-o", "x=-Infinity"], "option x: expected a finite value, received '-Infinity'"),
        (["solve"], "the following arguments are required: PROBLEM"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_exit_2(tiny: Any, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in error_line(err)
    assert err.startswith("usage: gdla")


def test_unknown_names_exit_2_and_list_valid_ones(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "solve", "linear-sistem")
    assert code == 2
    assert error_line(err) == (
        "gdla: error: problem: unknown name 'linear-sistem' (did you mean 'linear-system'?); "
        "valid problems: linear-system"
    )
    code, _, err = run(capsys, "solve", "linear-system", "--optimizer", "adamw")
    assert code == 2 and "valid optimizers: gd, hopeless" in error_line(err)


def test_optimizer_option_errors_exit_1(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "solve", "linear-system", "--optimizer", "gd", "-o", "bogus=1")
    assert code == 1 and error_line(err) == "gdla: error: gd: unknown option(s) ['bogus']"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("momentum=0.9", ("momentum", 0.9)),
        ("steps_per=10", ("steps_per", 10)),
        ("nesterov=true", ("nesterov", True)),
        ("nesterov=False", ("nesterov", False)),
        ("start=None", ("start", None)),
        ("schedule=cosine", ("schedule", "cosine")),
        ("betas=[0.9, 0.99]", ("betas", [0.9, 0.99])),
        ('schedule_options={"gamma": 0.5}', ("schedule_options", {"gamma": 0.5})),
        ("weight-decay=1e-4", ("weight_decay", 1e-4)),
        ("name= spaced ", ("name", "spaced")),
        ("empty=", ("empty", "")),
        ("eps=.5", ("eps", 0.5)),
        ("T_max=1_000", ("T_max", 1000)),
    ],
)
def test_parse_option(text: str, expected: tuple[str, Any]) -> None:
    assert parse_option(text) == expected


# -- data errors with the built-in problems (exit 1) ----------------------------------------------
def save(tmp_path: Path, name: str, array: Any) -> str:
    path = tmp_path / name
    if name.endswith(".pt"):
        torch.save(array, path)
    else:
        np.save(path, array)
    return str(path)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda t: save(t, "ones.npy", np.ones((3, 3))), ["for problem 'inverse'", "singular", "pseudo"]),
        (lambda t: save(t, "nan.npy", np.array([[1.0, math.nan], [0.0, 1.0]])), ["nan.npy", "1 NaN/Inf entry"]),
        (lambda t: save(t, "inf.pt", torch.tensor([[1.0, math.inf], [0.0, 1.0]])), ["inf.pt", "NaN/Inf"]),
        (lambda t: save(t, "int.npy", np.eye(3, dtype=np.int64)), ["int.npy", "floating-point", "torch.int64"]),
        (lambda t: save(t, "empty.npy", np.zeros((0, 3))), ["empty.npy", "non-empty"]),
        (lambda t: save(t, "vector.npy", np.ones(3)), ["vector.npy", "expected a 2-D array, found shape (3,)"]),
        (lambda t: save(t, "batch.pt", torch.ones(2, 2, 2)), ["batch.pt", "2-D array"]),
        (lambda t: str(t / "missing.npy"), ["missing.npy", "no such file"]),
        (lambda t: save(t, "matrix.csv", np.eye(2)).replace(".npy", ""), ["unsupported format", ".mtx"]),
        (
            lambda t: (t / "bad.mtx").write_text("not a matrix market file") and str(t / "bad.mtx"),
            ["bad.mtx", "cannot be read as .mtx"],
        ),
    ],
)
def test_bad_matrix_files_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make: Any, words: list[str]
) -> None:
    path = make(tmp_path)
    code, out, err = run(capsys, "solve", "inverse", "--matrix", path)
    assert code == 1 and out == ""
    line = error_line(err)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"


def test_non_square_where_square_is_needed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = save(tmp_path, "wide.npy", np.ones((2, 3)))
    code, _, err = run(capsys, "solve", "toeplitz", "--matrix", path)
    assert code == 1
    assert "expected a square matrix" in error_line(err) and "(2, 3)" in error_line(err)


def test_builtin_inverse_from_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    A = torch.eye(5, dtype=torch.float64) + 0.2 * torch.rand(5, 5, generator=generator, dtype=torch.float64)
    path = save(tmp_path, "A.pt", {"A": A})
    code, out, err = run(capsys, "solve", "inverse", "--matrix", path, "--optimizer", "newton-schulz", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["stop_reason"] == "converged" and result["metrics"]["residual"] <= 1e-10
    inverse = torch.linalg.inv(A)
    solution = torch.tensor(result["solution"], dtype=torch.float64)
    assert float(torch.linalg.norm(solution - inverse) / torch.linalg.norm(inverse)) < 1e-9


def test_builtin_inverse_rectangular_gives_the_pseudo_inverse(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    generator = torch.Generator().manual_seed(1)
    A = torch.rand(3, 5, generator=generator, dtype=torch.float64)
    import scipy.io

    scipy.io.mmwrite(tmp_path / "A.mtx", A.numpy())
    code, out, err = run(
        capsys, "solve", "inverse", "--matrix", str(tmp_path / "A.mtx"), "--optimizer", "newton-schulz", "--json"
    )
    assert code == 0, err
    solution = torch.tensor(json.loads(out)["solution"], dtype=torch.float64)
    torch.testing.assert_close(solution, torch.linalg.pinv(A), rtol=1e-8, atol=1e-10)


def test_builtin_optimizer_rejects_unknown_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "solve", "inverse", "--optimizer", "momentum", "-o", "bogus=1")
    assert code == 1 and "bogus" in error_line(err)


def test_demo_quick(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "demo.png"
    code, out, err = run(capsys, "demo", "--quick", "--out", str(out_file))
    assert code == 0, err
    table = out.splitlines()
    assert table[0].split() == ["PROBLEM", "OPTIMIZER", "STEPS", "STOP", "RESIDUAL", "ERROR", "SECONDS"]
    # columns are two or more spaces apart; cells hold single spaces ("time limit")
    cells = [re.split(r"\s{2,}", line) for line in table[1:] if line and not line.startswith(("note:", "figure"))]
    rows = {row[0]: row for row in cells}
    assert all(len(row) == 7 for row in cells), cells
    assert "inverse (random)" in rows and "inverse (diagonal)" in rows
    for problem in ("inverse", "svd", "sparse", "toeplitz", "toeplitz-net"):
        assert problem in rows, f"{problem} missing from the demo table"
    # seed 000's comparison: the diagonal matrix converges (and in fewer steps than the random one)
    diagonal, random = rows["inverse (diagonal)"], rows["inverse (random)"]
    assert diagonal[1] == "momentum" and diagonal[3] == "converged" and float(diagonal[5]) < 1e-8
    assert int(diagonal[2]) < int(random[2])
    assert f"figure saved to {out_file}" in out
    image = matplotlib.image.imread(out_file)
    assert image.shape[0] > 500 and image.shape[1] > 800


def test_demo_rejects_a_bad_output_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "demo", "--out", str(tmp_path / "demo.gif"))
    assert code == 1 and out == ""
    assert "out: expected a file ending in .png, .pdf, .svg" in error_line(err)


def test_python_dash_m_gdla() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gdla", "solve", "inverse", "--lr", "-2"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "gdla: error: argument --lr: expected a number > 0, received '-2'" in done.stderr
    assert "Traceback" not in done.stderr
