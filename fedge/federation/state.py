"""The federation server's durable state: SQLite (WAL) for records, files for tensors.

Layout of the state folder::

    state.db                      devices, rounds, assignments, accepted updates,
                                  secure-aggregation messages and stages, model versions,
                                  evaluations (SQLite, WAL, synchronous=FULL)
    tensors/versions/<v>/model.safetensors    global model v and the strategy's task extras
    tensors/versions/<v>/server.safetensors   the strategy's server state after v rounds
                                              (server optimizer moments, control variates)

An accepted update is one SQLite row with its safetensors bytes, committed in one
transaction (one fsync of the WAL), so it is either wholly there or not at all; its bytes
are dropped once its round has ended. Model files are written to a temporary name,
flushed to disk and renamed (:class:`~fedge.central.storage.LocalStore`) before the
transaction that names their version commits. A 2xx answer is sent after the commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.central.storage import LocalStore
from fedge.errors import ConfigError, StorageError

__all__ = ["Device", "FederationState", "StoredUpdate"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, token_hash TEXT NOT NULL, kind TEXT NOT NULL, enrolled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY, round INTEGER, sha256 TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    number INTEGER PRIMARY KEY, model_version INTEGER NOT NULL, status TEXT NOT NULL,
    opened_at REAL NOT NULL, started_at REAL, closed_at REAL, metrics TEXT
);
CREATE TABLE IF NOT EXISTS assignments (
    round INTEGER NOT NULL, device TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (round, device)
);
CREATE TABLE IF NOT EXISTS updates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, round INTEGER NOT NULL, device TEXT NOT NULL,
    key TEXT NOT NULL, num_samples INTEGER NOT NULL, at REAL NOT NULL, data BLOB,
    UNIQUE (round, device)
);
CREATE TABLE IF NOT EXISTS secagg_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, round INTEGER NOT NULL, stage TEXT NOT NULL,
    device TEXT NOT NULL, at REAL NOT NULL, data BLOB NOT NULL, UNIQUE (round, stage, device)
);
CREATE TABLE IF NOT EXISTS secagg_stages (
    round INTEGER NOT NULL, stage TEXT NOT NULL, opened_at REAL NOT NULL,
    PRIMARY KEY (round, stage)
);
CREATE TABLE IF NOT EXISTS evaluations (
    version INTEGER PRIMARY KEY, loss REAL, accuracy REAL, at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Device:
    id: str
    token_hash: str
    kind: str


@dataclass(frozen=True)
class StoredUpdate:
    seq: int
    round: int
    device: str
    key: str
    num_samples: int


def hash_token(token: str) -> str:
    """SHA-256 of a bearer token (tokens are 256-bit random: no key stretching needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


class FederationState:
    """Records and tensor files of one federation under ``root``.

    Methods are blocking and not thread-safe: the server calls them from one worker
    thread at a time, under its lock.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = self._hold_lock()
            self.db = sqlite3.connect(
                self.root / "state.db", isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the server state in {self.root}: {exc}") from None
        self.tensors = LocalStore(self.root / "tensors")

    def _hold_lock(self) -> Any:
        """One server per state folder: a second one would hand out the same rounds. The
        kernel drops the lock when the process dies, even by SIGKILL."""
        handle = (self.root / "server.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise StorageError(
                f"the state folder {self.root} is in use by another fedge server (pid {owner})"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def close(self) -> None:
        self.db.close()
        self._lock.close()

    # --- transactions -------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error; SQLite errors (a
        full disk, a read-only folder) become :class:`StorageError`."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            finally:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StorageError(f"server state in {self.root}: {exc}") from None

    # --- experiment identity ------------------------------------------------------------

    def claim(self, fingerprint: str) -> None:
        """Tie the folder to one experiment: refuse to run another one on it."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'experiment'").fetchone()
        if row is None:
            with self._transaction():
                self.db.execute("INSERT INTO meta VALUES ('experiment', ?)", (fingerprint,))
        elif row[0] != fingerprint:
            raise ConfigError(
                f"the state folder {self.root} belongs to another experiment (its data, "
                "partition, model, training or strategy differ): give a new --state folder"
            )

    def federation_id(self) -> str:
        """A random id of this federation, bound into every secure round's context."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'federation'").fetchone()
        if row is not None:
            return row[0]
        value = os.urandom(16).hex()
        with self._transaction():
            self.db.execute("INSERT INTO meta VALUES ('federation', ?)", (value,))
        return value

    # --- devices ------------------------------------------------------------------------

    def devices(self) -> list[Device]:
        rows = self.db.execute("SELECT id, token_hash, kind FROM devices").fetchall()
        return [Device(*row) for row in rows]

    def add_device(self, device: Device) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT INTO devices VALUES (?, ?, ?, ?)",
                (device.id, device.token_hash, device.kind, time.time()),
            )

    # --- model versions -----------------------------------------------------------------

    @staticmethod
    def _version_key(version: int, part: str) -> str:
        return f"versions/{version}/{part}.safetensors"

    def latest_version(self) -> int | None:
        row = self.db.execute("SELECT MAX(version) FROM versions").fetchone()
        return row[0]

    def write_version_files(self, version: int, model: bytes, server: bytes) -> str:
        """Write a version's tensor files (before :meth:`commit_round` names them)."""
        self.tensors.put_bytes(self._version_key(version, "model"), model)
        self.tensors.put_bytes(self._version_key(version, "server"), server)
        return hashlib.sha256(model).hexdigest()

    def read_version(self, version: int) -> tuple[bytes, bytes]:
        return (
            self.tensors.get_bytes(self._version_key(version, "model")),
            self.tensors.get_bytes(self._version_key(version, "server")),
        )

    def add_initial_version(self, sha256: str) -> None:
        with self._transaction():
            self.db.execute("INSERT INTO versions VALUES (0, NULL, ?, ?)", (sha256, time.time()))

    # --- rounds -------------------------------------------------------------------------

    def open_round(self, number: int, model_version: int) -> None:
        with self._transaction():
            self._insert_round(number, model_version)

    def _insert_round(self, number: int, model_version: int) -> None:
        self.db.execute(
            "INSERT INTO rounds (number, model_version, status, opened_at) VALUES (?, ?, ?, ?)",
            (number, model_version, "open", time.time()),
        )

    def current_round(self) -> tuple[int, int, float | None] | None:
        """``(number, model_version, started_at)`` of the open round, if any."""
        return self.db.execute(
            "SELECT number, model_version, started_at FROM rounds WHERE status = 'open'"
        ).fetchone()

    def last_round_number(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(number), 0) FROM rounds").fetchone()[0]

    def assign(self, round: int, device: str, at: float, first: bool) -> None:
        with self._transaction():
            self.db.execute("INSERT INTO assignments VALUES (?, ?, ?)", (round, device, at))
            if first:
                self.db.execute("UPDATE rounds SET started_at = ? WHERE number = ?", (at, round))

    def assignments(self, round: int) -> dict[str, float]:
        rows = self.db.execute("SELECT device, at FROM assignments WHERE round = ?", (round,))
        return dict(rows.fetchall())

    def commit_round(
        self,
        number: int,
        status: str,
        metrics: dict[str, Any],
        *,
        version: tuple[int, str] | None,
        next_round: tuple[int, int] | None,
    ) -> None:
        """In one transaction: close or abandon round ``number``, record the new model
        ``version`` (number, sha256) it produced, and open ``next_round``."""
        now = time.time()
        with self._transaction():
            self.db.execute(
                "UPDATE rounds SET status = ?, closed_at = ?, metrics = ? WHERE number = ?",
                (status, now, json.dumps(metrics), number),
            )
            if version is not None:
                self.db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?)",
                    (version[0], number, version[1], now),
                )
            if next_round is not None:
                self._insert_round(*next_round)

    def round_history(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT r.number, r.model_version, r.status, r.metrics, e.loss, e.accuracy "
            "FROM rounds r LEFT JOIN evaluations e ON e.version = r.model_version + 1 "
            "AND r.status = 'closed' WHERE r.status != 'open' ORDER BY r.number"
        ).fetchall()
        history = []
        for number, version, status, metrics, loss, acc in rows:
            entry = {"round": number, "model_version": version, "status": status}
            entry.update(json.loads(metrics or "{}"))
            entry.update(test_loss=loss, test_accuracy=acc)
            history.append(entry)
        return history

    # --- updates ------------------------------------------------------------------------

    def add_update(self, round: int, device: str, key: str, num_samples: int, data: bytes) -> None:
        """Record an accepted update and its bytes, durably (one transaction)."""
        with self._transaction():
            self.db.execute(
                "INSERT INTO updates (round, device, key, num_samples, at, data) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (round, device, key, num_samples, time.time(), data),
            )

    def accepted(self, round: int) -> list[StoredUpdate]:
        rows = self.db.execute(
            "SELECT seq, round, device, key, num_samples FROM updates WHERE round = ? ORDER BY seq",
            (round,),
        )
        return [StoredUpdate(*row) for row in rows.fetchall()]

    def accepted_key(self, round: int, device: str) -> str | None:
        row = self.db.execute(
            "SELECT key FROM updates WHERE round = ? AND device = ?", (round, device)
        ).fetchone()
        return None if row is None else row[0]

    def read_update(self, stored: StoredUpdate) -> bytes:
        row = self.db.execute("SELECT data FROM updates WHERE seq = ?", (stored.seq,)).fetchone()
        if row is None or row[0] is None:
            raise StorageError(f"the bytes of update {stored.seq} are gone")
        return row[0]

    def drop_update_data(self, round: int) -> None:
        """Free the bytes of ``round``'s updates once the round has ended (the records
        stay: they answer retried uploads and say who took part)."""
        with self._transaction():
            self.db.execute("UPDATE updates SET data = NULL WHERE round = ?", (round,))

    # --- secure aggregation -------------------------------------------------------------

    def add_secagg_message(self, round: int, stage: str, device: str, data: bytes) -> None:
        """Record a device's accepted message for a stage, durably (one transaction)."""
        with self._transaction():
            self.db.execute(
                "INSERT INTO secagg_messages (round, stage, device, at, data) "
                "VALUES (?, ?, ?, ?, ?)",
                (round, stage, device, time.time(), data),
            )

    def open_secagg_stage(self, round: int, stage: str, at: float) -> None:
        with self._transaction():
            self.db.execute("INSERT INTO secagg_stages VALUES (?, ?, ?)", (round, stage, at))

    def secagg_stages(self, round: int) -> list[tuple[str, float]]:
        rows = self.db.execute(
            "SELECT stage, opened_at FROM secagg_stages WHERE round = ? ORDER BY opened_at",
            (round,),
        )
        return rows.fetchall()

    def secagg_messages(self, round: int) -> list[tuple[str, str, bytes]]:
        rows = self.db.execute(
            "SELECT stage, device, data FROM secagg_messages WHERE round = ? ORDER BY seq",
            (round,),
        )
        return rows.fetchall()

    def drop_secagg_data(self, round: int) -> None:
        """Delete a finished round's secure-aggregation messages (masked vectors, shares)."""
        with self._transaction():
            self.db.execute("DELETE FROM secagg_messages WHERE round = ?", (round,))

    # --- evaluations --------------------------------------------------------------------

    def add_evaluation(self, version: int, loss: float, accuracy: float) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?)",
                (version, loss, accuracy, time.time()),
            )

    def evaluated(self, version: int) -> bool:
        row = self.db.execute("SELECT 1 FROM evaluations WHERE version = ?", (version,))
        return row.fetchone() is not None

    def iter_versions(self) -> Iterator[int]:
        yield from (v for (v,) in self.db.execute("SELECT version FROM versions ORDER BY version"))
