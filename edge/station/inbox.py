"""The station's inbox: samples waiting for a label in ``DATA/_inbox/``, and where each labelled one went.

One SQLite file (``DATA/_inbox/station.sqlite``) holds every sample ever received, with its
metadata and its fate: ``inbox`` (its JPEG in ``DATA/_inbox/<device>/``), ``labelled`` (moved to
``DATA/<label>/``, the layout ``linewatch train`` reads), ``skipped`` or ``dropped`` (the inbox
was full; the oldest unlabelled go first). The row is the sample's provenance and never goes:
it is how a replay is known, and how ``undo`` finds a photo again. A label is taken in one
conditional update, so when two people label the same photo the second is told who was first.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from linewatch.edge.comms.payloads import SAMPLE_PRIORITY, Sample
from linewatch.edge.files import write_atomic

INBOX = "_inbox"
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
Stored = Literal["stored", "duplicate"]
State = Literal["inbox", "labelled", "skipped", "dropped"]
STATES: tuple[State, ...] = ("inbox", "labelled", "skipped", "dropped")


class InboxSample(Sample):
    """A sample as the station's API returns it: the device's announcement, and what became of it."""

    model_config = ConfigDict(title="linewatch station sample (GET /api/samples)")

    state: State = Field(description="inbox: waiting for a label; labelled: in DATA/<labelled_as>/; skipped; dropped: "
                                     "the inbox was full and it was the oldest waiting.")
    labelled_as: str | None = Field(description="The label it was given.")
    by: str | None = Field(description="Who labelled, skipped or undid it last.")
    decided: float | None = Field(description="When, epoch seconds.")
    path: str = Field(description="The photo, under DATA.")

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    device TEXT NOT NULL, sample_id TEXT NOT NULL, reason TEXT NOT NULL, model TEXT NOT NULL, guess TEXT NOT NULL,
    received REAL NOT NULL, meta TEXT NOT NULL, state TEXT NOT NULL, label TEXT, path TEXT NOT NULL,
    by TEXT, decided REAL, PRIMARY KEY (device, sample_id));
CREATE INDEX IF NOT EXISTS samples_state ON samples (state, received);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS models (device TEXT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (device, sha256));
"""


class Conflict(ValueError):
    """Somebody else decided this sample first (HTTP 409)."""


class NotFound(ValueError):
    """No such sample (HTTP 404)."""


def check_label(label: str) -> str:
    """``label`` if it can be a class folder: letters, digits, - and _, at most 64, not starting with _ or -."""
    if not isinstance(label, str) or not LABEL.match(label):
        raise ValueError(f"label {label!r} cannot be a class folder: use letters, digits, - or _ (at most 64), "
                         "starting with a letter or digit")
    return label


class Inbox:
    """``DATA/_inbox``: thread-safe (the MQTT thread adds, the page's threads label)."""

    def __init__(self, data: Path, max_waiting: int = 5000) -> None:
        self.data = data
        self.folder = data / INBOX
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.folder / "station.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def count(self, name: str, by: int = 1) -> None:
        """Add to a counter the station reports (``stats``)."""
        with self._transaction() as db:
            db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                       (name, by, by))

    def models(self) -> dict[str, set[str]]:
        """Every model (sha256) each device has announced in its status, since the station first ran."""
        found: dict[str, set[str]] = {}
        with self._lock:
            for device, digest in self._db.execute("SELECT device, sha256 FROM models"):
                found.setdefault(device, set()).add(digest)
        return found

    def remember_model(self, device: str, digest: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO models VALUES (?, ?)", (device, digest))

    def has(self, device: str, sample_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM samples WHERE device = ? AND sample_id = ?",
                                    (device, sample_id)).fetchone() is not None

    def add(self, sample: Sample, jpeg: bytes) -> Stored:
        """Keep a received sample (once: a replay is a ``duplicate``); the oldest waiting go when the inbox is full."""
        if self.has(sample.device_id, sample.sample_id):
            self.count("duplicates")
            return "duplicate"
        path = self.folder / sample.device_id / f"{sample.sample_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, jpeg)
        with self._transaction() as db:
            db.execute("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, 'inbox', NULL, ?, NULL, NULL)",
                       (sample.device_id, sample.sample_id, sample.reason, sample.model.sha256,
                        sample.suggested or sample.label, time.time(), sample.model_dump_json(by_alias=True),
                        str(path.relative_to(self.data))))
            waiting = db.execute("SELECT count(*) FROM samples WHERE state = 'inbox'").fetchone()[0]
            over = db.execute("SELECT device, sample_id, path FROM samples WHERE state = 'inbox' ORDER BY received "
                              "LIMIT ?", (max(0, waiting - self.max_waiting),)).fetchall()
            for device, sample_id, old in over:
                db.execute("UPDATE samples SET state = 'dropped', decided = ? WHERE device = ? AND sample_id = ?",
                           (time.time(), device, sample_id))
                (self.data / old).unlink(missing_ok=True)
            if over:
                db.execute("INSERT INTO counters VALUES ('dropped', ?) ON CONFLICT(name) DO UPDATE SET value = "
                           "value + ?", (len(over), len(over)))
        return "stored"

    # --- reading --------------------------------------------------------------------------------

    def samples(self, state: str = "inbox", device: str | None = None, reason: str | None = None,
                model: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Samples in ``state``, what teaches most first (``SAMPLE_PRIORITY``, then the least sure), filtered."""
        where, args = ["state = ?"], [state]
        for column, value in (("device", device), ("reason", reason), ("model", model)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        order = " ".join(f"WHEN '{r}' THEN {n}" for n, r in enumerate(SAMPLE_PRIORITY)) + \
            f" ELSE {len(SAMPLE_PRIORITY)}"
        with self._lock:
            rows = self._db.execute(
                f"SELECT meta, state, label, by, decided, path FROM samples WHERE {' AND '.join(where)} "
                f"ORDER BY CASE reason {order} END, json_extract(meta, '$.score'), received "
                "LIMIT ?", (*args, limit)).fetchall()
        return [_row(*row) for row in rows]

    def get(self, device: str, sample_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute("SELECT meta, state, label, by, decided, path FROM samples WHERE device = ? AND "
                                   "sample_id = ?", (device, sample_id)).fetchone()
        if row is None:
            raise NotFound(f"no sample {sample_id} from device {device}")
        return _row(*row)

    def image(self, device: str, sample_id: str) -> bytes:
        path = self.data / self.get(device, sample_id)["path"]
        try:
            return path.read_bytes()
        except OSError:
            raise NotFound(f"the photo of sample {sample_id} is gone from {path}") from None

    def labels(self) -> list[str]:
        """The classes: DATA's class folders, and every label a device's model gave."""
        folders = {p.name for p in self.data.iterdir() if p.is_dir() and LABEL.match(p.name)}
        with self._lock:
            guessed = {row[0] for row in self._db.execute(
                "SELECT DISTINCT json_extract(json_each.value, '$.label') FROM samples, "
                "json_each(samples.meta, '$.top')")}
        return sorted(folders | {g for g in guessed if isinstance(g, str) and LABEL.match(g)})

    def stats(self) -> dict[str, Any]:
        with self._lock:
            states = dict(self._db.execute("SELECT state, count(*) FROM samples GROUP BY state").fetchall())
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            devices = [row[0] for row in self._db.execute("SELECT DISTINCT device FROM samples ORDER BY device")]
            models = [row[0] for row in self._db.execute("SELECT DISTINCT model FROM samples ORDER BY model")]
        return {"states": states, "counters": counters, "devices": devices, "models": models,
                "reasons": list(SAMPLE_PRIORITY)}

    # --- deciding -------------------------------------------------------------------------------

    def label(self, device: str, sample_id: str, label: str, by: str) -> dict[str, Any]:
        """Move the photo into ``DATA/<label>/``; ``Conflict`` when it was decided already."""
        check_label(label)
        with self._transaction() as db:
            row = self._decide(db, device, sample_id)
            source = self.data / row[0]
            target = self.data / label / f"{device}_{sample_id}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            source.replace(target)
            db.execute("UPDATE samples SET state = 'labelled', label = ?, by = ?, decided = ?, path = ? WHERE "
                       "device = ? AND sample_id = ?", (label, by, time.time(), str(target.relative_to(self.data)),
                                                        device, sample_id))
        return self.get(device, sample_id)

    def skip(self, device: str, sample_id: str, by: str) -> dict[str, Any]:
        """Not worth a label (blurred, nothing in view): it stays in ``_inbox``, off the page."""
        with self._transaction() as db:
            self._decide(db, device, sample_id)
            db.execute("UPDATE samples SET state = 'skipped', by = ?, decided = ? WHERE device = ? AND sample_id = ?",
                       (by, time.time(), device, sample_id))
        return self.get(device, sample_id)

    def undo(self, device: str, sample_id: str, by: str) -> dict[str, Any]:
        """Back to the inbox: a labelled photo moves back from its class folder."""
        with self._transaction() as db:
            row = db.execute("SELECT state, path FROM samples WHERE device = ? AND sample_id = ?",
                             (device, sample_id)).fetchone()
            if row is None:
                raise NotFound(f"no sample {sample_id} from device {device}")
            state, path = row
            if state not in ("labelled", "skipped"):
                raise Conflict(f"sample {sample_id} is {state}: only a labelled or skipped one can be undone")
            back = self.folder / device / f"{sample_id}.jpg"
            if state == "labelled":
                (self.data / path).replace(back)
            db.execute("UPDATE samples SET state = 'inbox', label = NULL, by = ?, decided = ?, path = ? WHERE "
                       "device = ? AND sample_id = ?", (by, time.time(), str(back.relative_to(self.data)), device,
                                                        sample_id))
        return self.get(device, sample_id)

    def _decide(self, db: sqlite3.Connection, device: str, sample_id: str) -> tuple[str]:
        row = db.execute("SELECT path, state, label, by FROM samples WHERE device = ? AND sample_id = ?",
                         (device, sample_id)).fetchone()
        if row is None:
            raise NotFound(f"no sample {sample_id} from device {device}")
        path, state, label, by = row
        if state != "inbox":
            who = f" by {by}" if by else ""
            raise Conflict(f"sample {sample_id} was {state}{' as ' + label if label else ''}{who} already")
        return (path,)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row(meta: str, state: str, label: str | None, by: str | None, decided: float | None,
         path: str) -> dict[str, Any]:
    row = InboxSample.model_validate({**json.loads(meta), "state": state, "labelled_as": label, "by": by,
                                      "decided": decided, "path": path})
    return row.model_dump(mode="json", by_alias=True)
