"""Reading matrix files: values and dtypes survive, and every bad file gives one clear error."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch

from gdla.errors import InputError, MatrixFileError
from gdla.io import SUPPORTED_SUFFIXES, check_save_path, load_matrix, save_matrix

MATRIX = np.array([[4.0, -1.5, 0.0], [0.25, 3.0, 1e-8]])  # shape: (2, 3)


def test_npy_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, MATRIX)
    loaded = load_matrix(path)
    assert loaded.dtype == torch.float64 and loaded.device.type == "cpu"
    assert torch.equal(loaded, torch.from_numpy(MATRIX))


def test_npy_float32_and_fortran_order_and_big_endian(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.asfortranarray(MATRIX.astype(np.float32)))
    loaded = load_matrix(tmp_path / "f.npy")
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded, torch.from_numpy(MATRIX.astype(np.float32)))
    np.save(tmp_path / "big.npy", MATRIX.astype(">f8"))
    assert torch.equal(load_matrix(str(tmp_path / "big.npy")), torch.from_numpy(MATRIX))


def test_integer_data_stays_integer(tmp_path: Path) -> None:
    # converting here would hide from the user that the file holds integers
    np.save(tmp_path / "i.npy", np.arange(6, dtype=np.int64).reshape(2, 3))
    loaded = load_matrix(tmp_path / "i.npy")
    assert loaded.dtype == torch.int64
    assert loaded.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_pt_tensor_and_single_entry_dict(tmp_path: Path) -> None:
    tensor = torch.from_numpy(MATRIX).float()
    torch.save(tensor, tmp_path / "t.pt")
    assert torch.equal(load_matrix(tmp_path / "t.pt"), tensor)
    torch.save({"A": tensor.double()}, tmp_path / "d.pth")
    loaded = load_matrix(tmp_path / "d.pth")
    assert loaded.dtype == torch.float64 and torch.equal(loaded, tensor.double())


def test_pt_sparse_tensor_becomes_dense(tmp_path: Path) -> None:
    dense = torch.from_numpy(MATRIX)
    torch.save(dense.to_sparse(), tmp_path / "s.pt")
    loaded = load_matrix(tmp_path / "s.pt")
    assert loaded.layout == torch.strided and torch.equal(loaded, dense)


def test_pt_tensor_that_required_grad(tmp_path: Path) -> None:
    torch.save(torch.ones(2, 2, requires_grad=True), tmp_path / "g.pt")
    loaded = load_matrix(tmp_path / "g.pt")
    assert not loaded.requires_grad and torch.equal(loaded, torch.ones(2, 2))


def test_mtx_array_and_coordinate_formats(tmp_path: Path) -> None:
    scipy.io.mmwrite(tmp_path / "dense.mtx", MATRIX)
    assert torch.equal(load_matrix(tmp_path / "dense.mtx"), torch.from_numpy(MATRIX))
    sparse = scipy.sparse.coo_matrix(MATRIX)
    scipy.io.mmwrite(tmp_path / "sparse.mtx", sparse)
    loaded = load_matrix(tmp_path / "sparse.mtx")
    assert loaded.shape == (2, 3)
    assert torch.equal(loaded, torch.from_numpy(MATRIX))


def test_mtx_written_by_hand(tmp_path: Path) -> None:
    text = "%%MatrixMarket matrix coordinate real general\n% a comment\n3 3 2\n1 1 2.5\n3 2 -1\n"
    (tmp_path / "hand.MTX").write_text(text)
    loaded = load_matrix(tmp_path / "hand.MTX")  # the suffix is case-insensitive
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[0, 0], expected[2, 1] = 2.5, -1.0
    assert torch.equal(loaded, expected)


def test_coordinate_mtx_stays_sparse_when_asked(tmp_path: Path) -> None:
    sparse = scipy.sparse.coo_matrix(MATRIX)
    scipy.io.mmwrite(tmp_path / "sparse.mtx", sparse)
    loaded = load_matrix(tmp_path / "sparse.mtx", keep_sparse=True)
    assert loaded.layout == torch.sparse_coo and loaded.is_coalesced() and loaded.dtype == torch.float64
    assert loaded.indices().tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 1, 2]]
    assert loaded.values().tolist() == [4.0, -1.5, 0.25, 3.0, 1e-8]
    # an array-format file is dense whatever is asked
    scipy.io.mmwrite(tmp_path / "dense.mtx", MATRIX)
    assert load_matrix(tmp_path / "dense.mtx", keep_sparse=True).layout == torch.strided


def test_pattern_mtx_gives_positions_only(tmp_path: Path) -> None:
    text = "%%MatrixMarket matrix coordinate pattern general\n3 3 3\n1 1\n3 2\n3 2\n"  # (3, 2) twice
    (tmp_path / "p.mtx").write_text(text)
    loaded = load_matrix(tmp_path / "p.mtx", keep_sparse=True)
    assert loaded.dtype == torch.bool and loaded.indices().tolist() == [[0, 2], [0, 1]]
    assert loaded.values().tolist() == [True, True]


def test_symmetric_and_integer_coordinate_files(tmp_path: Path) -> None:
    text = "%%MatrixMarket matrix coordinate integer symmetric\n2 2 2\n1 1 5\n2 1 -3\n"
    (tmp_path / "s.mtx").write_text(text)
    loaded = load_matrix(tmp_path / "s.mtx", keep_sparse=True)
    assert loaded.dtype == torch.int64  # integers stay integers, as in the dense reading
    assert loaded.to_dense().tolist() == [[5, -3], [-3, 0]]


def test_sparse_pt_stays_sparse_when_asked(tmp_path: Path) -> None:
    sparse = torch.tensor(MATRIX).to_sparse()
    torch.save(sparse, tmp_path / "s.pt")
    kept = load_matrix(tmp_path / "s.pt", keep_sparse=True)
    assert kept.layout == torch.sparse_coo and torch.equal(kept.to_dense(), torch.from_numpy(MATRIX))
    assert load_matrix(tmp_path / "s.pt").layout == torch.strided


def test_sparse_pt_with_indices_out_of_bounds_is_refused(tmp_path: Path) -> None:
    bad = torch.sparse_coo_tensor(torch.tensor([[0, 9], [0, 0]]), torch.ones(2), (2, 2), check_invariants=False)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(MatrixFileError, match=r"bad.pt.*cannot be read as .pt"):
        load_matrix(tmp_path / "bad.pt", keep_sparse=True)


def test_save_round_trips(tmp_path: Path) -> None:
    dense = torch.tensor(MATRIX)
    sparse = dense.to_sparse()
    save_matrix(sparse, tmp_path / "s.mtx")
    assert "coordinate" in (tmp_path / "s.mtx").read_text().splitlines()[0]
    back = load_matrix(tmp_path / "s.mtx", keep_sparse=True)
    assert torch.equal(back.indices(), sparse.indices()) and torch.equal(back.values(), sparse.values())
    save_matrix(sparse, tmp_path / "s.pt")
    assert torch.equal(load_matrix(tmp_path / "s.pt", keep_sparse=True).values(), sparse.values())
    for name in ("d.npy", "d.mtx", "d.PT"):
        save_matrix(dense, tmp_path / name)
        assert torch.equal(load_matrix(tmp_path / name), dense)
    save_matrix((dense, dense[0]), tmp_path / "t.pt")
    loaded = torch.load(tmp_path / "t.pt", weights_only=True)
    assert isinstance(loaded, tuple) and torch.equal(loaded[1], dense[0])


@pytest.mark.parametrize(
    ("value", "name", "words"),
    [
        (torch.eye(2).to_sparse(), "s.npy", ["sparse (2, 2) tensor with 2 stored entries", ".mtx", ".pt"]),
        ((torch.eye(2), torch.ones(2)), "t.mtx", ["2 tensors", "(2, 2), (2,)", "save it as .pt"]),
        (torch.ones(2, 2, 2), "b.mtx", ["shape (2, 2, 2)", ".pt"]),
        ("text", "x.pt", ["expected a tensor", "str"]),
    ],
)
def test_save_refuses_what_the_format_cannot_hold(tmp_path: Path, value: object, name: str, words: list) -> None:
    with pytest.raises(MatrixFileError) as info:
        save_matrix(value, tmp_path / name)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert not (tmp_path / name).exists()


def test_check_save_path(tmp_path: Path) -> None:
    assert check_save_path(tmp_path / "a.mtx") == tmp_path / "a.mtx"
    with pytest.raises(MatrixFileError, match=r"--save: expected a file ending in .pt, .pth, .npy, .mtx"):
        check_save_path(tmp_path / "a.csv", "--save")
    with pytest.raises(MatrixFileError, match=r"--save: the folder .*missing.* does not exist"):
        check_save_path(tmp_path / "missing" / "a.pt", "--save")
    assert check_save_path(tmp_path / "UP.NPY") == tmp_path / "UP.NPY"  # suffixes in any case


def test_check_save_path_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.npy")
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "file.mtx").write_text("old")
    (tmp_path / "link.pt").symlink_to(tmp_path / "pipe.npy")
    assert check_save_path(tmp_path / "file.mtx") == tmp_path / "file.mtx"  # a regular file is replaced
    refused = [("pipe.npy", "a FIFO (named pipe)"), ("folder.pt", "a folder"), ("link.pt", "a FIFO (named pipe)")]
    for name, kind in refused:
        with pytest.raises(MatrixFileError) as info:
            check_save_path(tmp_path / name, "--save")
        assert str(info.value) == (
            f"--save: expected a new file or a regular file to replace, received {str(tmp_path / name)!r}, "
            f"which is {kind}"
        )


def test_supported_suffixes() -> None:
    assert set(SUPPORTED_SUFFIXES) == {".npy", ".pt", ".pth", ".mtx"}


# -- errors ---------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.npy"
    with pytest.raises(MatrixFileError, match=r"matrix file '.*nowhere.npy': no such file"):
        load_matrix(path)


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(MatrixFileError, match="not a regular file"):
        load_matrix(tmp_path / "dir.npy")


@pytest.mark.parametrize("name", ["a.csv", "a.npz", "matrix"])
def test_unsupported_suffix(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("1,2\n3,4\n")
    with pytest.raises(MatrixFileError, match=r"unsupported format .*expected one of .npy, .pt, .pth, .mtx") as info:
        load_matrix(tmp_path / name)
    assert name in str(info.value)
    assert ("no suffix" in str(info.value)) == (name == "matrix")


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".mtx"])
def test_corrupt_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(b"\x00\x01 this is not a matrix \xff" * 3)
    with pytest.raises(MatrixFileError, match=rf"junk\{suffix}': cannot be read as \{suffix}"):
        load_matrix(path)


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".mtx"])
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(MatrixFileError, match="cannot be read"):
        load_matrix(path)


def test_npy_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([[{"a": 1}, None]], dtype=object), allow_pickle=True)
    with pytest.raises(MatrixFileError, match=r"obj.npy': cannot be read as .npy \(ValueError: .*pickle"):
        load_matrix(tmp_path / "obj.npy")


def test_npy_string_array(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(MatrixFileError, match=r"expected numeric data, found NumPy dtype <U1"):
        load_matrix(tmp_path / "s.npy")


def test_npz_archive_named_npy(tmp_path: Path) -> None:
    with open(tmp_path / "arch.npy", "wb") as handle:
        np.savez(handle, a=MATRIX)
    with pytest.raises(MatrixFileError, match=r"\.npz archive"):
        load_matrix(tmp_path / "arch.npy")


def test_pt_with_arbitrary_pickle_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("unpickled code ran",))

    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump(Payload(), handle)
    with pytest.raises(MatrixFileError, match=r"evil.pt': cannot be read as .pt"):
        load_matrix(tmp_path / "evil.pt")


@pytest.mark.parametrize(
    ("payload", "pattern"),
    [
        ({"A": torch.ones(2, 2), "B": torch.ones(2, 2)}, r"exactly one tensor, found a dict with keys 'A', 'B'"),
        ({}, r"found a dict with keys none"),
        ({"A": torch.ones(2, 2), "note": "x"}, r"found a dict with keys 'A', 'note'"),
        ([torch.ones(2, 2)], r"exactly one tensor, found list"),
        (3.0, r"found float"),
    ],
)
def test_pt_without_a_single_tensor(tmp_path: Path, payload: object, pattern: str) -> None:
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(MatrixFileError, match=pattern):
        load_matrix(tmp_path / "x.pt")


@pytest.mark.parametrize("shape", [(2, 2, 2), ()])
def test_not_one_or_two_dimensional(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "nd.npy", np.zeros(shape))
    torch.save(torch.zeros(shape), tmp_path / "nd.pt")
    for name in ("nd.npy", "nd.pt"):
        expected = f"{name}': expected a 2-D array (or a 1-D row), found shape {shape}"
        with pytest.raises(MatrixFileError, match=re.escape(expected)):
            load_matrix(tmp_path / name)


def test_a_row_is_read_as_one_dimensional(tmp_path: Path) -> None:
    np.save(tmp_path / "row.npy", np.arange(4.0))
    assert load_matrix(tmp_path / "row.npy").tolist() == [0.0, 1.0, 2.0, 3.0]


def test_permission_errors_become_matrix_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "A.npy", np.eye(2))

    def denied(self: Path, *args: object, **kwargs: object) -> bool:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "exists", denied)
    with pytest.raises(MatrixFileError, match=r"A\.npy': cannot be read \(Permission denied\)"):
        load_matrix(tmp_path / "A.npy")


def test_errors_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        load_matrix(tmp_path / "missing.pt")
