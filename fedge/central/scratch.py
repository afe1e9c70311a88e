"""Scratch files and folders that a killed process leaves behind, and the sweep that
removes them.

A process that is killed (SIGKILL, the out-of-memory killer, a power cut) runs no cleanup:
the temporary file of a half-written object, or a temporary folder holding a 200 MB array
file, would stay for ever. So fedge names its scratch after its writer, with a tag of the
host and the process id (:func:`owner_tag`), and the next fedge process working in the
same folder removes the scratch of writers that are gone (:func:`abandoned`): that of a
process of this host that no longer runs, and, when the writer cannot be checked from
here (another host sharing the folder, another container's process ids, scratch named
before tags existed), scratch left untouched for :data:`MAX_AGE` seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "MAX_AGE",
    "abandoned",
    "owner_tag",
    "pid_alive",
    "scratch_dir",
    "sweep_scratch_dirs",
    "sweep_temp_files",
]

MAX_AGE = 3600.0
"""Seconds after which scratch of a writer that cannot be checked counts as abandoned."""

_TAG = r"[0-9a-f]{8}-[0-9]+"
_RANDOM = r"[a-z0-9_]{8}"  # the random part of tempfile's names
# Scratch folders: fedge-<purpose>.<tag>.<random>, and before tags, fedge-dataset-<random>.
_SCRATCH_DIR = re.compile(rf"fedge-[a-z]+\.(?P<tag>{_TAG})\.{_RANDOM}|fedge-dataset-{_RANDOM}")
# Temporary files of the local store: .<name>.<tag>.<random>.tmp (.<name>.<random>.tmp
# before tags).
_TEMP_FILE = re.compile(rf"\..+?(?:\.(?P<tag>{_TAG}))?\.{_RANDOM}\.tmp")


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag() -> str:
    """``<host>-<pid>``: this process, as scratch names record it (the host as 8 hex digits
    of its name's SHA-256)."""
    return f"{_host()}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (a zombie counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def abandoned(path: Path, tag: str | None, *, max_age: float = MAX_AGE) -> bool:
    """Whether the scratch ``path``, written by the process ``tag`` names (``None``: not
    known), is left over: its writer ran on this host and is gone, or it cannot be
    checked and ``path`` has not changed for ``max_age`` seconds."""
    if tag is not None:
        host, _, pid = tag.partition("-")
        if host == _host():
            return int(pid) != os.getpid() and not pid_alive(int(pid))
    try:
        return time.time() - path.lstat().st_mtime > max_age
    except OSError:
        return False


def sweep_temp_files(folder: Path) -> list[Path]:
    """Remove the abandoned temporary files (``.<name>.<tag>.<random>.tmp``) of
    :class:`~fedge.central.storage.LocalStore` in ``folder``; returns what it removed.
    Best effort: a file it cannot remove stays for the next sweep."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _TEMP_FILE.fullmatch(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            path = Path(entry.path)
            if abandoned(path, match["tag"]):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


def sweep_scratch_dirs(root: Path | None = None) -> list[Path]:
    """Remove the abandoned scratch folders of fedge in ``root`` (default: the system's
    temporary folder, ``$TMPDIR``); returns what it removed."""
    root = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            match = _SCRATCH_DIR.fullmatch(entry.name)
            if match is None or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            if abandoned(path, match["tag"]):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


@contextlib.contextmanager
def scratch_dir(purpose: str) -> Iterator[Path]:
    """A new folder ``fedge-<purpose>.<tag>.<random>`` in the system's temporary folder,
    removed on the way out; the folders of killed processes are removed first.

    ``purpose`` is lowercase letters (``"dataset"``).
    """
    if not re.fullmatch(r"[a-z]+", purpose):
        raise ValueError(f"purpose must be lowercase letters, got {purpose!r}")
    root = Path(tempfile.gettempdir())
    sweep_scratch_dirs(root)
    path = Path(tempfile.mkdtemp(prefix=f"fedge-{purpose}.{owner_tag()}.", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
