"""The ``gdla`` command on the built-in plugins, as users run it: real matrix files, real solvers, the demo."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import torch

CliRun = Callable[..., tuple[int, str, str]]
ErrorOf = Callable[[str], str]


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
        (lambda t: save(t, "int.npy", np.ones((3, 3), dtype=np.int64)), ["int.npy", "singular"]),
        (lambda t: save(t, "empty.npy", np.zeros((0, 3))), ["empty.npy", "non-empty"]),
        (lambda t: save(t, "vector.npy", np.ones(3)), ["vector.npy", "A: expected a matrix", "(3,)"]),
        (lambda t: save(t, "batch.pt", torch.ones(2, 2, 2)), ["batch.pt", "2-D array (or a 1-D row)"]),
        (lambda t: str(t / "missing.npy"), ["missing.npy", "no such file"]),
        (lambda t: save(t, "matrix.csv", np.eye(2)).replace(".npy", ""), ["unsupported format", ".mtx"]),
        (
            lambda t: (t / "bad.mtx").write_text("not a matrix market file") and str(t / "bad.mtx"),
            ["bad.mtx", "cannot be read as .mtx"],
        ),
    ],
)
def test_bad_matrix_files_exit_1(cli: CliRun, error_of: ErrorOf, tmp_path: Path, make: Any, words: list[str]) -> None:
    path = make(tmp_path)
    code, out, err = cli("solve", "inverse", "--matrix", path)
    assert code == 1 and out == ""
    line = error_of(err)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"


def test_non_square_where_square_is_needed(cli: CliRun, error_of: ErrorOf, tmp_path: Path) -> None:
    path = save(tmp_path, "wide.npy", np.ones((2, 3)))
    code, _, err = cli("solve", "toeplitz", "--matrix", path)
    assert code == 1
    assert "expected a square matrix" in error_of(err) and "(2, 3)" in error_of(err)


def test_builtin_inverse_from_file(cli: CliRun, error_of: ErrorOf, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    A = torch.eye(5, dtype=torch.float64) + 0.2 * torch.rand(5, 5, generator=generator, dtype=torch.float64)
    path = save(tmp_path, "A.pt", {"A": A})
    code, out, err = cli("solve", "inverse", "--matrix", path, "--optimizer", "newton-schulz", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["stop_reason"] == "converged" and result["metrics"]["residual"] <= 1e-10
    inverse = torch.linalg.inv(A)
    solution = torch.tensor(result["solution"], dtype=torch.float64)
    assert float(torch.linalg.norm(solution - inverse) / torch.linalg.norm(inverse)) < 1e-9


def test_builtin_inverse_rectangular_gives_the_pseudo_inverse(cli: CliRun, error_of: ErrorOf, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    A = torch.rand(3, 5, generator=generator, dtype=torch.float64)
    import scipy.io

    scipy.io.mmwrite(tmp_path / "A.mtx", A.numpy())
    code, out, err = cli(
        "solve", "inverse", "--matrix", str(tmp_path / "A.mtx"), "--optimizer", "newton-schulz", "--json"
    )
    assert code == 0, err
    solution = torch.tensor(json.loads(out)["solution"], dtype=torch.float64)
    torch.testing.assert_close(solution, torch.linalg.pinv(A), rtol=1e-8, atol=1e-10)


def test_builtin_optimizer_rejects_unknown_options(cli: CliRun, error_of: ErrorOf) -> None:
    code, _, err = cli("solve", "inverse", "--optimizer", "momentum", "-o", "bogus=1")
    assert code == 2 and "bogus" in error_of(err)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["inverse", "-p", "side=diagonal"], ["side", "diagonal"]),
        (["inverse", "-p", "init=gaussian"], ["init", "gaussian"]),
        (["inverse", "--optimizer", "momentum", "-o", "momentum=2"], ["momentum", "2"]),
        (["inverse", "--optimizer", "momentum", "-o", "nonsense=1"], ["nonsense"]),
        (["inverse", "--optimizer", "cg", "-o", "blocks=all"], ["blocks", "all"]),
        (["inverse", "--optimizer", "heavy-ball", "-o", "margin=-1"], ["margin"]),
        (["sparse", "-p", "hops=0"], ["hops"]),
        (["toeplitz", "-p", "loss=l1"], ["loss", "l1"]),
    ],
)
def test_invalid_option_values_are_usage_errors(cli: CliRun, error_of: ErrorOf, argv: list[str], words: list) -> None:
    code, out, err = cli("solve", *argv)
    assert code == 2 and out == "", err
    line = error_of(err)
    for word in words:
        assert word in line, line


def test_a_setting_the_method_refuses_is_a_usage_error(cli: CliRun, error_of: ErrorOf) -> None:
    code, out, err = cli("solve", "inverse", "--optimizer", "cg", "--lr", "0.1")
    assert code == 2 and out == ""
    assert error_of(err).startswith("gdla: error: lr: optimizer 'cg' has no learning rate")


def test_bad_data_with_problem_options_is_still_bad_data(cli: CliRun, error_of: ErrorOf, tmp_path: Path) -> None:
    path = save(tmp_path, "nan.npy", np.array([[1.0, math.nan], [0.0, 1.0]]))
    code, out, err = cli("solve", "inverse", "--matrix", path, "-p", "pseudo=true")
    assert code == 1 and out == ""
    assert error_of(err).startswith(f"gdla: error: matrix file {path!r} for problem 'inverse': ")
    assert "1 NaN/Inf entry" in error_of(err)


def test_integer_matrix_files_are_solved_in_the_float_dtype(cli: CliRun, tmp_path: Path) -> None:
    import scipy.io

    A = np.array([[4, 1, 0], [1, 3, 1], [0, 1, 2]], dtype=np.int64)
    scipy.io.mmwrite(tmp_path / "int.mtx", A)
    for extra in ([], ["--dtype", "float32"]):
        code, out, err = cli("solve", "inverse", "--matrix", str(tmp_path / "int.mtx"), "--json", *extra)
        assert code == 0, err
        result = json.loads(out)
        expected = np.linalg.inv(A.astype(np.float64))
        tolerance = 1e-9 if not extra else 1e-4
        assert np.allclose(np.array(result["solution"]), expected, rtol=tolerance, atol=tolerance)
        assert result["settings"]["dtype"] == ("float32" if extra else "float64")


def test_a_one_dimensional_row_where_the_problem_takes_rows(cli: CliRun, tmp_path: Path) -> None:
    path = save(tmp_path, "row.npy", np.array([0.0, 0.0, 1.0, 2.0, 4.0, 2.0, 1.0, 0.0, 0.0]))
    code, out, err = cli("solve", "toeplitz", "--matrix", path, "--json")
    assert code == 0, err
    assert json.loads(out)["stop_reason"] == "converged"


def test_an_unreadable_folder_is_a_clear_error(
    cli: CliRun, error_of: ErrorOf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(tmp_path, "A.npy", np.eye(3))

    def denied(self: Path, *args: object, **kwargs: object) -> bool:  # what stat() says in a folder without x
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "exists", denied)
    code, _, err = cli("solve", "inverse", "--matrix", path)
    assert code == 1 and "cannot be read (Permission denied)" in error_of(err)


def test_a_size_too_large_for_memory_is_refused_before_allocating(cli: CliRun, error_of: ErrorOf) -> None:
    for problem in ("inverse", "svd", "sparse", "toeplitz", "toeplitz-net"):
        code, out, err = cli("solve", problem, "--size", "200000")
        assert code == 1 and out == "", err
        line = error_of(err)
        assert "needs about" in line and "available" in line and "of size 200000" in line, line


def test_demo_quick(cli: CliRun, error_of: ErrorOf, tmp_path: Path) -> None:
    out_file = tmp_path / "demo.png"
    code, out, err = cli("demo", "--quick", "--out", str(out_file))
    assert code == 0, err
    table = out.splitlines()
    assert table[0].split() == ["PROBLEM", "OPTIMIZER", "STEPS", "STOP", "RESIDUAL", "ERROR", "SECONDS"]
    # columns are two or more spaces apart; cells hold single spaces ("auto → cg")
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


def test_demo_rejects_a_bad_output_path(cli: CliRun, error_of: ErrorOf, tmp_path: Path) -> None:
    code, out, err = cli("demo", "--out", str(tmp_path / "demo.gif"))
    assert code == 1 and out == ""
    assert "out: expected a file ending in .png, .pdf, .svg" in error_of(err)


def test_python_dash_m_gdla() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gdla", "solve", "inverse", "--lr", "-2"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "gdla: error: argument --lr: expected a number > 0, received '-2'" in done.stderr
    assert "Traceback" not in done.stderr


def test_problem_options_reach_the_problem(cli: CliRun, error_of: ErrorOf, tmp_path: Path) -> None:
    singular = str(tmp_path / "singular.npy")
    np.save(singular, np.array([[1.0, 2.0], [2.0, 4.0]]))
    code, _, err = cli("solve", "inverse", "--matrix", singular)
    assert code == 1 and "-p pseudo=true" in error_of(err)
    code, out, err = cli("solve", "inverse", "--matrix", singular, "-p", "pseudo=true", "--json")
    assert code == 0, err
    expected = np.linalg.pinv(np.array([[1.0, 2.0], [2.0, 4.0]]))
    np.testing.assert_allclose(json.loads(out)["solution"], expected, rtol=1e-9, atol=1e-12)
    for bad in ("bogus=1", "A=[[1.0]]"):
        code, _, err = cli("solve", "inverse", "--matrix", singular, "-p", bad)
        name = bad.split("=")[0]
        assert code == 2 and f"{name}: problem 'inverse' has no option {name!r}" in error_of(err)


def test_declared_options_are_listed_and_checked_with_a_suggestion(cli: CliRun, error_of: ErrorOf) -> None:
    code, out, _ = cli("plugins", "--json")
    assert code == 0
    listed = {(entry["kind"], entry["name"]): entry["options"] for entry in json.loads(out)}
    inverse = {option["name"]: option for option in listed["problem", "inverse"]}
    assert inverse["pseudo"]["default"] is False and "pseudo-inverse" in inverse["pseudo"]["doc"]
    assert {option["name"] for option in listed["optimizer", "cg"]} == {"blocks", "restart"}
    assert {option["name"] for option in listed["optimizer", "momentum"]} >= {"momentum", "schedule"}
    assert all(listed[key] for key in listed if key[0] == "problem")  # every built-in problem declares its options
    code, _, err = cli("solve", "inverse", "-p", "sides=left")
    assert code == 2 and "did you mean 'side'?" in error_of(err)
    code, _, err = cli("solve", "inverse", "--optimizer", "cg", "-o", "block=global")
    assert code == 2 and "did you mean 'blocks'?" in error_of(err)


def test_schedule_options_must_be_a_mapping(cli: CliRun, error_of: ErrorOf) -> None:
    code, _, err = cli("solve", "inverse", "--optimizer", "adam", "-o", "schedule=cosine", "-o", "schedule_options=[1]")
    assert code == 2 and "schedule_options: expected a mapping" in error_of(err)


# -- a sparse Matrix Market file stays sparse for the sparse problem --------------------------------
def write_tridiagonal(tmp_path: Path, n: int, field: str = "real") -> tuple[str, Any]:
    import scipy.io
    import scipy.sparse

    rng = np.random.default_rng(5)
    matrix = scipy.sparse.diags([rng.normal(size=n - 1), 4 + rng.random(n), rng.normal(size=n - 1)], [-1, 0, 1])
    path = tmp_path / f"tri-{field}.mtx"
    scipy.io.mmwrite(path, matrix.tocoo(), field=field)
    return str(path), matrix.tocsr()


def test_sparse_problem_solves_a_coordinate_file_and_saves_it_sparse(cli: CliRun, tmp_path: Path) -> None:
    from gdla.io import load_matrix

    path, matrix = write_tridiagonal(tmp_path, 2_000)
    out_file = tmp_path / "S.mtx"
    code, out, err = cli("solve", "sparse", "--matrix", path, "-p", "loss=mse", "--save", str(out_file), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["stop_reason"] == "converged" and result["settings"]["optimizer.method"] == "cg"
    assert set(result["solution"]) == {"shape", "indices", "values"} and len(result["solution"]["values"]) == 5_998
    saved = load_matrix(out_file, keep_sparse=True)
    assert saved.layout == torch.sparse_coo and saved._nnz() == 5_998
    expected = torch.from_numpy(matrix.toarray()[saved.indices()[0].numpy(), saved.indices()[1].numpy()])
    torch.testing.assert_close(saved.values(), expected, rtol=1e-9, atol=1e-10)


def test_sparse_problem_on_a_pattern_file(cli: CliRun, tmp_path: Path) -> None:
    path, _ = write_tridiagonal(tmp_path, 500, field="pattern")
    code, out, err = cli("solve", "sparse", "--matrix", path, "--json", "-p", "columns=6")
    assert code == 0, err
    result = json.loads(out)
    assert result["stop_reason"] == "converged" and result["metrics"]["error"] < 1e-9
    assert "solution saved" not in out


def test_a_sparse_answer_cannot_go_to_npy_and_says_so_before_the_run(
    cli: CliRun, error_of: ErrorOf, tmp_path: Path
) -> None:
    path, _ = write_tridiagonal(tmp_path, 50)
    code, out, err = cli("solve", "sparse", "--matrix", path, "--save", str(tmp_path / "S.npy"))
    assert code == 1 and out == ""
    assert error_of(err) == (
        "gdla: error: --save: problem 'sparse' stores its operator sparse, so its answer is a sparse tensor; "
        f".npy stores dense arrays only, received {str(tmp_path / 'S.npy')!r}: use .mtx (coordinate) or .pt"
    )
    assert not (tmp_path / "S.npy").exists()
    code, _, err = cli("solve", "inverse", "--size", "3", "--save", str(tmp_path / "no" / "M.npy"))
    assert code == 1 and "--save: the folder" in error_of(err)


def test_a_dense_method_on_a_sparse_file_is_refused_with_a_method_that_fits(
    cli: CliRun, error_of: ErrorOf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gdla import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**30)
    path, _ = write_tridiagonal(tmp_path, 3_000)
    code, out, err = cli(
        "solve", "sparse", "--matrix", path, "--optimizer", "levenberg-marquardt", "-o", "method=dense"
    )
    assert code == 1 and out == ""
    line = error_of(err)
    for words in (
        "'levenberg-marquardt' would form dense matrices",
        "3000 × 3000 operator stored sparse with 8,998",
        "1 GiB is available",
        "use optimizer='cg'",
    ):
        assert words in line, line


def test_other_problems_still_get_a_coordinate_file_dense(cli: CliRun, tmp_path: Path) -> None:
    path, matrix = write_tridiagonal(tmp_path, 6)
    code, out, err = cli("solve", "inverse", "--matrix", path, "--json", "--save", str(tmp_path / "M.npy"))
    assert code == 0, err
    inverse = np.linalg.inv(matrix.toarray())
    np.testing.assert_allclose(np.array(json.loads(out)["solution"]), inverse, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.load(tmp_path / "M.npy"), inverse, rtol=1e-9, atol=1e-12)


def test_solve_with_stderr_closed_still_solves_and_exits_by_its_codes(tmp_path: Any) -> None:
    """``gdla solve ... 2>&-``: no stderr for a progress bar, warnings or errors; the run and exit codes stand."""
    import os
    import subprocess
    import sys

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gdla", *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            cwd=tmp_path, preexec_fn=lambda: os.close(2),
        )

    ok = run("solve", "inverse", "--size", "8")
    assert ok.returncode == 0 and "converged" in ok.stdout
    assert run("solve", "nonsense").returncode == 2
