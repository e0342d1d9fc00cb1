"""``gdla solve --save FILE`` refuses a format that cannot hold the answer before the run, not after it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gdla import loop


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the run started before --save was checked")

    monkeypatch.setattr(loop, "solve", refuse)


@pytest.mark.parametrize(("suffix", "words"), [(".npy", ".npy holds one matrix"), (".mtx", ".mtx holds one matrix")])
def test_an_svd_answer_as_one_matrix_is_refused_before_the_run(
    no_run: None, cli: Any, error_of: Callable[[str], str], tmp_path: Path, suffix: str, words: str
) -> None:
    target = tmp_path / f"usv{suffix}"
    code, out, err = cli("solve", "svd", "--save", str(target))
    assert code == 1 and out == ""
    assert error_of(err) == (
        f"gdla: error: --save: path {str(target)!r}: the answer is 3 tensors (shapes (5, 4), (4,), (4, 4)); "
        f"{words}, save it as .pt (refused before the run)"
    )
    assert not target.exists()
