"""The on-disk spool: results and events wait here until the broker has acknowledged them.

SQLite in the state directory, in WAL mode: an entry committed here survives a broker
outage, a daemon restart and a ``kill -9`` (a power cut may lose the last moments: see
docs/mqtt.md). Each topic has its own ``seq``, persisted with the entry in one transaction,
so a sequence number is never used twice for a device.

It heals itself, because nobody is there to help a Pi on a line:

- a spool file that cannot be read (a power cut on an SD card) is moved aside with a
  timestamp and a fresh one is started; ``seq`` goes on above every number handed out before,
  thanks to a small reservation file beside it (``<spool>.seq.json``, rewritten every
  ``SEQ_BLOCK`` messages);
- when the spool is full (``max_entries``, or ``max_mb`` of disk, or the disk itself) the oldest
  entries go first, and a message that still cannot be stored is counted as lost; its ``seq``
  is used up all the same, so subscribers see the gap. Nothing of this stops inspection, and
  the spool recovers by itself when space returns. Every loss is counted, never silent;
- a disk already full at start gets a spool in memory (delivered while the daemon runs, lost
  on a restart), said in the log and in ``status``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from linewatch.edge.files import write_atomic

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
SEQ_BLOCK = 1000  # seq numbers reserved on disk at a time, so losing the spool file never repeats one
MB = 2**20


@dataclass(slots=True)  # one a frame: slotted, not frozen (pipeline.Frame says why)
class Outgoing:
    """A message to store: ``build(seq)`` makes its payload once its ``seq`` of ``sequence`` is known."""

    topic: str
    build: Callable[[int], bytes]
    sequence: str
    retain: bool = False


@dataclass(slots=True)  # one a message: slotted, not frozen (pipeline.Frame says why)
class Entry:
    id: int
    topic: str
    payload: bytes
    retain: bool


class Spool:
    """A bounded FIFO of messages on disk, safe to use from several threads."""

    def __init__(self, path: Path, max_entries: int = 100_000, max_mb: float | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_entries = max_entries
        self.max_mb = max_mb
        self.recovered: list[str] = []  # spool files moved aside since start
        self.in_memory = False  # the disk was full at start
        self.lost = 0  # messages that could not be stored at all (disk full), since start
        self.last_failed = False  # the newest message could not be stored
        self._dropped_logged, self._dropped_said = 0, 0.0  # oldest entries dropped since start, last said when
        self._lock = threading.Lock()
        self._reservation_path = path.with_name(path.name + ".seq.json")
        self._reserved = self._read_reservation()
        try:
            self._open(str(path))
        except sqlite3.DatabaseError as exc:
            if _disk_full(exc):
                logger.error("spool %s cannot be written, the disk is full: spooling in memory (lost on a restart) "
                             "until the daemon is restarted with space", path)
                self.in_memory = True
                self._open(":memory:")
            else:
                self._move_aside(exc)
                self._open(str(path))
        # Counters live in memory too, so a message that cannot be stored still uses up its seq. A spool
        # without counters (new, moved aside, deleted) goes on above the numbers reserved on disk.
        self._seq = {name[4:]: value for name, value in
                     self._db.execute("SELECT name, value FROM counters WHERE name LIKE 'seq:%'")}
        for sequence, reserved in self._reserved.items():
            self._seq.setdefault(sequence, reserved)

    def _open(self, target: str) -> None:
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if self.max_mb:
                page = self._db.execute("PRAGMA page_size").fetchone()[0]
                self._db.execute(f"PRAGMA max_page_count = {max(16, int(self.max_mb * MB / page))}")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {check}")
            self._db.executescript(SCHEMA)
            # Counted once here and kept up to date: COUNT(*) walks the whole table in SQLite.
            self._size = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        except sqlite3.DatabaseError:
            self._db.close()
            raise

    def _move_aside(self, error: Exception) -> None:
        """Keep the broken file for a post-mortem and start afresh, above every seq handed out."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.rename(Path(f"{aside}{suffix}"))
        self.recovered.append(aside.name)
        logger.error("spool %s is not readable (%s): moved aside to %s and started a fresh one; seq goes on "
                     "from the reserved numbers", self.path, error, aside.name)

    def _read_reservation(self) -> dict[str, int]:
        try:
            raw = json.loads(self._reservation_path.read_text())
            return {str(k): int(v) for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("cannot read %s (%s): seq continuity after losing the spool is not guaranteed",
                           self._reservation_path, exc)
            return {}

    def _reserve(self, sequence: str, seq: int) -> None:
        """Before ``seq`` is handed out, make sure the file on disk promises at least that much."""
        if seq <= self._reserved.get(sequence, 0):
            return
        self._reserved[sequence] = seq + SEQ_BLOCK
        try:
            write_atomic(self._reservation_path, json.dumps(self._reserved))
        except OSError as exc:  # a full disk: the spool itself will say so
            logger.debug("cannot write %s: %s", self._reservation_path, exc)

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error (unless SQLite already did, as after
        SQLITE_FULL)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _insert(self, rows: list[tuple[str, bytes, int]], seqs: dict[str, int], make_room: int) -> int:
        """One transaction: drop ``make_room`` + overflow oldest entries, store the messages and their seqs."""
        with self._transaction():
            excess = max(self._size + len(rows) - self.max_entries, 0) + make_room
            if excess:
                excess = self._db.execute("DELETE FROM messages WHERE id IN "
                                          "(SELECT id FROM messages ORDER BY id LIMIT ?)", (excess,)).rowcount
                self._set_counter("dropped", self._counter("dropped") + excess)
            for sequence, seq in seqs.items():
                self._set_counter(f"seq:{sequence}", seq)
            self._db.executemany("INSERT INTO messages(topic, payload, retain) VALUES (?, ?, ?)", rows)
        self._size += len(rows) - excess
        return excess

    def append(self, topic: str, build: Callable[[int], bytes], sequence: str, retain: bool = False) -> int:
        """Store one message; ``build(seq)`` makes its payload with the next ``seq`` of ``sequence``."""
        return self.append_many([Outgoing(topic, build, sequence, retain)])[0]

    def append_many(self, messages: list[Outgoing]) -> list[int]:
        """Store messages in one transaction (a block of frames' results: one commit, not one a frame); their seqs.

        Never raises for a full disk: the oldest entries make room, and when even that fails the
        messages are counted in ``lost`` (their seqs are used up, so subscribers see a gap).
        """
        with self._lock:
            seqs: list[int] = []
            last: dict[str, int] = {}
            rows = []
            for message in messages:
                seq = self._seq.get(message.sequence, 0) + 1
                self._seq[message.sequence] = last[message.sequence] = seq
                self._reserve(message.sequence, seq)
                seqs.append(seq)
                rows.append((message.topic, message.build(seq), int(message.retain)))
            dropped = 0
            for make_room in (0, max(10, self._size // 20)):  # then a twentieth of the spool, oldest first
                try:
                    dropped = self._insert(rows, last, make_room)
                    self.last_failed = False
                    break
                except sqlite3.OperationalError as exc:
                    if not _disk_full(exc):
                        raise
            else:
                self.lost += len(rows)
                self.last_failed = True
                if self.lost <= len(rows) or self.lost // 1000 > (self.lost - len(rows)) // 1000:
                    logger.error("spool %s is full and the disk too: %d message(s) lost so far; inspection goes "
                                 "on, and storing resumes by itself when space returns", self.path, self.lost)
                return seqs
        if dropped:
            self._dropped_logged += dropped
            if self._dropped_logged == dropped or time.monotonic() - self._dropped_said >= 10:  # not once per message
                logger.warning("spool full (%d entries, %s MB or its disk): dropped the oldest, %d since start",
                               self.max_entries, self.max_mb, self._dropped_logged)
                self._dropped_said = time.monotonic()
        return seqs

    def after(self, last_id: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries newer than ``last_id``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, retain FROM messages WHERE id > ? "
                                    "ORDER BY id LIMIT ?", (last_id, limit)).fetchall()
        return [Entry(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def remove(self, entry_ids: list[int]) -> None:
        """The broker acknowledged them: forget them, in one transaction (on a full disk they stay, sent again)."""
        with self._lock:
            try:
                with self._transaction():
                    removed = self._db.executemany("DELETE FROM messages WHERE id = ?",
                                                   [(entry_id,) for entry_id in entry_ids]).rowcount
                self._size -= removed
            except sqlite3.OperationalError as exc:
                if not _disk_full(exc):
                    raise

    def last_seq(self, sequence: str) -> int:
        """The last ``seq`` handed out for ``sequence`` (0 before the first)."""
        with self._lock:
            return self._seq.get(sequence, 0)

    def writable(self) -> bool:
        """Messages are being kept on disk: not in memory after a full disk, and the newest one was stored."""
        return not self.in_memory and not self.last_failed

    def backlog(self) -> int:
        """Messages waiting for the broker."""
        return self._size

    def dropped(self) -> int:
        """Oldest entries dropped to make room, over the spool's life, plus messages lost since start."""
        with self._lock:
            return self._counter("dropped") + self.lost

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _disk_full(error: Exception) -> bool:
    """SQLITE_FULL: the disk, or the spool's own ``max_mb``, has no room left."""
    return "full" in str(error)
