"""The default object store: a folder on the local disk.

Each key is a file under the root. Writes go to a hidden temporary file in the target's
folder, are flushed to disk, and are then renamed over the target (``os.replace``), so a
reader or a crash never leaves half an object behind. Create-if-absent hard-links the
finished temporary file to the key (``os.link`` fails if the key exists), which is atomic
on every POSIX file system.

A temporary file is named after its writer (``.<name>.<host>-<pid>.<random>.tmp``): the
first write into a folder removes the temporary files there whose writer was killed before
it could (see :mod:`fedge.central.scratch`), so an interrupted upload leaves nothing
behind once the store is written again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from fedge.central.scratch import owner_tag, sweep_temp_files
from fedge.central.storage.base import ObjectStore, check_key, check_prefix
from fedge.errors import ObjectNotFound, StorageError

__all__ = ["LocalStore"]


def _describe(exc: OSError, action: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"{action}: no space left on device")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"{action}: permission denied ({exc.strerror})")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return StorageError(f"{action}: a parent of the key is an object, not a folder")
    return StorageError(f"{action}: {exc.strerror or exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(ObjectStore):
    """An object store in the folder ``root`` (created on the first write).

    Parameters
    ----------
    root:
        The folder. Keys are paths below it; keys that would leave it (``../x``, or a
        path through a symbolic link pointing outside) are refused.
    fsync:
        Flush every write to the disk before it becomes visible (default ``True``), so
        that an object that exists after a crash is complete.
    """

    def __init__(self, root: Path | str, *, fsync: bool = True):
        self.root = Path(root).expanduser().resolve()
        self.fsync = fsync
        self._swept: set[Path] = set()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise StorageError(f"invalid object key {key!r}: it leads outside {self.root}")
        return path

    @contextlib.contextmanager
    def _staged(self, key: str) -> Iterator[tuple[Path, Path, BinaryIO]]:
        """``key``'s path, and a temporary file next to it that is removed on the way out."""
        path = self._path(key)
        tmp: Path | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.parent not in self._swept:
                sweep_temp_files(path.parent)
                self._swept.add(path.parent)
            fd, name = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp"
            )
            tmp = Path(name)
            with os.fdopen(fd, "wb") as f:
                yield path, tmp, f
        except OSError as exc:
            raise _describe(exc, f"cannot write '{key}' in {self.root}") from None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def _write(self, key: str, fill: Callable[[BinaryIO], None], *, exclusive: bool) -> bool:
        with self._staged(key) as (path, tmp, f):
            fill(f)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
            if path.is_dir():
                raise StorageError(f"cannot write '{key}': it is a prefix of other keys")
            if exclusive:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, path)
            if self.fsync:
                _fsync_dir(path.parent)
            return True

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda f: f.write(data), exclusive=False)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._write(key, lambda f: f.write(data), exclusive=True)

    def put_file(self, key: str, path: Path) -> None:
        try:
            with Path(path).open("rb") as src:
                self._write(key, lambda f: shutil.copyfileobj(src, f), exclusive=False)
        except OSError as exc:  # _write reports its own errors; this is opening ``path``
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object '{key}' in {self.url}") from None
        except OSError as exc:
            raise _describe(exc, f"cannot read '{key}' in {self.root}") from None

    def get_file(self, key: str, path: Path) -> Path:
        src = self._path(key)
        dest = Path(path)
        if not src.is_file():
            raise ObjectNotFound(f"no object '{key}' in {self.url}")
        tmp: Path | None = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
            tmp = Path(name)
            with os.fdopen(fd, "wb") as out, src.open("rb") as f:
                shutil.copyfileobj(f, out)
            os.replace(tmp, dest)
        except FileNotFoundError:
            raise ObjectNotFound(f"no object '{key}' in {self.url}") from None
        except OSError as exc:
            raise _describe(exc, f"cannot copy '{key}' to {dest}") from None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        return dest

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        path = self._path(key)
        try:
            return path.stat().st_size if path.is_file() else None
        except OSError:
            return None

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        # Walk only the deepest folder the prefix names, then filter by the full prefix.
        folder = self.root / prefix.rpartition("/")[0]
        if not folder.resolve().is_relative_to(self.root):
            raise StorageError(f"invalid prefix {prefix!r}: it leads outside {self.root}")
        keys = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return
        except OSError as exc:
            raise _describe(exc, f"cannot delete '{key}' in {self.root}") from None
