"""``--save`` never loses data: a failed run or a write cut short keeps the old file; odd targets are refused first."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from gdla import commands
from gdla.errors import MatrixFileError
from gdla.io import save_matrix

CliRun = Callable[..., tuple[int, str, str]]
ErrorOf = Callable[[str], str]
OLD = b"the previous answer, which must survive\n"
DIVERGES = ("solve", "inverse", "--optimizer", "momentum", "--lr", "1000")
QUICK = ("solve", "inverse", "--size", "3", "--steps", "5", "--tol", "0")


def _old_file(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(OLD)
    return path


def _left_behind(folder: Path, *kept: Path) -> list[str]:
    """Files in ``folder`` other than ``kept``: a temporary file left behind shows up here."""
    return sorted(p.name for p in folder.iterdir() if p not in kept)


def test_a_diverged_run_keeps_the_old_file(cli: CliRun, tmp_path: Path) -> None:
    target = _old_file(tmp_path, "M.npy")
    code, out, _ = cli(*DIVERGES, "--save", str(target))
    assert code == 1 and "diverged" in out.splitlines()[0]
    assert out.splitlines()[-1] == (
        f"  solution not saved: the run diverged, so {target} was not written (an existing file keeps its contents)"
    )
    assert "solution saved" not in out
    assert target.read_bytes() == OLD and _left_behind(tmp_path, target) == []


def test_a_diverged_run_with_json_says_so_on_stderr(cli: CliRun, tmp_path: Path) -> None:
    target = _old_file(tmp_path, "M.pt")
    code, out, err = cli(*DIVERGES, "--json", "--save", str(target))
    assert code == 1 and '"stop_reason": "diverged"' in out
    assert f"gdla: warning: --save: solution not saved: the run diverged, so {target} was not written" in err
    assert target.read_bytes() == OLD


def test_a_successful_run_replaces_the_file_and_keeps_its_permissions(cli: CliRun, tmp_path: Path) -> None:
    target = _old_file(tmp_path, "M.npy")
    target.chmod(0o640)
    code, out, err = cli(*QUICK, "--save", str(target))
    assert code == 0, err
    assert out.splitlines()[-1] == f"  solution saved to {target}"
    assert np.load(target).shape == (3, 3) and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _left_behind(tmp_path, target) == []


@pytest.mark.parametrize("name", ["up.NPY", "up.Pt", "up.MTX", "up.pth"])
def test_the_file_written_is_the_file_named(cli: CliRun, tmp_path: Path, name: str) -> None:
    from gdla.io import load_matrix

    code, out, err = cli(*QUICK, "--save", str(tmp_path / name))
    assert code == 0, err
    assert out.splitlines()[-1] == f"  solution saved to {tmp_path / name}"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # not up.NPY.npy
    assert load_matrix(tmp_path / name).shape == (3, 3)


NOT_FINITE = "the answer has NaN or infinite entries"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: torch.eye(2), None),
        (lambda: torch.eye(2).to_sparse(), None),
        (lambda: torch.tensor([[1.0, float("nan")]]), NOT_FINITE),
        (lambda: (torch.eye(2), torch.tensor([float("inf")])), NOT_FINITE),
        (lambda: torch.tensor([[0.0, float("inf")], [1.0, 0.0]]).to_sparse(), NOT_FINITE),
        (lambda: torch.tensor([[0.0, float("nan")], [1.0, 0.0]]).to_sparse_csr(), NOT_FINITE),
    ],
)
@pytest.mark.parametrize("stop", ["converged", "max_steps", "stalled", "callback"])
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_which_answers_are_saved(make: Callable[[], Any], reason: str | None, stop: str) -> None:
    value = make()
    assert commands._unsaved_reason(SimpleNamespace(stop_reason=stop, solution=value)) == reason
    assert commands._unsaved_reason(SimpleNamespace(stop_reason="diverged", solution=value)) == "the run diverged"


def test_a_write_cut_short_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _old_file(tmp_path, "M.npy")

    def half_then_full_disk(stream: Any, array: np.ndarray, allow_pickle: bool = True) -> None:
        stream.write(array.tobytes()[: array.nbytes // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", half_then_full_disk)
    with pytest.raises(MatrixFileError) as info:
        save_matrix(torch.ones(50, 50), target)
    assert str(info.value) == f"path {str(target)!r}: cannot be written (No space left on device)"
    assert target.read_bytes() == OLD and _left_behind(tmp_path, target) == []


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _old_file(tmp_path, "M.pt")

    def interrupted(obj: Any, stream: Any) -> None:
        stream.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_matrix(torch.ones(2, 2), target)
    assert target.read_bytes() == OLD and _left_behind(tmp_path, target) == []


@pytest.mark.parametrize("name", ["big.npy", "big.pt", "big.mtx"])
def test_a_file_size_limit_in_a_real_process_keeps_the_old_file(tmp_path: Path, name: str) -> None:
    resource = pytest.importorskip("resource", reason="needs POSIX resource limits")
    target = _old_file(tmp_path, name)
    limit = 64 * 1024  # `ulimit -f 64`; the 100 x 100 float64 answer needs 80,000 bytes or more

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    argv = [*QUICK[:2], "--size", "100", "--steps", "2", "--tol", "0", "--save", str(target)]
    done = subprocess.run(
        [sys.executable, "-m", "gdla", *argv],
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=limited,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert f"gdla: error: path {str(target)!r}: cannot be written (File too large)" in done.stderr
    assert "solution saved" not in done.stdout and "Traceback" not in done.stderr
    assert target.read_bytes() == OLD and _left_behind(tmp_path, target) == []


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda path: os.mkfifo(path), "a FIFO (named pipe)"),
        (lambda path: path.mkdir(), "a folder"),
    ],
)
def test_a_target_that_is_not_a_regular_file_is_refused_before_the_run(
    cli: CliRun, error_of: ErrorOf, tmp_path: Path, make: Callable[[Path], None], kind: str
) -> None:
    target = tmp_path / "M.npy"
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs POSIX FIFOs")
    make(target)
    code, out, err = cli(*DIVERGES, "--save", str(target))  # would print a summary if it ran
    assert code == 1 and out == ""
    assert error_of(err) == (
        f"gdla: error: --save: expected a new file or a regular file to replace, received {str(target)!r}, "
        f"which is {kind}"
    )


def test_a_link_to_a_file_replaces_that_file(tmp_path: Path) -> None:
    real = _old_file(tmp_path, "real.npy")
    link = tmp_path / "link.npy"
    link.symlink_to(real)
    save_matrix(torch.eye(2), link)
    assert link.is_symlink() and np.array_equal(np.load(real), np.eye(2, dtype=np.float32))
    assert _left_behind(tmp_path, real, link) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write any file")
def test_a_read_only_file_is_not_replaced(tmp_path: Path) -> None:
    target = _old_file(tmp_path, "M.npy")
    target.chmod(0o444)
    with pytest.raises(MatrixFileError, match=r"M.npy'?: cannot be written \(Permission denied\)"):
        save_matrix(torch.eye(2), target)
    assert target.read_bytes() == OLD
