"""An exclusive lock on a training job's output folder, held while any process of the job
runs.

Two jobs in one folder overwrite each other's checkpoints and metrics, and one renames the
folder from under the other when it finishes. So a job locks its folder before it looks
at it, with ``flock`` on a lock file ``.<out>.lock`` beside the output folder (not inside:
``--force`` empties that folder and a finished job renames it). The lock file records the
holder's process id, which the refusal names.

The kernel releases an ``flock`` lock when the last descriptor of its open file is
closed, so a killed job never leaves a stale lock behind; and the workers a job starts
receive a duplicate of the descriptor (:meth:`FolderLock.__reduce__`), so the folder
stays locked until the last of them has ended too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from multiprocessing import context, reduction
from pathlib import Path
from typing import Any

from fedge.errors import ConfigError

__all__ = ["FolderLock"]


class FolderLock:
    """A held lock (``fd`` open and locked) or a released one (``fd`` is ``None``).

    Get one with :meth:`acquire`. ``owner`` is the process that took it, the one that
    removes the lock file on :meth:`release`; a worker's copy is not the owner.
    """

    def __init__(self, path: Path, fd: int | None, owner: bool):
        self.path = Path(path)
        self.fd = fd
        self.owner = owner

    @classmethod
    def acquire(cls, path: Path, folder: Path) -> FolderLock:
        """Lock ``folder`` through the lock file ``path``, or raise :class:`ConfigError`
        naming ``folder`` and the holder's process id if another process holds it."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _holder(fd)
                    os.close(fd)
                    raise ConfigError(
                        f"{folder} is in use by another training job ({holder}): wait for "
                        "it to end, or stop it, before starting or resuming a job there"
                    ) from None
                # A holder that just released the lock removed its file: if that is the
                # file locked here, lock the one now at the path instead.
                with contextlib.suppress(FileNotFoundError):
                    here, there = os.fstat(fd), os.stat(path)
                    if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
                        break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            raise ConfigError(f"cannot lock {folder} with {path}: {exc.strerror or exc}") from None
        return cls(path, fd, owner=True)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        """Unlock (the owner also removes the lock file); a no-op once released."""
        if self.fd is None:
            return
        if self.owner:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None

    def __reduce__(self) -> tuple[Any, ...]:
        # To a process being started by multiprocessing, a held lock travels as a
        # duplicate of its descriptor (the worker holds the lock with this process); in
        # any other pickle, as a released lock.
        if self.fd is not None and context.get_spawning_popen() is not None:
            return (_inherited, (self.path, reduction.DupFd(self.fd)))
        return (FolderLock, (self.path, None, False))


def _inherited(path: Path, fd: Any) -> FolderLock:
    return FolderLock(path, fd.detach(), owner=False)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"pid {int(os.pread(fd, 32, 0).decode().strip())}"
    return "pid unknown"
