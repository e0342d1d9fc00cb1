"""The ``gdla`` command, run in-process through ``gdla.cli.main``.

The first part registers a tiny linear-system problem in an empty registry and checks the
command's mechanics (output formats, options, exit codes, error messages). The second part runs
the built-in plugins as users do: real matrix files, real solvers, the demo.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import torch

import gdla
from gdla import registry as registry_module
from gdla.cli import parse_option
from gdla.options import Option
from gdla.validation import check_matrix

CliRun = Callable[..., tuple[int, str, str]]
ErrorOf = Callable[[str], str]


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


# -- plugins and info -----------------------------------------------------------------------------
def test_plugins_json(tiny: Any, cli: CliRun, error_of: ErrorOf) -> None:
    code, out, _ = cli("plugins", "--json")
    assert code == 0
    assert json.loads(out) == [  # plugins that declare no options list none
        {"name": "linear-system", "kind": "problem", "plugin": "tiny-dist", "version": "1.2", "options": []},
        {"name": "gd", "kind": "optimizer", "plugin": "tiny-dist", "version": "1.2", "options": []},
        {"name": "hopeless", "kind": "optimizer", "plugin": "tiny-dist", "version": "1.2", "options": []},
    ]


def test_plugins_table(tiny: Any, cli: CliRun, error_of: ErrorOf) -> None:
    code, out, _ = cli("plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PLUGIN", "VERSION", "SUMMARY"]
    assert lines[1].split()[:4] == ["problem", "linear-system", "tiny-dist", "1.2"]
    assert lines[1].endswith("A x = 1 for a square A")
    assert lines[2].split()[:5] == ["optimizer", "gd", "tiny-dist", "1.2", "gradient"]
    loaded, detail = gdla.extension_status()
    assert f"compiled extension gdla._C: {'loaded' if loaded else 'unavailable'} ({detail})" in out


def test_plugins_table_reports_failures(tiny: registry_module.Registry, cli: CliRun, error_of: ErrorOf) -> None:
    tiny.failures.append("gdla plugin skipped: distribution 'x', entry point 'y' (z): import failed: boom")
    code, out, _ = cli("plugins")
    assert code == 0 and "1 plugin(s) skipped; see `gdla info`" in out
    code, out, _ = cli("info")
    assert "plugin load failures: 1\n  gdla plugin skipped: distribution 'x'" in out


def test_info(tiny: Any, cli: CliRun, error_of: ErrorOf) -> None:
    code, out, _ = cli("info", "--json")
    assert code == 0
    facts = json.loads(out)
    assert facts["gdla"] == gdla.__version__ and facts["torch"] == torch.__version__
    assert facts["problems"] == ["linear-system"] and facts["optimizers"] == ["gd", "hopeless"]
    loaded, detail = gdla.extension_status()
    assert facts["extension"] == {"loaded": loaded, "detail": detail}
    assert facts["plugin_failures"] == []
    code, text, _ = cli("info")
    assert text.startswith(f"gdla {gdla.__version__} (Python ")
    assert "problems: linear-system\noptimizers: gd, hopeless\nplugin load failures: 0" in text


def test_help_and_version(cli: CliRun, error_of: ErrorOf) -> None:
    code, out, _ = cli("--help")
    assert code == 0 and "solve" in out and "Exit codes" in out
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"gdla {gdla.__version__}"
    code, out, _ = cli("solve", "--help")
    assert code == 0 and "--option KEY=VALUE" in out


# -- solve ----------------------------------------------------------------------------------------
def test_solve_prints_a_summary(tiny: Any, cli: CliRun, error_of: ErrorOf) -> None:
    code, out, err = cli("solve", "linear-system", "--optimizer", "gd")
    assert code == 0, err
    assert out.startswith("linear-system with gd (autograd): converged after ")
    assert "the relative residual reached tol" in out


def test_solve_json_matches_the_reference(tiny: Any, cli: CliRun, error_of: ErrorOf) -> None:
    code, out, err = cli(
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


def test_solve_steps_dtype_and_patience(tiny: Any, cli: CliRun, error_of: ErrorOf) -> None:
    code, out, _ = cli("solve", "linear-system", "--optimizer", "gd", "--steps", "3", "--dtype", "float32", "--json")
    result = json.loads(out)
    assert code == 0 and (result["steps"], result["stop_reason"]) == (3, "max_steps")
    assert result["settings"]["dtype"] == "float32" and len(result["losses"]) == 4
    code, out, _ = cli("solve", "linear-system", "--optimizer", "gd", "--lr", "1e-9", "--patience", "4", "--json")
    assert (json.loads(out)["stop_reason"], json.loads(out)["steps"]) == ("stalled", 5)


def test_solve_from_a_matrix_file(tiny: Any, cli: CliRun, error_of: ErrorOf, tmp_path: Path) -> None:
    A = np.array([[2.0, 0.5, 0.0], [0.0, 1.5, 0.2], [0.1, 0.0, 1.0]])
    np.save(tmp_path / "A.npy", A)
    code, out, err = cli(
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


def test_solve_plot(tiny: Any, cli: CliRun, error_of: ErrorOf, tmp_path: Path) -> None:
    path = tmp_path / "loss.png"
    code, out, err = cli("solve", "linear-system", "--optimizer", "gd", "--plot", str(path))
    assert code == 0, err
    assert f"loss plot saved to {path}" in out
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert float(image[..., :3].std()) > 0.05, "the plot must not be blank"
    svg = tmp_path / "loss.svg"
    assert cli("solve", "linear-system", "--optimizer", "gd", "--plot", str(svg))[0] == 0
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("loss.jpeg", "plot: expected a file ending in .png, .pdf, .svg, received"),
        ("missing/loss.png", "plot: the folder '"),
    ],
)
def test_solve_plot_path_is_checked_before_running(
    tiny: Any, cli: CliRun, error_of: ErrorOf, tmp_path: Path, name: str, pattern: str
) -> None:
    code, out, err = cli("solve", "linear-system", "--optimizer", "gd", "--plot", str(tmp_path / name))
    assert code == 1 and out == ""  # nothing ran
    assert error_of(err).startswith("gdla: error: --" + pattern)


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


def test_diverged_run_exits_1(tiny: Any, cli: CliRun, error_of: ErrorOf) -> None:
    code, out, _ = cli("solve", "linear-system", "--optimizer", "gd", "--lr", "50")
    assert code == 1 and "diverged" in out.splitlines()[0]


def test_gdla_warnings_are_one_line(tiny: Any, cli: CliRun, error_of: ErrorOf) -> None:
    code, out, err = cli("solve", "linear-system", "--optimizer", "hopeless", "--steps", "5")
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
        (
            ["solve", "linear-system", "--seed", str(2**64)],
            f"argument --seed: expected an integer that fits in 64 bits, received '{2**64}'",
        ),
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
def test_usage_errors_exit_2(tiny: Any, cli: CliRun, error_of: ErrorOf, argv: list[str], message: str) -> None:
    code, out, err = cli(*argv)
    assert code == 2 and out == ""
    assert message in error_of(err)
    # one paragraph: the error line alone, pointing at the help of the command it concerns
    assert err.count("\n") == 1 and err.startswith("gdla: error: ")
    assert re.search(r"\(see `gdla( solve| demo| plugins| info)? --help`\)$", err.strip())


def test_unknown_names_exit_2_and_list_valid_ones(tiny: Any, cli: CliRun, error_of: ErrorOf) -> None:
    code, _, err = cli("solve", "linear-sistem")
    assert code == 2
    assert error_of(err) == (
        "gdla: error: problem: unknown name 'linear-sistem' (did you mean 'linear-system'?); "
        "valid problems: linear-system"
    )
    code, _, err = cli("solve", "linear-system", "--optimizer", "adamw")
    assert code == 2 and "valid optimizers: gd, hopeless" in error_of(err)


def test_optimizer_option_errors_exit_1(tiny: Any, cli: CliRun, error_of: ErrorOf) -> None:
    code, _, err = cli("solve", "linear-system", "--optimizer", "gd", "-o", "bogus=1")
    assert code == 1 and error_of(err) == "gdla: error: gd: unknown option(s) ['bogus']"


class DeclaredGD(GD):
    """``gd`` that declares its options: what its constructor refuses of them is bad usage, whatever it says."""

    name = "declared-gd"
    options = {"momentum": Option(), "nesterov": Option()}

    def build(self, tensors: list[torch.Tensor], lr: float | None, **options: Any) -> torch.optim.Optimizer:
        if options.get("momentum", 0) > 1:
            raise gdla.InputError("no good")  # names nothing: the type and the declaration decide
        return super().build(tensors, lr, **options)


def test_usage_is_told_by_type_not_by_message(tiny: registry_module.Registry, cli: CliRun, error_of: ErrorOf) -> None:
    hook = staticmethod(gdla.hookimpl(lambda register: register(DeclaredGD)))
    plugin = type("Declared", (), {"register_optimizers": hook})
    tiny.register_plugin(plugin, name="declared", dist="tiny-dist", version="1.2")
    code, out, err = cli("solve", "linear-system", "--optimizer", "declared-gd", "-o", "momentum=2")
    assert (code, out, error_of(err)) == (2, "", "gdla: error: no good")
    code, _, err = cli("solve", "linear-system", "--optimizer", "declared-gd", "-o", "nesterov_=1")
    assert code == 2 and "has no option 'nesterov_' (did you mean 'nesterov'?)" in error_of(err)
    code, out, err = cli("solve", "linear-system", "--optimizer", "declared-gd", "-o", "momentum=0.5", "--json")
    assert code == 0 and json.loads(out)["stop_reason"] == "converged", err


def test_problem_options_a_problem_does_not_take_exit_2(tiny: Any, cli: CliRun, error_of: ErrorOf) -> None:
    code, out, err = cli("solve", "linear-system", "--optimizer", "gd", "-p", "bogus=1", "-p", "other=2")
    assert code == 2 and out == ""
    assert error_of(err).startswith(
        "gdla: error: --problem-option: problem 'linear-system' does not accept these options (bogus, other): "
    )
    assert "unexpected keyword argument" in error_of(err)


def test_every_parsed_command_has_its_function() -> None:
    from gdla.cli_parse import build_parser
    from gdla.commands import COMMANDS

    choices = next(action.choices for action in build_parser()._actions if action.dest == "command")
    assert set(choices) == set(COMMANDS) == {"plugins", "info", "solve", "demo"}


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


def test_importing_the_command_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, gdla.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"
