"""Corrupt or mistyped .npy/.npz files get fedge's one-line DataError naming the file and
what is wrong, never NumPy's advice to load pickles."""

import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from fedge.central.dataset_arrays import read_npz as read_samples
from fedge.central.edge import load_inputs
from fedge.central.npfile import read_npy, read_npz
from fedge.cli.main import app
from fedge.errors import DataError


def _objects_npz(path):
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, dtype=np.int64))


def _truncated_npz(path):
    np.savez(path, x=np.zeros((50, 4), dtype=np.float32), y=np.zeros(50, dtype=np.int64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_crc_npz(path):
    np.savez(path, x=np.arange(64, dtype=np.float32), y=np.zeros(64, dtype=np.int64))
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # inside x's array bytes
    path.write_bytes(bytes(data))


def _zip_of_text(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.txt", "hello")


NPZ = {
    "garbage": (lambda p: p.write_bytes(b"not numpy at all" * 10), "not an .npz file"),
    "empty": (lambda p: p.write_bytes(b""), "not an .npz file"),
    "pickled objects": (_objects_npz, "Python objects"),
    "truncated": (_truncated_npz, "corrupt .npz file"),
    "bad crc": (_bad_crc_npz, "cannot be read"),
    "zip of other files": (_zip_of_text, "not a NumPy array"),
    "an .npy": (lambda p: p.write_bytes(_npy_bytes(p)), "single .npy array"),
}


def _npy_bytes(path):
    other = path.with_name("other.npy")
    np.save(other, np.zeros(3))
    return other.read_bytes()


def _check(info, path, message):
    text = str(info.value)
    assert str(path) in text and message in text, text
    assert "allow_pickle" not in text and "\n" not in text, text


@pytest.mark.parametrize("case", NPZ, ids=list(NPZ))
def test_a_bad_npz_is_a_data_error_naming_the_file(tmp_path, case):
    make, message = NPZ[case]
    path = tmp_path / "bad.npz"
    make(path)
    for read in (read_npz, read_samples):
        with pytest.raises(DataError) as info:
            read(path)
        _check(info, path, message)
    with pytest.raises(DataError) as info:
        load_inputs(path)
    _check(info, path, message)


NPY = {
    "garbage": (lambda p: p.write_bytes(b"\x00\x01garbage" * 20), "not a .npy file"),
    "pickled objects": (lambda p: np.save(p, np.array([{}], dtype=object)), "Python objects"),
    "truncated": (
        lambda p: (np.save(p, np.zeros(1000)), p.write_bytes(p.read_bytes()[:300])),
        "corrupt .npy file",
    ),
    "an .npz": (lambda p: _npz_as(p), "is an .npz archive"),
}


def _npz_as(path):
    with path.open("wb") as f:  # np.savez would append .npz to the name
        np.savez(f, x=np.zeros(2))


@pytest.mark.parametrize("case", NPY, ids=list(NPY))
def test_a_bad_npy_is_a_data_error_naming_the_file(tmp_path, case):
    make, message = NPY[case]
    path = tmp_path / "bad.npy"
    make(path)
    for read in (read_npy, load_inputs):
        with pytest.raises(DataError) as info:
            read(path)
        _check(info, path, message)


def test_good_files_still_load(tmp_path):
    np.savez(tmp_path / "ok.npz", x=np.ones((2, 3), dtype=np.float32), y=np.array([0, 1]))
    np.save(tmp_path / "ok.npy", np.arange(4))
    arrays = read_npz(tmp_path / "ok.npz")
    assert sorted(arrays) == ["x", "y"] and arrays["x"].shape == (2, 3)
    assert read_npy(tmp_path / "ok.npy").tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match="file not found"):
        read_npz(tmp_path / "missing.npz")


@pytest.mark.parametrize(
    "command",
    [
        ["client", "--server", "http://127.0.0.1:9", "--data", "{npz}"],
        ["edge", "predict", "digits", "{npy}", "--cache", "{tmp}"],
        ["data", "upload", "mine", "{npz}", "--store", "{tmp}/store"],
    ],
    ids=["client", "edge predict", "data upload"],
)
def test_the_cli_says_which_file_is_bad_in_one_line(tmp_path, command):
    npz, npy = tmp_path / "bad.npz", tmp_path / "bad.npy"
    npz.write_bytes(b"garbage" * 10)
    npy.write_bytes(b"garbage" * 10)
    args = [a.format(npz=npz, npy=npy, tmp=tmp_path) for a in command]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})
    assert result.exit_code == DataError.exit_code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "bad.np" in lines[0] and "allow_pickle" not in lines[0], lines[0]
