"""The replay record: every command this device *accepted*, by job id, on disk (``<state_dir>/replay.sqlite``).

A command enters only after its signature, its target and its validity window were checked, so a
flood of junk (unsigned, foreign, expired) never touches it: nothing an attacker can send without a
trusted key can flush it. A job id that is in it is never run again: the same command again is a
replay (or a QoS 1 redelivery) and is refused as ``replayed``; another command with that id is
refused as ``duplicate_job``, so a committed job's record can never be overwritten by reusing its id.

Entries are kept long after their command expired (job ids stay single-use); past ``max_entries``
the oldest *expired* ones go. If every entry is still valid (only trusted signers can cause that),
new commands are refused rather than anything forgotten. SQLite (WAL, ``synchronous=FULL``): an
accepted command is on disk before its job is acted on, across power cuts. The file is ``0600``, and
open only while a command is checked or added: commands are rare, and an agent keeps no descriptors
for it in between (200 simulated agents in one benchmark process stayed under select()'s 1,024).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from device_agent.contract.errors import OtaError
from device_agent.contract.files import private_dir, private_file

__all__ = ["MAX_ENTRIES", "ReplayRecord"]

#: job ids remembered (about 100 bytes each); only the oldest expired ones are ever forgotten
MAX_ENTRIES = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    job      TEXT PRIMARY KEY,
    digest   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    expires  REAL NOT NULL,
    received REAL NOT NULL
);
"""


class ReplayRecord:
    """The accepted commands of one device. Thread-safe (one lock; a connection per operation)."""

    def __init__(self, path: str | Path, *, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        self.clock = clock
        self._lock = threading.Lock()
        try:
            private_dir(self.path.parent)
            private_file(self.path)
            with self._db() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise OtaError(f"cannot open the replay record {self.path}: {e}; check the state directory's permissions and free space",
                           reason="store") from e

    def digest(self, job: str) -> str | None:
        """The digest of the accepted command with this job id, or None when the id was never accepted."""
        with self._db() as db:
            row = db.execute("SELECT digest FROM commands WHERE job = ?", (job,)).fetchone()
        return None if row is None else str(row[0])

    def make_room(self) -> None:
        """Forget the oldest expired entries past ``max_entries``; OtaError ``busy`` when every entry is still valid."""
        now = self.clock()
        with self._db() as db:
            count = int(db.execute("SELECT COUNT(*) FROM commands").fetchone()[0])
            if count < self.max_entries:
                return
            db.execute("DELETE FROM commands WHERE job IN (SELECT job FROM commands WHERE expires < ? ORDER BY received LIMIT ?)",
                             (now, count - self.max_entries + 1))
            count = int(db.execute("SELECT COUNT(*) FROM commands").fetchone()[0])
        if count >= self.max_entries:
            raise OtaError(f"this device holds {count:,} accepted commands that are all still valid (the bound); resend once some "
                           "have expired", reason="busy")

    def add(self, job: str, digest: str, *, kind: str, expires: float) -> None:
        """Remember an accepted command, durably (call :meth:`make_room` first)."""
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO commands (job, digest, kind, expires, received) VALUES (?, ?, ?, ?, ?)",
                             (job, digest, kind, expires, self.clock()))

    def __len__(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM commands").fetchone()[0])

    def close(self) -> None:
        """Nothing stays open between operations; kept for callers that close what they open."""

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = sqlite3.connect(str(self.path), isolation_level=None, timeout=10)
            try:
                db.execute("PRAGMA synchronous=FULL")
                yield db
            finally:
                db.close()
