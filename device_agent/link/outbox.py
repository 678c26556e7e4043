"""Disk-backed store-and-forward queue (sqlite3): every outgoing message is written here first.

- **Ordered**: rows keep insertion order (``INTEGER PRIMARY KEY AUTOINCREMENT``); the MQTT pump
  sends them oldest first and deletes a row only when the broker acknowledged it (PUBACK).
- **Survives restart**: WAL journal; a message is committed before ``append`` returns. With
  ``durable`` each commit is also fsync'ed (``synchronous=FULL``), which survives power loss.
- **Sequence numbers**: ``append`` assigns the device's next ``seq`` inside the same transaction
  that stores the message, so numbers are contiguous, never reused, and persist across restarts.
- **Private**: the file is ``0600`` and a directory made for it ``0700``, whatever the umask.
- **Bounded**: at most ``max_messages`` rows and ``max_bytes`` payload bytes; messages older than
  ``max_age_s`` are discarded. Oldest go first. Whatever is discarded is counted and that count is
  written into the *next* appended message (``dropped``), then reset.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device_agent.contract.errors import OutboxError
from device_agent.contract.files import private_dir, private_file

__all__ = ["Outbox", "OutboxMessage"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    seq      INTEGER NOT NULL,
    topic    TEXT NOT NULL,
    payload  BLOB NOT NULL,
    retain   INTEGER NOT NULL DEFAULT 0,
    created  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 0), ('dropped_unreported', 0), ('dropped_total', 0), ('boot', 0);
"""


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    seq: int
    topic: str
    payload: bytes
    retain: bool
    created: float


class Outbox:
    """A bounded, ordered, persistent message queue. Thread-safe (one connection, one lock)."""

    def __init__(self, path: str | Path, *, max_messages: int = 10_000, max_bytes: int = 32 << 20, max_age_s: float = 7 * 86400,
                 durable: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = threading.Lock()
        try:
            private_dir(self.path.parent)
            private_file(self.path)  # 0600 before SQLite opens it: its -wal and -shm files take the database file's mode
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise OutboxError(f"cannot open the outbox database {self.path}: {e}; check [outbox] path and the state directory's permissions") from e
        self._bytes = self._scalar("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages")
        self._count = self._scalar("SELECT COUNT(*) FROM messages")

    # --- writing --------------------------------------------------------------------------------

    def append(self, topic: str, build: Callable[[int, int], bytes], *, retain: bool = False) -> int:
        """Store one message. ``build(seq, dropped)`` makes its payload with the assigned sequence
        number and the count of messages dropped since the last append. Returns ``seq``."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                seq = self._meta("seq") + 1
                dropped = self._meta("dropped_unreported")
                payload = build(seq, dropped)
                if len(payload) > self.max_bytes:
                    raise OutboxError(f"a {len(payload)}-byte message is larger than the whole outbox ([outbox] max_bytes = {self.max_bytes})")
                self._db.execute("INSERT INTO messages (seq, topic, payload, retain, created) VALUES (?, ?, ?, ?, ?)",
                                 (seq, topic, payload, int(retain), self.clock()))
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (seq,))
                self._db.execute("UPDATE meta SET value = 0 WHERE key = 'dropped_unreported'")
                self._count += 1
                self._bytes += len(payload)
                self._enforce_limits()
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return seq

    def _enforce_limits(self) -> None:
        """Drop oldest rows past the count/bytes limits (inside the caller's transaction)."""
        dropped = 0
        while self._count > self.max_messages or self._bytes > self.max_bytes:
            excess = max(self._count - self.max_messages, 1)
            rows = self._db.execute("SELECT id, LENGTH(payload) FROM messages ORDER BY id LIMIT ?", (excess,)).fetchall()
            if not rows:
                break
            self._db.execute("DELETE FROM messages WHERE id <= ?", (rows[-1][0],))
            self._count -= len(rows)
            self._bytes -= sum(r[1] for r in rows)
            dropped += len(rows)
        if dropped:
            self._count_dropped(dropped)

    def expire(self) -> int:
        """Discard messages older than ``max_age_s``; returns how many."""
        with self._lock:
            cutoff = self.clock() - self.max_age_s
            try:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages WHERE created < ?", (cutoff,)).fetchone()
                if row[0]:
                    self._db.execute("DELETE FROM messages WHERE created < ?", (cutoff,))
                    self._count -= row[0]
                    self._bytes -= row[1]
                    self._count_dropped(row[0])
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return int(row[0])

    def _count_dropped(self, n: int) -> None:
        self._db.execute("UPDATE meta SET value = value + ? WHERE key IN ('dropped_unreported', 'dropped_total')", (n,))

    # --- reading / acknowledging -----------------------------------------------------------------

    def peek(self, limit: int, *, after_id: int = 0) -> list[OutboxMessage]:
        """Up to ``limit`` oldest messages with ``id > after_id`` (not removed)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, seq, topic, payload, retain, created FROM messages WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [OutboxMessage(r[0], r[1], r[2], bytes(r[3]), bool(r[4]), r[5]) for r in rows]

    def ack(self, ids: list[int] | int) -> None:
        """Remove delivered messages (unknown ids — already dropped — are ignored)."""
        ids = [ids] if isinstance(ids, int) else list(ids)
        if not ids:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                marks = ",".join("?" * len(ids))
                row = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages WHERE id IN ({marks})", ids).fetchone()
                self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._count -= row[0]
            self._bytes -= row[1]

    # --- counters ---------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def dropped_total(self) -> int:
        with self._lock:
            return self._meta("dropped_total")

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._meta("seq")

    def next_boot(self) -> int:
        """Increment and return the persistent boot counter (one per agent start)."""
        with self._lock:
            self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'boot'")
            return self._meta("boot")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- helpers ----------------------------------------------------------------------------------

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _scalar(self, sql: str) -> int:
        with self._lock:
            return int(self._db.execute(sql).fetchone()[0])

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
