"""The on-disk spool: results and events wait here until the broker has acknowledged them.

SQLite in the state directory, in WAL mode: an entry committed here survives a broker
outage, a daemon restart and a ``kill -9`` (a power cut may lose the last moments: see
docs/mqtt.md). Each topic has its own ``seq``, persisted with the entry in one transaction,
so a sequence number is never used twice for a device. When the spool is full the oldest
entries go first, and the loss is counted, never silent.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Entry:
    id: int
    topic: str
    payload: bytes
    retain: bool


class Spool:
    """A bounded FIFO of messages on disk, safe to use from several threads."""

    def __init__(self, path: Path, max_entries: int = 100_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_entries = max_entries
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            # Counted once here and kept up to date: COUNT(*) walks the whole table in SQLite.
            self._size = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise OSError(f"spool {path} is not usable ({exc}): move it aside and restart") from None

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    def append(self, topic: str, build: Callable[[int], bytes], sequence: str, retain: bool = False) -> int:
        """Store one message; ``build(seq)`` makes its payload with the next ``seq`` of ``sequence``."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._counter(f"seq:{sequence}") + 1
                self._set_counter(f"seq:{sequence}", seq)
                self._db.execute("INSERT INTO messages(topic, payload, retain) VALUES (?, ?, ?)",
                                 (topic, build(seq), int(retain)))
                excess = self._size + 1 - self.max_entries
                if excess > 0:
                    self._db.execute("DELETE FROM messages WHERE id IN "
                                     "(SELECT id FROM messages ORDER BY id LIMIT ?)", (excess,))
                    self._set_counter("dropped", self._counter("dropped") + excess)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._size += 1 - max(excess, 0)
        if excess > 0:
            logger.warning("spool full (%d entries): dropped the %d oldest", self.max_entries, excess)
        return seq

    def after(self, last_id: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries newer than ``last_id``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, retain FROM messages WHERE id > ? "
                                    "ORDER BY id LIMIT ?", (last_id, limit)).fetchall()
        return [Entry(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def remove(self, entry_id: int) -> None:
        """The broker acknowledged it: forget it."""
        with self._lock:
            self._size -= self._db.execute("DELETE FROM messages WHERE id = ?", (entry_id,)).rowcount

    def last_seq(self, sequence: str) -> int:
        """The last ``seq`` handed out for ``sequence`` (0 before the first)."""
        with self._lock:
            return self._counter(f"seq:{sequence}")

    def backlog(self) -> int:
        """Messages waiting for the broker."""
        return self._size

    def dropped(self) -> int:
        with self._lock:
            return self._counter("dropped")

    def close(self) -> None:
        with self._lock:
            self._db.close()
