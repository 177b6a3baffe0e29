"""Durable outbox: every reading is committed to SQLite before anything is sent.

A row is deleted only when the broker has acknowledged its message (PUBACK), so a
broker down for days, a flapping link or a SIGKILL loses nothing: what is still
here is sent again. The row id is the gateway's sequence number: AUTOINCREMENT
never reuses an id, so the sequence survives restarts and deletions.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class _Entry:
    __slots__ = ("seq", "topic", "payload", "done")

    def __init__(self, seq: int, topic: str, payload: str):
        self.seq, self.topic, self.payload, self.done = seq, topic, payload, False


class Outbox:
    """Group commit: polling threads that append at the same moment share one
    transaction (one disk flush), and ``append`` returns only once its row is committed."""

    def __init__(self, path: str | Path, max_rows: int, durable: bool = True):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()  # the connection
        self._pending_lock = threading.Lock()  # sequence numbers and rows not yet written
        self._pending: list[_Entry] = []
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed reading survives a power cut too, not only a killed process
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(SCHEMA)
        self._depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        self._seq = row[0] if row else 0

    def append(self, topic: str, payload_for: Callable[[int], str]) -> int:
        """Store one message durably; ``payload_for(seq)`` renders it with its sequence number."""
        # numbered and queued in one step, so rows are committed in sequence order and the
        # publisher's cursor can never pass a row that is not yet in the table
        with self._pending_lock:
            self._seq += 1
            entry = _Entry(self._seq, topic, payload_for(self._seq))
            self._pending.append(entry)
        with self._lock:
            if not entry.done:  # else a thread before us committed it with its own batch
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit(batch)
        return entry.seq

    def _commit(self, batch: list[_Entry]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT INTO outbox(seq, topic, payload) VALUES (?,?,?)",
                                 [(e.seq, e.topic, e.payload) for e in batch])
            dropped = max(0, self._depth + len(batch) - self.max_rows)
            if dropped:
                self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (dropped,))
                self._db.execute(
                    "INSERT INTO counters VALUES ('dropped', ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                    (dropped, dropped),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            with self._pending_lock:  # back in line for the next committer
                self._pending[:0] = batch
            raise
        for e in batch:
            e.done = True
        self._depth += len(batch) - dropped
        if dropped:
            total = self._db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()[0]
            log.critical("OUTBOX FULL (%d rows): dropped the %d oldest reading(s); %d dropped in all. "
                         "Raise outbox.max_rows or restore the link to the broker.", self.max_rows, dropped, total)

    def after(self, seq: int, limit: int, upto: int | None = None) -> list[tuple[int, str, str]]:
        """Rows with seq > ``seq`` (and <= ``upto``), oldest first."""
        with self._lock:
            if upto is None:
                q = "SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?"
                return self._db.execute(q, (seq, limit)).fetchall()
            q = "SELECT seq, topic, payload FROM outbox WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
            return self._db.execute(q, (seq, upto, limit)).fetchall()

    def delete(self, seqs: Iterable[int]) -> None:
        seqs = list(seqs)
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN")  # one transaction (one flush) for the whole batch of PUBACKs
            cur = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self._db.execute("COMMIT")
            self._depth -= cur.rowcount

    def last_seq(self) -> int:
        """The highest sequence number committed."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
            return row[0] if row else 0

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()
            return row[0] if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
