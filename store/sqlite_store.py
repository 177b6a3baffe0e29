"""Embedded store: one SQLite file in WAL mode, for the demo and one-box sites.

One row per (site, device, channel, ts), upserted, so a redelivered or replayed
reading overwrites itself. The primary key is the only index: every read is a range of
it per (device, channel), and a second index on (site, ts) cost the collector's writes a
sixth of their time (SQLite keeps every index of every row it inserts). Numbers and
booleans go to ``value``; text channels (serial numbers, model names) to ``text_value``
and are served by ``latest`` only.
Timestamps are integer milliseconds since the epoch, UTC.
Signed messages (chain of custody) go to ``messages``, one row per (site, gateway,
epoch, seq), the first stored kept, with their bytes as received.

A write is one transaction that always ends (committed, or rolled back on any
exception). A reading SQLite cannot hold as it is (a bind or constraint error) is
refused on its own and the rest of the batch is stored; a database that is locked,
full, read-only or damaged is "unavailable" and nothing is written.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from contract import topics
from contract.gc_paused import gc_paused
from contract.message import Reading
from contract.sqlite_file import open_sqlite
from contract.store import (LETTER_PAGE, READ_COLUMNS, CustodyFinding, DeadLetter, DeviceSeen, Link, SeqBlock,
                            SeqMark, SeqRange, SequenceFinding, SignedMessage, StoreUnavailable, finding_filters,
                            pages_by_instant, range_blocks, seq_spans, source_pairs, union_blocks)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    site TEXT NOT NULL, device TEXT NOT NULL, channel TEXT NOT NULL, ts INTEGER NOT NULL,
    gateway TEXT NOT NULL, value REAL, text_value TEXT, quality TEXT, seq INTEGER,
    PRIMARY KEY (site, device, channel, ts)
) WITHOUT ROWID;
DROP INDEX IF EXISTS readings_site_ts;
CREATE TABLE IF NOT EXISTS devices (
    site TEXT NOT NULL, device TEXT NOT NULL, gateway TEXT NOT NULL, last_seen INTEGER NOT NULL,
    status TEXT, PRIMARY KEY (site, device)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, received TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, reason TEXT NOT NULL, size INTEGER, sha256 TEXT
);
CREATE INDEX IF NOT EXISTS dead_letters_received ON dead_letters (received);
CREATE TABLE IF NOT EXISTS sequence_blocks (
    site TEXT NOT NULL, gateway TEXT NOT NULL, epoch TEXT NOT NULL, block INTEGER NOT NULL, bits BLOB NOT NULL,
    times BLOB NOT NULL, PRIMARY KEY (site, gateway, epoch, block)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sequence_marks (
    site TEXT NOT NULL, gateway TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (site, gateway, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sequence_findings (
    site TEXT NOT NULL, gateway TEXT NOT NULL, epoch TEXT NOT NULL, kind TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, noticed INTEGER NOT NULL, cause TEXT NOT NULL, explained INTEGER NOT NULL,
    previous TEXT NOT NULL, start INTEGER, "end" INTEGER, resolved INTEGER,
    PRIMARY KEY (site, gateway, epoch, kind, first)
);
CREATE TABLE IF NOT EXISTS messages (
    site TEXT NOT NULL, gateway TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
    hash TEXT NOT NULL, prev TEXT NOT NULL, key_id TEXT NOT NULL, raw BLOB NOT NULL,
    PRIMARY KEY (site, gateway, epoch, seq)
);
CREATE INDEX IF NOT EXISTS messages_site_ts ON messages (site, ts);
CREATE TABLE IF NOT EXISTS custody_findings (
    site TEXT NOT NULL, gateway TEXT NOT NULL, epoch TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL,
    ts INTEGER NOT NULL, noticed INTEGER NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (site, gateway, epoch, kind, seq)
);
"""

#: columns added to dead_letters after its first release: (name, type)
DEAD_LETTER_COLUMNS_SINCE = (("size", "INTEGER"), ("sha256", "TEXT"))

INSERT_LETTER = "INSERT INTO dead_letters (received, topic, payload, reason, size, sha256) VALUES (?,?,?,?,?,?)"

#: errors that are about what is written (a value SQLite cannot bind, text that does not
#: encode, a constraint or trigger), not about the database
DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
               ValueError, TypeError, OverflowError)

UPSERT = """
INSERT INTO readings (site, device, channel, ts, gateway, value, text_value, quality, seq)
VALUES (?,?,?,?,?,?,?,?,?)
ON CONFLICT (site, device, channel, ts) DO UPDATE SET
    gateway = excluded.gateway, value = excluded.value, text_value = excluded.text_value,
    quality = excluded.quality, seq = excluded.seq
"""

SEEN = """
INSERT INTO devices (site, device, gateway, last_seen, status) VALUES (?,?,?,?,?)
ON CONFLICT (site, device) DO UPDATE SET gateway = excluded.gateway, last_seen = excluded.last_seen,
    status = excluded.status WHERE excluded.last_seen >= devices.last_seen
"""


FINDING_COLUMNS = ("kind, site, gateway, epoch, first, last, noticed, cause, explained, previous, start, "
                   "\"end\", resolved")

#: a finding recorded again keeps when it was first noticed
UPSERT_FINDING = f"""
INSERT INTO sequence_findings ({FINDING_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT (site, gateway, epoch, kind, first) DO UPDATE SET last = excluded.last, cause = excluded.cause,
    explained = excluded.explained, start = excluded.start, "end" = excluded."end", resolved = excluded.resolved
"""


#: the first message stored of a (site, gateway, epoch, seq) is kept: a second one is a conflict, never a correction
INSERT_MESSAGE = ("INSERT INTO messages (site, gateway, epoch, seq, ts, hash, prev, key_id, raw) "
                  "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING")

#: a finding recorded again keeps when it was first noticed
UPSERT_CUSTODY_FINDING = """
INSERT INTO custody_findings (kind, site, gateway, epoch, seq, ts, noticed, detail) VALUES (?,?,?,?,?,?,?,?)
ON CONFLICT (site, gateway, epoch, kind, seq) DO UPDATE SET ts = excluded.ts, detail = excluded.detail
"""

#: signed messages read per query by ``signed_messages``
MESSAGE_PAGE = 1000

BLOCK = "SELECT block, bits, times FROM sequence_blocks WHERE site = ? AND gateway = ? AND epoch = ? AND block"
UPSERT_BLOCK = "INSERT OR REPLACE INTO sequence_blocks VALUES (?,?,?,?,?,?)"
#: each mark is a fact about the store, so the highest of them is too
UPSERT_MARK = ("INSERT INTO sequence_marks VALUES (?,?,?,?) ON CONFLICT (site, gateway, epoch) "
               "DO UPDATE SET seq = MAX(seq, excluded.seq)")


def _ms_or_none(ts: dt.datetime | None) -> int | None:
    return None if ts is None else to_ms(ts)


def _ts_or_none(ms: int | None) -> dt.datetime | None:
    return None if ms is None else from_ms(ms)


def to_ms(ts: dt.datetime) -> int:
    return int(ts.timestamp() * 1000 + (0.5 if ts.timestamp() >= 0 else -0.5))


def from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def reading_rows(r: Reading) -> list[tuple]:
    ms, site, device, gateway, seq, quality = to_ms(r.ts), r.site, r.device, r.gateway, r.seq, r.quality
    # a float, the usual value, is taken as it is: this runs for every value the collector stores
    return [(site, device, channel, ms, gateway,
             v if type(v) is float else float(v) if isinstance(v, (int, float, bool)) else None,
             v if isinstance(v, str) else None, quality[channel].value if channel in quality else None, seq)
            for channel, v in r.values.items()]


class SqliteStore:
    """``create``: whether a missing file may be created (the collector's first run)."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = open_sqlite(
            path, "store", {"readings"}, create=create, check_same_thread=False, isolation_level=None, timeout=5.0,
            damaged_hint="restore it from a backup, or check the store URL",
            missing_hint="check the store URL (sqlite:///relative/path.db, sqlite:////absolute/path.db); "
                         "the collector creates the store on its first run")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # acknowledged upstream means on disk
        self._db.executescript(SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(dead_letters)")}
        for name, kind in DEAD_LETTER_COLUMNS_SINCE:
            if name not in have:
                self._db.execute(f"ALTER TABLE dead_letters ADD COLUMN {name} {kind}")
        self._blocks_from_ranges()

    def write(self, readings: list[Reading], dead_letters: list[DeadLetter] = (),
              messages: Sequence[SignedMessage] = ()) -> list[tuple[Reading, str]]:
        letters = [(d.received.isoformat(), d.topic, d.payload, d.reason, d.size, d.sha256) for d in dead_letters]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._upsert(readings)
                    refused = []
                except DATA_ERRORS:
                    self._db.execute("ROLLBACK")
                    self._db.execute("BEGIN IMMEDIATE")
                    refused = self._upsert_each(readings)
                self._db.executemany(INSERT_MESSAGE, _message_rows(messages, refused))
                self._db.executemany(INSERT_LETTER, letters)
                self._db.execute("COMMIT")
            except DATA_ERRORS:
                raise  # a dead letter it cannot hold: the caller decides
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
        return refused

    def _upsert(self, readings: list[Reading]) -> None:
        seen: dict[tuple, tuple] = {}
        for r in readings:
            key = (r.site, r.device)
            ms = to_ms(r.ts)
            if key not in seen or seen[key][3] <= ms:
                seen[key] = (r.site, r.device, r.gateway, ms, r.status.value)
        self._db.executemany(UPSERT, [row for r in readings for row in reading_rows(r)])
        self._db.executemany(SEEN, list(seen.values()))

    def _upsert_each(self, readings: list[Reading]) -> list[tuple[Reading, str]]:
        """Upsert reading by reading, each under a savepoint; return those refused, with why."""
        refused = []
        for r in readings:
            self._db.execute("SAVEPOINT one")
            try:
                self._upsert([r])
            except DATA_ERRORS as exc:
                self._db.execute("ROLLBACK TO one")
                refused.append((r, f"SQLite cannot store it: {type(exc).__name__}: {exc}"))
            self._db.execute("RELEASE one")
        return refused

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    def read(self, site, start, end, channels=None, devices=None, sources=None, limit=None) -> pd.DataFrame:
        lo, hi = to_ms(start), to_ms(end)
        pairs = source_pairs(channels, devices, sources)
        if pairs is None:  # the pairs the site has, of the channels or devices asked for
            pairs = [(d, c) for d, c in self._pairs(site) if (not channels or c in channels)
                     and (not devices or d in devices)]
        # one primary-key range per (device, channel): rows come in ts order, and no row of a pair
        # that is not wanted is read (a device x channel product may name pairs nobody monitors)
        sql = ("SELECT ts, gateway, value, quality FROM readings WHERE site = ? AND device = ? AND channel = ? "
               "AND ts >= ? AND ts < ? AND text_value IS NULL" + (f" LIMIT {int(limit)}" if limit is not None else ""))
        with gc_paused():
            parts = [(device, channel, self._query(sql, (site, device, channel, lo, hi))) for device, channel in pairs]
            return _pairs_frame(site, parts, limit)

    def _pairs(self, site: str) -> list[tuple[str, str]]:
        """The (device, channel) pairs of a site, in key order: one primary-key seek per pair
        (the next pair after the last found), not a scan of the site's rows."""
        first = "SELECT device, channel FROM readings WHERE site = ? ORDER BY device, channel LIMIT 1"
        after = ("SELECT device, channel FROM readings WHERE site = ? AND (device, channel) > (?, ?) "
                 "ORDER BY device, channel LIMIT 1")
        pairs = self._query(first, (site,))
        while True:
            more = self._query(after, (site, *pairs[-1])) if pairs else []
            if not more:
                return pairs
            pairs += more

    def read_sources(self, site, start, end, sources) -> dict[str, pd.DataFrame]:
        sql = ("SELECT ts, value, quality FROM readings WHERE site = ? AND device = ? AND channel = ? "
               "AND ts >= ? AND ts < ? AND text_value IS NULL")
        lo, hi = to_ms(start), to_ms(end)
        out = {}
        with gc_paused():
            for src in sources:
                device, channel = src.split(".", 1)
                out[src] = _source_frame(self._query(sql, (site, device, channel, lo, hi)))
        return out

    def latest(self, site) -> pd.DataFrame:
        rows = self._query(
            "SELECT r.ts, r.site, r.gateway, r.device, r.channel, COALESCE(r.value, r.text_value), r.quality "
            "FROM readings r JOIN (SELECT device, channel, MAX(ts) AS ts FROM readings WHERE site = ? "
            "GROUP BY device, channel) m ON r.device = m.device AND r.channel = m.channel AND r.ts = m.ts "
            "WHERE r.site = ? ORDER BY r.device, r.channel", (site, site))
        return _frame(rows)

    def devices(self, site=None) -> list[DeviceSeen]:
        sql = "SELECT site, gateway, device, last_seen FROM devices"
        rows = self._query(sql + (" WHERE site = ?" if site else "") + " ORDER BY site, device", (site,) if site else ())
        return [DeviceSeen(s, g, d, from_ms(ms)) for s, g, d, ms in rows]

    def dead_letters(self, limit=100) -> list[DeadLetter]:
        rows = self._query("SELECT received, topic, payload, reason, size, sha256 FROM dead_letters "
                           "ORDER BY id DESC LIMIT ?", (limit,))
        return _letters(rows)

    def site_dead_letters(self, site, start, end) -> Iterator[DeadLetter]:
        # ``received`` is ISO 8601 text in UTC: its order is time order but for how a whole
        # second is written, so the text range is widened by a second and the times compared
        prefix = f"{topics.ROOT}/{site}/"
        lo, hi = ((t - dt.timedelta(seconds=1)).astimezone(dt.UTC).isoformat()
                  for t in (start, end + dt.timedelta(seconds=2)))
        select = ("SELECT received, topic, payload, reason, size, sha256 FROM dead_letters WHERE received {} ? "
                  "AND received < ? AND substr(topic, 1, ?) = ? ORDER BY received")

        def read(after, inclusive):
            return self._query(select.format(">=" if inclusive else ">") + " LIMIT ?",
                               (after or lo, hi, len(prefix), prefix, LETTER_PAGE))

        def at(t):
            return self._query(select.format("="), (t, hi, len(prefix), prefix))

        for rows in pages_by_instant(read, at, lambda row: row[0], LETTER_PAGE):
            yield from sorted((d for d in _letters(rows) if start <= d.received < end),
                              key=lambda d: (d.received, d.sha256))

    def record_seq_blocks(self, blocks: list[SeqBlock]) -> None:
        """OR each block into the stored one: one row per block, whoever wrote it."""
        self._transaction(lambda: self._merge_blocks(blocks))

    def _transaction(self, work) -> None:
        """Run ``work`` in one write transaction: all of it is written or none."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                work()
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")

    def _merge_blocks(self, blocks: list[SeqBlock]) -> None:
        for b in union_blocks(blocks):
            key = (b.site, b.gateway, b.epoch)
            held = [SeqBlock.from_bytes(*key, *row) for row in self._db.execute(f"{BLOCK} = ?", (*key, b.block))]
            [m] = union_blocks([b, *held])
            self._db.execute(UPSERT_BLOCK, (*key, m.block, m.bits_bytes(), m.times_bytes()))

    def _blocks_from_ranges(self) -> None:
        """A store written before blocks kept runs of seqs (table ``sequence_ranges``): they
        become blocks, once, in one transaction."""
        old = "SELECT 1 FROM sqlite_master WHERE name = 'sequence_ranges'"
        if not self._db.execute(old).fetchall():
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if not self._db.execute(old).fetchall():
                return  # another process moved them meanwhile
            rows = self._db.execute("SELECT site, gateway, epoch, first, last, first_ts, last_ts FROM sequence_ranges")
            self._merge_blocks(range_blocks(SeqRange(s, g, e, f, la, from_ms(a), from_ms(b))
                                            for s, g, e, f, la, a, b in rows))
            self._db.execute("DROP TABLE sequence_ranges")
            self._db.execute("COMMIT")
        finally:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def seq_tops(self, site, gateway) -> dict[str, int]:
        return dict(self._query("SELECT epoch, MAX(block) FROM sequence_blocks WHERE site = ? AND gateway = ? "
                                "GROUP BY epoch", (site, gateway)))

    def seq_blocks(self, site, gateway, epoch, first, last, limit=None) -> list[SeqBlock]:
        rows = self._query(f"{BLOCK} >= ? AND block <= ? ORDER BY block LIMIT ?",
                           (site, gateway, epoch, first, last, -1 if limit is None else limit))
        return [SeqBlock.from_bytes(site, gateway, epoch, *row) for row in rows]

    def record_seq_marks(self, marks: list[SeqMark]) -> None:
        rows = [(m.site, m.gateway, m.epoch, m.seq) for m in marks]
        self._transaction(lambda: self._db.executemany(UPSERT_MARK, rows))

    def seq_marks(self, site, gateway) -> dict[str, int]:
        return dict(self._query("SELECT epoch, seq FROM sequence_marks WHERE site = ? AND gateway = ?",
                                (site, gateway)))

    def record_finding(self, finding: SequenceFinding) -> None:
        f = finding
        with self._lock:
            try:
                self._db.execute(UPSERT_FINDING, (
                    f.kind, f.site, f.gateway, f.epoch, f.first, f.last, to_ms(f.noticed), f.cause, f.explained,
                    f.previous, _ms_or_none(f.start), _ms_or_none(f.end), _ms_or_none(f.resolved)))
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    def sequence_findings(self, site=None, *, gateway=None, epoch=None, kind=None) -> list[SequenceFinding]:
        named = finding_filters(site, gateway, epoch, kind)
        where = " WHERE " + " AND ".join(f"{k} = ?" for k, _ in named) if named else ""
        rows = self._query(f"SELECT {FINDING_COLUMNS} FROM sequence_findings{where} ORDER BY noticed, gateway, epoch, first",
                           tuple(v for _, v in named))
        return [SequenceFinding(k, s, g, e, f, la, from_ms(n), c, x, p, _ts_or_none(a), _ts_or_none(b),
                                _ts_or_none(res)) for k, s, g, e, f, la, n, c, x, p, a, b, res in rows]

    def links(self, site, gateway, epoch, seqs: Iterable[int]) -> dict[int, Link]:
        wanted = sorted(set(seqs))
        out = {}
        for i in range(0, len(wanted), MESSAGE_PAGE):
            part = wanted[i:i + MESSAGE_PAGE]
            rows = self._query(f"SELECT seq, hash, prev, ts FROM messages WHERE site = ? AND gateway = ? AND epoch = ? "
                               f"AND seq IN ({','.join('?' * len(part))})", (site, gateway, epoch, *part))
            out.update((seq, Link(h, p, from_ms(ts))) for seq, h, p, ts in rows)
        return out

    def signed_messages(self, site, start, end) -> Iterator[bytes]:
        # the keys of the period first (small), then the bytes by seq ranges of the primary key
        lo, hi = to_ms(start), to_ms(end)
        keys = self._query("SELECT gateway, epoch, seq FROM messages WHERE site = ? AND ts >= ? AND ts < ? "
                           "ORDER BY gateway, epoch, seq", (site, lo, hi))
        for (gateway, epoch), chain in itertools.groupby(keys, key=lambda k: k[:2]):
            for first, last in seq_spans([seq for *_, seq in chain], MESSAGE_PAGE):
                rows = self._query("SELECT raw FROM messages WHERE site = ? AND gateway = ? AND epoch = ? AND seq >= ? "
                                   "AND seq <= ? AND ts >= ? AND ts < ? ORDER BY seq",
                                   (site, gateway, epoch, first, last, lo, hi))
                yield from (bytes(raw) for raw, in rows)

    def chain_witness(self, site, gateway, epoch, seq, at, later=True) -> bytes | None:
        where = "seq > ? AND ts >= ? ORDER BY seq" if later else "seq < ? AND ts < ? ORDER BY seq DESC"
        rows = self._query(f"SELECT raw FROM messages WHERE site = ? AND gateway = ? AND epoch = ? AND {where} LIMIT 1",
                           (site, gateway, epoch, seq, to_ms(at)))
        return bytes(rows[0][0]) if rows else None

    def record_custody_finding(self, finding: CustodyFinding) -> None:
        f = finding
        with self._lock:
            try:
                self._db.execute(UPSERT_CUSTODY_FINDING, (f.kind, f.site, f.gateway, f.epoch, f.seq, to_ms(f.ts),
                                                          to_ms(f.noticed), f.detail))
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    def custody_findings(self, site=None) -> list[CustodyFinding]:
        rows = self._query("SELECT kind, site, gateway, epoch, seq, ts, noticed, detail FROM custody_findings"
                           + (" WHERE site = ?" if site else "") + " ORDER BY noticed, gateway, epoch, seq",
                           (site,) if site else ())
        return [CustodyFinding(k, s, g, e, n, from_ms(ts), from_ms(t), d) for k, s, g, e, n, ts, t, d in rows]

    def count(self) -> int:
        return self._query("SELECT COUNT(*) FROM readings", ())[0][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _message_rows(messages: Sequence[SignedMessage], refused: list[tuple[Reading, str]]) -> list[tuple]:
    """Rows of the messages whose readings were not refused."""
    gone = {(r.site, r.gateway, r.epoch, r.seq) for r, _ in refused}
    return [(m.site, m.gateway, m.epoch, m.seq, to_ms(m.ts), m.hash, m.prev, m.key_id, m.raw) for m in messages
            if (m.site, m.gateway, m.epoch, m.seq) not in gone]


def _pairs_frame(site: str, parts: list[tuple[str, str, list[tuple]]], limit: int | None) -> pd.DataFrame:
    """``READ_COLUMNS`` from rows (ts, gateway, value, quality) per (device, channel) in pair
    order, sorted by ts with ties in pair order (that of the SQL ``ORDER BY ts, device, channel``)."""
    n = sum(len(rows) for *_, rows in parts)
    ts = np.empty(n, np.int64)
    value = np.empty(n, float)
    gateway, device, channel, quality = (np.empty(n, object) for _ in range(4))
    i = 0
    for dev, ch, rows in parts:
        if not rows:
            continue
        t, g, v, q = zip(*rows)
        j = i + len(rows)
        ts[i:j], gateway[i:j], value[i:j], quality[i:j] = t, g, v, q  # a NULL value becomes NaN
        device[i:j], channel[i:j] = dev, ch
        i = j
    order = np.argsort(ts, kind="stable")[:limit]
    return pd.DataFrame({
        "ts": pd.to_datetime(ts[order], unit="ms", utc=True), "site": np.full(len(order), site, dtype=object),
        "gateway": gateway[order], "device": device[order], "channel": channel[order], "value": value[order],
        "quality": quality[order]}, columns=READ_COLUMNS)


def _source_frame(rows: list[tuple]) -> pd.DataFrame:
    """``SOURCE_COLUMNS`` from rows (ts, value, quality) in ts order."""
    ts, value, quality = zip(*rows) if rows else ((), (), ())
    return pd.DataFrame({"ts": pd.to_datetime(np.array(ts, np.int64), unit="ms", utc=True),
                         "value": np.array(value, float),  # a NULL value becomes NaN
                         "quality": pd.Series(np.array(quality, object), dtype=object)})


def _frame(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=READ_COLUMNS)
    df["ts"] = pd.to_datetime(df["ts"], unit="ms", utc=True)
    return df


def _letters(rows: Iterable[tuple]) -> list[DeadLetter]:
    """Dead letters of rows (received, topic, payload, reason, size, sha256)."""
    return [DeadLetter(dt.datetime.fromisoformat(r), t, bytes(p), why, size, sha) if sha else
            DeadLetter(dt.datetime.fromisoformat(r), t, bytes(p), why)  # kept whole before sizes were kept
            for r, t, p, why, size, sha in rows]
