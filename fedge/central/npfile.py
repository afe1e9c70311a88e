"""Reading the ``.npy`` and ``.npz`` files users hand to fedge, with fedge's own errors.

``np.load`` takes any file that is neither a zip archive nor an ``.npy`` array for a
pickle, so a corrupt or mistyped file fails with NumPy's advice to pass
``allow_pickle=True`` (which would run code from the file). These functions never unpickle
and turn every failure into a one-line :class:`~fedge.errors.DataError` that names the file
and what is wrong with it. NumPy only: the edge app uses them on devices without torch.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fedge.errors import DataError

__all__ = ["read_npy", "read_npz"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive


def _kind(path: Path) -> str:
    """``"npz"``, ``"npy"`` or ``"other"``, from the file's first bytes."""
    try:
        with path.open("rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a file") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head.startswith(_ZIP_MAGICS):
        return "npz"
    if head == _NPY_MAGIC:
        return "npy"
    return "other"


def _problem(exc: BaseException) -> str:
    """What ``exc``, raised while reading an array, says is wrong, in fedge's words."""
    text = " ".join(str(exc).split())
    if "allow_pickle" in text:
        return "it holds Python objects (a pickled object array), which fedge does not load"
    return text or type(exc).__name__


def read_npy(path: str | Path) -> np.ndarray:
    """The array in the ``.npy`` file ``path``; raises :class:`DataError` if there is none."""
    path = Path(path)
    kind = _kind(path)
    if kind == "npz":
        raise DataError(f"{path} is an .npz archive, not a single .npy array")
    if kind != "npy":
        raise DataError(f"{path} is not a .npy file (it does not start with NumPy's header)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is a corrupt .npy file: {_problem(exc)}") from None


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file ``path`` by name, all read (so a damaged member fails
    here, not later); raises :class:`DataError` if the file is not a readable archive."""
    path = Path(path)
    kind = _kind(path)
    if kind == "npy":
        raise DataError(f"{path} is a single .npy array, not an .npz archive")
    if kind != "npz":
        raise DataError(f"{path} is not an .npz file (not a zip archive of NumPy arrays)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {}
            for key in npz.files:
                try:
                    value = npz[key]
                except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                    raise DataError(
                        f"{path}: array {key!r} cannot be read: {_problem(exc)}"
                    ) from None
                if not isinstance(value, np.ndarray):
                    raise DataError(f"{path}: {key!r} is not a NumPy array (.npy) file")
                arrays[key] = value
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is a corrupt .npz file: {_problem(exc)}") from None
    return arrays
