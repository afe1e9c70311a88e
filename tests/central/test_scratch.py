"""Scratch that killed processes leave behind: the local store's temporary files and
fedge's temporary folders are removed by the next process, and only those of writers that
are gone."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fedge.central.scratch import (
    MAX_AGE,
    owner_tag,
    scratch_dir,
    sweep_scratch_dirs,
    sweep_temp_files,
)
from fedge.central.storage import LocalStore

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def dead_pid():
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def tag_of(pid):
    return f"{owner_tag().partition('-')[0]}-{pid}"


def test_sweep_removes_temporary_files_of_dead_writers_only(tmp_path):
    alive = tmp_path / f".k.{owner_tag()}.abcd1234.tmp"
    dead = tmp_path / f".k.{tag_of(dead_pid())}.abcd1234.tmp"
    other_host = tmp_path / ".k.00000000-1.abcd1234.tmp"
    old = tmp_path / ".k.abcd1234.tmp"  # named before tags: judged by age
    young = tmp_path / ".j.efgh5678.tmp"
    key = tmp_path / "k"
    for path in (alive, dead, other_host, old, young, key):
        path.write_bytes(b"x")
    stale = time.time() - MAX_AGE - 60
    os.utime(old, (stale, stale))
    assert sorted(sweep_temp_files(tmp_path)) == sorted([dead, old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (alive, other_host, young, key)
    )


def test_scratch_dirs_are_tagged_and_removed_on_exit(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    orphan = tmp_path / f"fedge-dataset.{tag_of(dead_pid())}.abcd1234"
    orphan.mkdir()
    (orphan / "data.npz").write_bytes(b"x" * 100)
    unrelated = tmp_path / "fedge-dataset.notours"
    unrelated.mkdir()
    with scratch_dir("dataset") as path:
        assert path.name.startswith(f"fedge-dataset.{owner_tag()}.")
        assert not orphan.exists()  # swept on the way in
        assert sweep_scratch_dirs(tmp_path) == []  # a live process's folder stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fedge-dataset.notours"]


def test_local_store_names_temporary_files_after_their_writer(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: seen.append(a) or real_replace(a, b))
    store.put_bytes("dir/k", b"v")
    assert len(seen) == 1 and os.path.basename(seen[0]).startswith(f".k.{owner_tag()}.")


# Run `fedge data upload`, held in the fsync of the store's temporary file (so that the
# test can kill it mid-write at a known point).
_HELD_UPLOAD = """
import os, runpy, sys, time

real_fsync = os.fsync

def held_fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
        print("held", flush=True)
        time.sleep(300)
    real_fsync(fd)

os.fsync = held_fsync
sys.argv = ["fedge", *sys.argv[1:]]
runpy.run_module("fedge", run_name="__main__")
"""


def leftovers(store, tmpdir):
    hidden = sorted(p.relative_to(store).as_posix() for p in store.rglob(".*"))
    return hidden, sorted(p.name for p in tmpdir.iterdir())


@linux_only
def test_a_killed_upload_leaves_nothing_once_the_next_one_ran(tmp_path):
    store, tmpdir = tmp_path / "store", tmp_path / "tmp"
    tmpdir.mkdir()
    env = os.environ | {"TMPDIR": str(tmpdir)}
    rng = np.random.default_rng(0)
    big, small = tmp_path / "big.npz", tmp_path / "small.npz"
    np.savez(big, x=rng.random((20_000, 64), dtype=np.float32), y=rng.integers(0, 10, 20_000))
    np.savez(small, x=rng.random((50, 64), dtype=np.float32), y=rng.integers(0, 10, 50))
    upload = ["data", "upload", "--store", str(store)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _HELD_UPLOAD, *upload, "big", str(big)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "held", line + proc.stdout.read()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    hidden, scratch = leftovers(store, tmpdir)
    assert len(hidden) == 1 and hidden[0].startswith("blobs/sha256/.")  # killed mid-write
    assert len(scratch) == 1 and scratch[0].startswith("fedge-dataset")

    done = subprocess.run(
        [sys.executable, "-m", "fedge", *upload, "small", str(small)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert leftovers(store, tmpdir) == ([], [])
