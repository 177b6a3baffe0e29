"""Embedded store: one SQLite file in WAL mode, for the demo and one-box sites.

A row per message: ``readings`` has one row per (site, device, ts), upserted, so a
redelivered or replayed reading overwrites itself, with the message's values packed
(store/message_rows.py: numbers as one float64 array in the order of a *layout* kept in
``layouts``, texts and qualities as JSON beside it). Two messages of a device at one
instant merge channel by channel, to at most ``MAX_CHANNELS`` channels (a message that would
widen an instant further is refused). ``device_layouts`` says which layouts a device has used,
so a read knows a site's (device, channel) pairs without scanning its rows. The primary key
is the only index: every read is a range of it per device. A row per channel value (the
layout before this one) cost the collector 70 us a message in B-tree upkeep, against ~6
(bench/README.md "Store layout"); a store in that layout is converted when first opened
(``_rows_per_message``).
Text channels (serial numbers, model names) are served by ``latest`` only.
Timestamps are integer milliseconds since the epoch, UTC.
Signed messages (chain of custody) go to ``messages``, one row per (site, gateway,
epoch, seq), the first stored kept, with their bytes as received.

A write is one transaction that always ends (committed, or rolled back on any
exception). A reading SQLite cannot hold as it is (a bind or constraint error) is
refused on its own and the rest of the batch is stored; a database that is locked,
full, read-only or damaged is "unavailable" and nothing is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import itertools
import json
import logging
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from contract import topics
from contract.gc_paused import gc_paused
from contract.message import MAX_CHANNELS, Reading
from contract.sqlite_file import UnusableFile, beside, open_sqlite, unwritable, use_wal, while_busy
from contract.store import (LETTER_PAGE, READ_COLUMNS, Books, CustodyFinding, DeadLetter, DeviceSeen, Link, SeqBlock,
                            SeqMark, SeqRange, SequenceFinding, SignedMessage, StoreUnavailable, finding_filters,
                            pages_by_instant, range_blocks, seq_spans, source_pairs, to_ms, union_blocks)
from contract.text import printable
from store.message_rows import (NAN, Channels, DamagedRow, Layout, layout_of_text, layout_text, merged, packed,
                                repacked, unpacked)

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    site TEXT NOT NULL, device TEXT NOT NULL, ts INTEGER NOT NULL, gateway TEXT NOT NULL, seq INTEGER,
    layout INTEGER NOT NULL, numbers BLOB NOT NULL, texts TEXT, quality TEXT, PRIMARY KEY (site, device, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS layouts (id INTEGER PRIMARY KEY, channels TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS device_layouts (
    site TEXT NOT NULL, device TEXT NOT NULL, layout INTEGER NOT NULL, PRIMARY KEY (site, device, layout)
) WITHOUT ROWID;
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

#: the tables of the store
CURRENT_TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))

#: columns added to dead_letters after its first release: (name, type)
DEAD_LETTER_COLUMNS_SINCE = (("size", "INTEGER"), ("sha256", "TEXT"))

INSERT_LETTER = "INSERT INTO dead_letters (received, topic, payload, reason, size, sha256) VALUES (?,?,?,?,?,?)"

#: errors that are about what is written (a value SQLite cannot bind, text that does not
#: encode, a constraint or trigger), not about the database
DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
               ValueError, TypeError, OverflowError)

ROW_COLUMNS = "site, device, ts, gateway, seq, layout, numbers, texts, quality"

#: a message over one of the same layout (its redelivery, the usual conflict) replaces it; one
#: of another layout is left alone here, counted short in ``rowcount``, and merged (``_merge_each``)
UPSERT = f"""
INSERT INTO readings ({ROW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)
ON CONFLICT (site, device, ts) DO UPDATE SET gateway = excluded.gateway, seq = excluded.seq,
    numbers = excluded.numbers, texts = excluded.texts, quality = excluded.quality
WHERE readings.layout = excluded.layout
"""
REPLACE = f"INSERT OR REPLACE INTO readings ({ROW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"

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

#: how long a statement waits for a lock another connection holds before the store is unavailable [s]
BUSY_TIMEOUT_S = 5.0
#: how often a writer tries again for the write lock another connection holds [s]: a try costs ~2 us
WRITE_LOCK_POLL_S = 0.0005
#: layouts (and devices' uses of them) remembered in memory; beyond, each is looked up in the file,
#: so that a gateway sending ever new sets of channels cannot grow a collector's memory
LAYOUTS_KEPT = 4096
#: the most layouts a read names in SQL (SQLite allows 32,766 parameters); a device with more that
#: hold a wanted channel is read whole and its rows filtered here
LAYOUTS_NAMED = 500
#: ``latest`` reads back from before this [ms]
LATEST = 2 ** 63 - 1
#: the columns of a source with no numbers in a window
EMPTY = (np.empty(0, np.int64), np.empty(0, float), np.empty(0, object))

#: the free space a conversion to a row per message needs, as a multiple of the store's size (its file and
#: write-ahead log): the new rows are written beside the old ones, through the log into the file, and the
#: vacuum after writes the file once more (measured at its peak: 1.7 times with five channels a message,
#: 2.75 with one; the vacuum's copy in TMPDIR besides)
CONVERSION_SPACE = 3.0

#: how long an opener waits for another process converting the store (or holding its write lock) before it
#: gives up: a conversion takes about a minute a year of a site [s]
CONVERSION_WAIT = 3600.0

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


def from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


class SqliteStore:
    """``create``: whether a missing file may be created (the collector's first run). A store this
    user cannot write is opened read-only by an opener that may not create it (a reading command), if
    it needs no conversion: its writes then fail as ``StoreUnavailable``."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = str(path)
        self._lock = threading.RLock()  # re-entered: a write looks layouts up
        read_only = None if create or not Path(path).is_file() else unwritable(path, "store")
        if read_only and not all(beside(path, end).exists() for end in ("-wal", "-shm")):
            # SQLite would create them, read-only and this user's, and its owner could write the store no more
            raise UnusableFile(f"{read_only}, and reading it needs {beside(path, '-shm')} and -wal files, which are "
                               "there only while a process that can write it has it open (the collector): read it "
                               "then, or as its owner, or read a copy of it: nothing was changed")
        self._db = open_sqlite(
            path, "store", {"readings"}, create=create, check_same_thread=False, isolation_level=None,
            timeout=BUSY_TIMEOUT_S,
            damaged_hint="restore it from a backup, or check the store URL",
            missing_hint="check the store URL (sqlite:///relative/path.db, sqlite:////absolute/path.db); "
                         "the collector creates the store on its first run", read_only=read_only is not None)
        # group_concat, a text function, passes a blob's bytes on unchanged only in a UTF-8 database: in a
        # UTF-16 one (a file made elsewhere) it converts them, lone surrogates to U+FFFD, at the same length
        ((encoding,),) = self._db.execute("PRAGMA encoding").fetchall()
        self._blobs_concatenate = encoding == "UTF-8"
        # layouts and the devices' use of them, as committed: ids never change once committed
        self._ids: dict[Layout, int] = {}
        self._layouts: dict[int, Layout] = {}
        self._used: set[tuple[str, str, int]] = set()
        # those made by the open transaction, known only once it commits
        self._new_ids: dict[Layout, int] = {}
        self._new_used: set[tuple[str, str, int]] = set()
        self._check_layout_ids()
        if read_only:
            self._check_current(read_only)
            return
        use_wal(self._db)
        self._db.execute("PRAGMA synchronous=FULL")  # acknowledged upstream means on disk
        self._rows_per_message()
        self._db.executescript(SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(dead_letters)")}
        for name, kind in DEAD_LETTER_COLUMNS_SINCE:
            if name not in have:
                self._db.execute(f"ALTER TABLE dead_letters ADD COLUMN {name} {kind}")
        self._blocks_from_ranges()

    def _check_layout_ids(self) -> None:
        """A layout's id names the channels of each row of it: a damaged or foreign file whose layouts table
        does not keep ids unique (its id not the primary key) would have rows read under another layout's
        channel names, silently. The table holds one row a layout ever written: read whole at opening
        (before anything is written; a store without one yet, new or of the old layout, has none to check)."""
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'layouts'").fetchall():
            return
        for n, count in self._db.execute("SELECT id, count(*) FROM layouts GROUP BY id HAVING count(*) > 1 LIMIT 1"):
            self._db.close()
            raise UnusableFile(f"store {self.path} is damaged: its layouts table gives id {printable(str(n))} to "
                               f"{count} layouts: nothing was changed; restore it from a backup")

    def _check_current(self, why: str) -> None:
        """A store opened read-only must be in today's layout: what opening it writes otherwise (its
        conversion, tables and columns added since) cannot be written."""
        try:
            # the names bound, never written into SQL: a foreign file's may hold quotes, spaces or SQL
            columns = set(self._db.execute("SELECT m.name, c.name FROM sqlite_master AS m, pragma_table_info(m.name) "
                                           "AS c WHERE m.type = 'table'"))
        except sqlite3.OperationalError as exc:
            raise UnusableFile(f"{why}, and SQLite cannot read it so ({exc}): read it as its owner, or read a copy of "
                               "it: nothing was changed") from None
        tables = {t for t, _ in columns}
        if (("readings", "channel") in columns or "sequence_ranges" in tables or not set(CURRENT_TABLES) <= tables
                or not {("dead_letters", c) for c, _ in DEAD_LETTER_COLUMNS_SINCE} <= columns):
            raise UnusableFile(f"{why}, and it must be brought up to date once (its layout is older than this "
                               "code's: a store of before 30 Nov 2026 is converted to a row per message), which "
                               "needs a user who can write it and its directory (the collector's, as it starts): "
                               "nothing was changed")

    def write(self, readings: list[Reading], dead_letters: list[DeadLetter] = (),
              messages: Sequence[SignedMessage] = (),
              books: Books | None = None) -> list[tuple[Reading, str]]:
        # everything made before the write lock is taken: the other writers of the file wait while it is held
        letters = [(d.received.isoformat(), d.topic, d.payload, d.reason, d.size, d.sha256) for d in dead_letters]
        rows, unpackable = _prepared(readings)
        with self._lock:
            self._new_ids, self._new_used = {}, set()
            try:
                self._begin_writing()
                try:
                    self._upsert(rows)
                    refused = []
                except DATA_ERRORS:
                    self._db.execute("ROLLBACK")
                    self._new_ids, self._new_used = {}, set()
                    self._begin_writing()
                    refused = self._upsert_each(rows)
                if unpackable:  # in the readings' order, as each was refused
                    at = {id(r): i for i, r in enumerate(readings)}
                    refused = sorted(refused + unpackable, key=lambda x: at[id(x[0])])
                self._db.executemany(INSERT_MESSAGE, _message_rows(messages, refused))
                self._db.executemany(INSERT_LETTER, letters)
                if books is not None:
                    self._record_books(books, refused)
                self._db.execute("COMMIT")
                self._committed()
            except DATA_ERRORS:
                raise  # a dead letter it cannot hold: the caller decides
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
        return refused

    def _record_books(self, books: Books, refused: list[tuple[Reading, str]]) -> None:
        """The seq blocks ``books`` gives, merged in the open transaction: last, as the caller has
        followed the seqs once it is called, so that nothing but the store being unavailable (the same
        write tried again) can fail after it."""
        try:
            self._merge_blocks(books(refused))
        except StoreUnavailable:
            raise
        except Exception as exc:  # a damaged block row: nothing is written, nothing acknowledged
            raise StoreUnavailable(f"sqlite {self.path}: the sequence records: {type(exc).__name__}: {exc}") from exc

    def _upsert(self, rows: list[tuple[Reading, tuple, tuple]]) -> None:
        """Upsert ``_prepared`` rows, each layout given its id, and the devices' last readings."""
        seen: dict[tuple, tuple] = {}
        upserts = []
        for _, (site, device, ms, gateway, seq, layout, numbers, texts, quality), last in rows:
            upserts.append((site, device, ms, gateway, seq, self._layout_id(site, device, layout), numbers, texts,
                            quality))
            if (site, device) not in seen or seen[site, device][3] <= ms:
                seen[site, device] = last
        self._db.execute("SAVEPOINT rows")
        if self._db.executemany(UPSERT, upserts).rowcount != len(upserts):  # an instant's messages of two layouts
            self._db.execute("ROLLBACK TO rows")
            self._merge_each(upserts)
        self._db.execute("RELEASE rows")
        self._db.executemany(SEEN, list(seen.values()))

    def _committed(self) -> None:
        """The open transaction's layouts are known for good: it committed."""
        for layout, n in self._new_ids.items():
            self._remember(n, layout)
        self._used.update(itertools.islice(self._new_used, max(0, LAYOUTS_KEPT - len(self._used))))
        self._new_ids, self._new_used = {}, set()

    def _remember(self, n: int, layout: Layout) -> None:
        if len(self._ids) < LAYOUTS_KEPT:
            self._ids[layout], self._layouts[n] = n, layout

    def _layout_id(self, site: str, device: str, layout: Layout) -> int:
        """The id of ``layout``, made in the open transaction if it is new; noted as used by the device."""
        n = self._ids.get(layout) or self._new_ids.get(layout)
        if n is None:
            text = layout_text(layout)
            self._db.execute("INSERT OR IGNORE INTO layouts (channels) VALUES (?)", (text,))
            [(n,)] = self._db.execute("SELECT id FROM layouts WHERE channels = ?", (text,)).fetchall()
            self._new_ids[layout] = n
        if (site, device, n) not in self._used and (site, device, n) not in self._new_used:
            self._db.execute("INSERT OR IGNORE INTO device_layouts VALUES (?,?,?)", (site, device, n))
            self._new_used.add((site, device, n))
        return n

    def _merge_each(self, rows: list[tuple]) -> None:
        """Upsert row by row, in order, each merged with the row already at its instant."""
        for site, device, ms, gateway, seq, n, numbers, texts, quality in rows:
            held = self._db.execute("SELECT layout, numbers, texts, quality FROM readings WHERE site = ? AND "
                                    "device = ? AND ts = ?", (site, device, ms)).fetchall()
            if held and held[0][0] != n:
                (m, *old), = held
                channels = merged(self._unpacked(device, ms, self._layout(m, row=(device, ms)), *old),
                                  unpacked(self._layout(n), numbers, texts, quality))
                if len(channels) > MAX_CHANNELS:  # each merge keeps a layout: growing ones would fill the disk
                    raise ValueError(f"{len(channels)} channels at one instant of device {device!r} with those "
                                     f"stored: at most {MAX_CHANNELS}")
                layout, numbers, texts, quality = repacked(channels)
                n = self._layout_id(site, device, layout)
            self._db.execute(REPLACE, (site, device, ms, gateway, seq, n, numbers, texts, quality))

    def _layout(self, n: int, text: str | None = None, row: tuple[str, int] | None = None) -> Layout:
        """Layout ``n`` (its JSON ``text`` if the caller has it), of the (device, ts [ms]) ``row`` if
        the caller reads one: a layout the store does not have is damage, named so."""
        if n in self._layouts:
            return self._layouts[n]
        if text is None:
            found = self._query("SELECT channels FROM layouts WHERE id = ?", (n,))
            if not found:
                raise self._damage(*(row or (None, None)), f"its layout {n} is not in the store's layouts")
            [(text,)] = found
        layout = layout_of_text(text)
        if layout not in self._new_ids:  # one the open transaction made may yet roll back, and its id be reused
            self._remember(n, layout)
        return layout

    def _upsert_each(self, rows: list[tuple[Reading, tuple, tuple]]) -> list[tuple[Reading, str]]:
        """Upsert ``_prepared`` rows one by one, each under a savepoint; return the readings refused, with why."""
        refused = []
        for row in rows:
            r = row[0]
            self._db.execute("SAVEPOINT one")
            made = dict(self._new_ids), set(self._new_used)
            try:
                self._upsert([row])
            except DATA_ERRORS as exc:
                self._db.execute("ROLLBACK TO one")
                self._new_ids, self._new_used = made
                refused.append((r, f"SQLite cannot store it: {type(exc).__name__}: {exc}"))
            self._db.execute("RELEASE one")
        return refused

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Queries that see one state of the file: another process, or thread, may commit between them."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc
            try:
                yield
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")  # it only read

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
        parts = []
        with gc_paused():
            for device, wanted in itertools.groupby(pairs, key=lambda p: p[0]):
                names = [c for _, c in wanted]
                got = self._columns(site, device, names, lo, hi, limit, gateways=True)
                parts += [(device, c, *got[c]) for c in names if c in got]
            return _pairs_frame(site, parts, limit)

    def _pairs(self, site: str) -> list[tuple[str, str]]:
        """The (device, channel) pairs of a site with numbers, sorted: from the layouts its devices used."""
        rows = self._query("SELECT device, layout, channels FROM device_layouts LEFT JOIN layouts ON id = layout "
                           "WHERE site = ?", (site,))
        return sorted({(d, c) for d, n, text in rows for c in self._listed(site, d, n, text)[0]})

    def _device_layouts(self, site: str, device: str) -> dict[int, Layout]:
        rows = self._query("SELECT layout, channels FROM device_layouts LEFT JOIN layouts ON id = layout WHERE "
                           "site = ? AND device = ?", (site, device))
        return {n: self._listed(site, device, n, text) for n, text in rows}

    def _listed(self, site: str, device: str, n: int, text: str | None) -> Layout:
        """Layout ``n`` that ``device_layouts`` lists for a device, of JSON ``text``: one the store does not
        have (``text`` None) is damage, named at the device's first row of it (its rows would be left out)."""
        if text is None:
            first = self._query("SELECT min(ts) FROM readings WHERE site = ? AND device = ? AND layout = ?",
                                (site, device, n))[0][0]
            raise self._damage(device, first, f"its layout {n} is listed for the device but not in the store's "
                                              "layouts")
        return self._layout(n, text)

    def _columns(self, site: str, device: str, channels: list[str], lo: int, hi: int, limit: int | None = None,
                 gateways: bool = False) -> dict[str, tuple[np.ndarray, ...]]:
        """Each of a device's ``channels`` that has numbers with lo <= ts < hi: (ts [ms], values, qualities),
        and the gateways after ts if ``gateways``; in ts order. One primary-key range of the device, of
        the rows whose layouts hold a wanted channel: ``limit`` rows of it hold the device's first
        ``limit`` values at least, each row having one or more."""
        with self._snapshot():  # a row committed after the layouts were listed would be decoded as another's
            layouts = self._device_layouts(site, device)
            wanted = {n: [(c, layout[0].index(c)) for c in channels if c in layout[0]] for n, layout in layouts.items()}
            ids = [n for n, cs in wanted.items() if cs]
            if not ids:
                return {}
            got = (self._one_layout_range(site, device, lo, hi, ids[0], len(layouts[ids[0]][0]))
                   if len(layouts) == 1 and limit is None and not gateways else None)
            if got is None:
                got = self._rows_range(site, device, lo, hi, ids, len(layouts), limit, gateways)
        if got is None:
            return {}
        ts, numbers, flags, layout, gateway = got
        pieces: dict[str, list[tuple]] = {}
        kinds = set(layout)
        if len(kinds) == 1:
            groups = [(layout[0], np.arange(len(ts)))]
        else:  # the rows of each layout, in ts order: one sort, as a device may have a layout a row
            marks = np.array(layout)
            order = np.argsort(marks, kind="stable")
            groups = [(int(marks[at[0]]), at) for at in np.split(order, np.flatnonzero(np.diff(marks[order])) + 1)]
        for n, at in groups:
            if n not in layouts:  # decoded as another, its numbers would be given other channels' names
                raise self._damage(device, ts[at[0]], f"its layout {n} is not one the store lists for the device")
            matrix = self._numbers(device, ts[at], numbers if len(kinds) == 1 else [numbers[i] for i in at],
                                   len(layouts[n][0]))
            for c, j in wanted[n]:
                pieces.setdefault(c, []).append((at, matrix[:, j]))
        gateway = np.array(gateway, object) if gateways else None
        out = {}
        for c, parts in pieces.items():
            at, value = parts[0]
            if len(parts) > 1:  # the channel is in more than one of the device's layouts: back to ts order
                at, value = np.concatenate([a for a, _ in parts]), np.concatenate([v for _, v in parts])
                order = np.argsort(at, kind="stable")
                at, value = at[order], value[order]
            value = value + 0.0  # -0.0 reads as 0.0, as a REAL column gave it
            flag = np.full(len(at), None, object)
            if flags:
                held = np.fromiter(flags, np.int64, len(flags))  # rows with flags, and where they are in ``at``
                where = np.searchsorted(at, held).clip(max=len(at) - 1)
                mine = at[where] == held
                for i, k in zip(held[mine], where[mine]):
                    flag[k] = flags[i].get(c)
            out[c] = (ts[at], value, flag) + ((gateway[at],) if gateways else ())
        return out

    def _unpacked(self, device: str, ms: int, layout: Layout, numbers, texts, quality) -> Channels:
        """``unpacked`` of a stored row; one that does not fit its layout is refused as damage, naming it."""
        try:
            return unpacked(layout, numbers, texts, quality)
        except DamagedRow as exc:
            raise self._damage(device, ms, str(exc)) from None

    def _damage(self, device: str | None, ms: int | None, what: str) -> sqlite3.DatabaseError:
        """Damage found in a row of ``device`` at ``ms`` (either None when no row is known); the device's
        name as a damaged or foreign file has it, escaped."""
        device = None if device is None else printable(str(device))
        where = (f"device {device}'s row at {from_ms(int(ms)).isoformat()}" if ms is not None
                 else f"device {device}" if device is not None else "a row")
        return sqlite3.DatabaseError(f"store {self.path} is damaged: {where}: {what}: restore it from a backup")

    def _numbers(self, device: str, ts: np.ndarray, rows: Sequence[bytes], width: int) -> np.ndarray:
        """The numbers of a device's rows of one layout, of ``width`` numbers, a row a line, from each
        row's numbers (or, from SQLite's aggregate, all rows' in one value, their lengths checked there).
        Refused, as damage, if a row has not ``width`` numbers (a damaged file, or one written by other
        means): its numbers would otherwise be read shifted into other rows, or fail to reshape."""
        try:
            blob = b"".join(rows)
            fits = len(blob) == 8 * width * len(ts) and (len(rows) != len(ts) or set(map(len, rows)) == {8 * width})
        except TypeError:  # a value not a blob
            fits = False
        if not fits:
            t, row = next((t, row) for t, row in zip(ts, rows) if not isinstance(row, bytes) or len(row) != 8 * width)
            if row is None:  # NULL, or, read as of the device's one layout, a row of another
                raise self._damage(device, t, "it holds no numbers of the device's layout: none, or it is of a "
                                              "layout the store does not list for the device")
            held = f"{len(row)} bytes" if isinstance(row, bytes) else "a value not a blob"
            raise self._damage(device, t, f"it holds {held} as its numbers, where its layout has {width} of 8 bytes")
        return np.frombuffer(blob, np.float64).reshape(len(ts), width)

    def _rows_range(self, site: str, device: str, lo: int, hi: int, ids: list[int], layouts: int,
                    limit: int | None, gateways: bool) -> tuple | None:
        """A device's rows with lo <= ts < hi of the layouts ``ids`` (of its ``layouts``), one Python row
        each: (ts [ms], numbers of each row, {row: flags}, layout of each row (or one for all), gateway
        of each row or None); None without rows."""
        some = len(ids) < layouts  # rows of other layouts are left out, in SQL if they can be named
        named = some and len(ids) <= LAYOUTS_NAMED
        # only the columns needed: the fetch makes a Python object of each, and is most of a read's time; of
        # one layout, a row of another (damage) has no numbers, which ``_numbers`` refuses
        sql = (f"SELECT ts, {'numbers' if layouts > 1 else 'iif(layout = ?, numbers, NULL)'}, quality"
               f"{', layout' if layouts > 1 else ''}"
               f"{', gateway' if gateways else ''} "
               "FROM readings WHERE site = ? AND device = ? AND ts >= ? AND ts < ?"
               + (f" AND layout IN ({','.join('?' * len(ids))})" if named else "") + " ORDER BY ts"
               + (" LIMIT ?" if limit is not None and named == some else ""))
        rows = self._query(sql, (*ids[:layouts == 1], site, device, lo, hi, *(ids if named else ()),
                                 *((limit,) if limit is not None and named == some else ())))
        if some and not named:
            held = set(ids)
            rows = [row for row in rows if row[3] in held][:limit]
        if not rows:
            return None
        ts, numbers, quality, *more = zip(*rows)
        layout = more.pop(0) if layouts > 1 else (ids[0],)
        gateway = more.pop(0) if gateways else None
        # qualities are on few rows, if any
        flags = {} if quality.count(None) == len(quality) else {i: json.loads(q) for i, q in enumerate(quality) if q}
        stamps = np.array(ts)
        if stamps.dtype != np.int64:  # the store writes whole milliseconds: int64 would cut another silently
            t = next(t for t in ts if type(t) is not int)
            raise self._damage(device, t, f"its stamp {t!r} is not a whole number of milliseconds")
        return stamps, numbers, flags, layout, gateway

    def _one_layout_range(self, site: str, device: str, lo: int, hi: int, layout: int, width: int) -> tuple | None:
        """``_rows_range`` of a device whose one layout is ``layout``, of ``width`` numbers, in one row from
        SQLite: its stamps as text, its numbers concatenated and its flagged rows as JSON. A Python object
        per row was most of a read's time; this is ~2.5 x faster. None without rows, or if SQLite could not
        aggregate them (a range too long for one SQLite value, ~1 GB; no JSON functions) or did not in
        ts order (the order of the primary key it scans, which SQL does not promise), or a stamp is not a
        whole number: the caller then reads them row by row; so too in a database not in UTF-8, or with a row
        of another layout (damage, which the row by row read names)."""
        if not self._blobs_concatenate:
            return None
        try:
            with self._lock:
                ((stamps, numbers, flagged, odd),) = self._db.execute(
                    "SELECT group_concat(ts), CAST(group_concat(numbers, '') AS BLOB), json_group_array(json_array("
                    "ts, quality)) FILTER (WHERE quality <> ''), count(*) FILTER (WHERE length(numbers) IS NOT ? OR "
                    "layout IS NOT ?) FROM readings WHERE site = ? AND device = ? AND ts >= ? AND ts < ?",
                    (8 * width, layout, site, device, lo, hi)).fetchall()
        except sqlite3.Error:
            return None
        if stamps is None:
            return None
        try:
            ts = np.fromstring(stamps, np.int64, sep=",")
        except ValueError:  # a stamp not an integer (a file written by other means)
            return None
        # every row holds 8 * width bytes (``odd`` counts those that do not), so the length of all of
        # them says how many rows there are, and that there is a stamp for each
        if odd or len(numbers) != 8 * width * len(ts) or (np.diff(ts) <= 0).any():
            return None  # a row with other numbers than its layout's: ``_numbers`` says which
        flagged = json.loads(flagged)
        flags = {int(i): json.loads(q) for i, (_, q) in zip(np.searchsorted(ts, [t for t, _ in flagged]), flagged)}
        return ts, (numbers,), flags, (layout,), None

    def read_sources(self, site, start, end, sources) -> dict[str, pd.DataFrame]:
        lo, hi = to_ms(start), to_ms(end)
        pairs = [src.split(".", 1) for src in sources]
        by_device: dict[str, dict[str, None]] = {}  # each channel once: a source named twice is read once
        for device, channel in pairs:
            by_device.setdefault(device, {})[channel] = None
        with gc_paused():
            got = {device: self._columns(site, device, list(channels), lo, hi)
                   for device, channels in by_device.items()}
            return {src: _source_frame(*got[device].get(channel, EMPTY)) for src, (device, channel) in
                    zip(sources, pairs)}

    def latest(self, site) -> pd.DataFrame:
        rows = []
        devices = sorted({d for d, in self._query("SELECT device FROM device_layouts WHERE site = ?", (site,))})
        for device in devices:
            want = {c for layout in self._device_layouts(site, device).values() for c in (*layout[0], *layout[1])}
            found: dict[str, tuple] = {}
            before, page = LATEST, 1
            while len(found) < len(want):  # back from the newest row until every channel is found
                page = min(page * 8, 4096)
                batch = self._query("SELECT ts, gateway, layout, numbers, texts, quality FROM readings WHERE site = ? "
                                    "AND device = ? AND ts < ? ORDER BY ts DESC LIMIT ?",
                                    (site, device, before, page))
                for ts, gateway, n, numbers, texts, quality in batch:
                    layout = self._layout(n, row=(device, ts))
                    for c, (v, flag) in self._unpacked(device, ts, layout, numbers, texts, quality).items():
                        if c not in found:
                            found[c] = (ts, site, gateway, device, c,
                                        v if isinstance(v, str) else None if v != v else v + 0.0, flag)
                if len(batch) < page:
                    break
                before = batch[-1][0]
            rows += [found[c] for c in sorted(found)]
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
                self._begin_writing()
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

    def _rows_per_message(self) -> None:
        """A store in the layout of a row per channel value (store/row_per_value.py: ``readings`` with a
        ``channel`` column) gets a row per message, once, in one transaction: each (site, device, ts)'s values make one
        row, with the gateway and seq of its channel of the highest seq."""
        def by_value():
            return any(row[1] == "channel" for row in self._db.execute("PRAGMA table_info(readings)"))

        if not by_value():
            return
        self._begin_waiting()
        try:
            if not by_value():
                return  # another process converted it meanwhile
            self._check_space()
            log.warning("store %s: converting its readings to a row per message (once; a year of a site takes "
                        "about a minute)", self.path)
            self._db.execute("ALTER TABLE readings RENAME TO readings_by_value")
            for statement in SCHEMA.split(";"):
                self._db.execute(statement)
            for site in self._next_keys("readings_by_value", ("site",), ()):
                for device in self._next_keys("readings_by_value", ("site", "device"), (site,)):
                    rows = self._device_rows(site, device)
                    while part := list(itertools.islice(rows, 5000)):
                        self._db.executemany(REPLACE, part)
            self._db.execute("DROP TABLE readings_by_value")
            self._db.execute("COMMIT")
            self._committed()
        except sqlite3.OperationalError as exc:  # a full disk, most likely: rolled back, the old rows stay as they were
            raise UnusableFile(f"store {self.path}: its conversion to a row per message failed ({exc}): nothing was "
                               f"changed, it stays as it was; {_free_space(self.path)}") from None
        finally:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
                self._new_ids, self._new_used = {}, set()
        try:  # the old rows' pages, most of the file, are free now: give them back
            self._db.execute("VACUUM")
            # the vacuumed copy went through the write-ahead log, which keeps its size while the file is open
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:  # another process has the file open
            log.warning("store %s: converted, but its freed space stays inside the file until it is vacuumed "
                        "(sqlite3 %s VACUUM, with nothing else using it): %s", self.path, self.path, exc)

    def _begin_writing(self) -> None:
        """BEGIN IMMEDIATE, tried every ``WRITE_LOCK_POLL_S`` while another connection holds the write
        lock, for up to ``BUSY_TIMEOUT_S`` (then "database is locked", as SQLite's own wait ends).
        SQLite's own wait sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries: two
        collectors sharing a store woke up to 100 ms after the other's write ended, or found it writing
        its next batch already, and each spent ~40 % of its time waiting so (two stored no faster than
        one)."""
        self._db.execute("PRAGMA busy_timeout = 0")
        try:
            while_busy(self._db, "BEGIN IMMEDIATE", seconds=BUSY_TIMEOUT_S, pause=WRITE_LOCK_POLL_S)
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    def _begin_waiting(self) -> None:
        """BEGIN IMMEDIATE, waiting while another process holds the write lock: of a store in the old
        layout, that is most likely another process converting it, which takes about a minute a year of
        a site; a stage that gave up at once would stop (the collector) or fail (a report). Not for ever:
        after ``CONVERSION_WAIT`` it is refused, naming what it waited for (a process stuck holding the
        lock would hold every opener so, unseen)."""
        started = time.monotonic()
        try:
            while_busy(self._db, "BEGIN IMMEDIATE", seconds=CONVERSION_WAIT, waiting=lambda: log.warning(
                "store %s: another process is converting it to a row per message (or holds its write lock); "
                "waiting for it to finish, at most %.0f min", self.path, CONVERSION_WAIT / 60))
        except sqlite3.OperationalError as exc:
            waited = time.monotonic() - started
            raise UnusableFile(f"store {self.path} must be converted to a row per message, and another process has "
                               f"held its write lock (converting it, most likely) for the {waited:.0f} s this one "
                               f"waited ({exc}): nothing was changed; let that process finish, or find it (fuser "
                               f"{self.path}), then start again") from None

    def _check_space(self) -> None:
        """Refuse, before writing anything, a conversion the disk has no room for: it would fill the disk
        (stopping every other writer there) and roll back, to be tried again at every start."""
        need = round(CONVERSION_SPACE * sum(f.stat().st_size for f in (Path(self.path), beside(self.path, "-wal"))
                                            if f.exists()))
        free = shutil.disk_usage(beside(self.path, "").parent).free
        if free < need:
            raise UnusableFile(f"store {self.path} must be converted to a row per message (its layout is that of "
                               f"before 30 Nov 2026), which needs {need / 1e6:,.1f} MB free on its disk: "
                               f"{free / 1e6:,.1f} MB are: nothing was changed, it stays as it was; "
                               f"{_free_space(self.path)}")

    def _device_rows(self, site: str, device: str) -> Iterator[tuple]:
        """A device's rows per message from its rows per value (``_rows_per_message``): its channels'
        key ranges read side by side and merged in ts order, so memory stays that of one instant."""
        def values(channel):
            rows = self._db.execute("SELECT ts, gateway, value, text_value, quality, seq FROM readings_by_value "
                                    "WHERE site = ? AND device = ? AND channel = ? ORDER BY ts",
                                    (site, device, channel))
            return ((ms, channel, *rest) for ms, *rest in rows)

        channels = self._next_keys("readings_by_value", ("site", "device", "channel"), (site, device))
        for ms, group in itertools.groupby(heapq.merge(*map(values, channels)), key=lambda row: row[0]):
            group = list(group)
            *_, gateway, _, _, _, seq = max(group, key=lambda row: -1 if row[6] is None else row[6])
            layout, numbers, texts, quality = repacked({c: (t if t is not None else NAN if v is None else v, q)
                                                        for _, c, _, v, t, q, _ in group})
            yield site, device, ms, gateway, seq, self._layout_id(site, device, layout), numbers, texts, quality

    def _next_keys(self, table: str, key: tuple[str, ...], prefix: tuple) -> list[str]:
        """The distinct values of ``key``'s last column among rows whose first columns are ``prefix``,
        sorted: one primary-key seek each (the next after the last found), not a scan."""
        where = " AND ".join(f"{k} = ?" for k in key[:-1])
        last = key[-1]
        sql = f"SELECT {last} FROM {table} WHERE {where or 1} {{}} ORDER BY {last} LIMIT 1"
        found = [v for v, in self._db.execute(sql.format(""), prefix)]
        while found:
            more = [v for v, in self._db.execute(sql.format(f"AND {last} > ?"), (*prefix, found[-1]))]
            if not more:
                return found
            found += more
        return found

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
        """How many channel values are stored (a reading of two channels is two)."""
        rows = self._query("SELECT layout, COUNT(*) FROM readings GROUP BY layout", ())
        return sum(k * sum(map(len, self._layout(n))) for n, k in rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _free_space(path: str) -> str:
    return (f"free space on the disk of {beside(path, '').parent}, or move the store to a larger one (and its "
            "URL with it), then start again")


def _prepared(readings: list[Reading]) -> tuple[list[tuple[Reading, tuple, tuple]], list[tuple[Reading, str]]]:
    """Each reading with its row (its layout where the row has the layout's id) and its device's
    ``SEEN`` row; and those refused, with why, whose values a 64-bit float cannot hold."""
    rows, refused = [], []
    for r in readings:
        try:
            site, device, ms = r.site, r.device, to_ms(r.ts)
            layout, numbers, texts, quality = packed(r)
        except DATA_ERRORS as exc:
            refused.append((r, f"SQLite cannot store it: {type(exc).__name__}: {exc}"))
            continue
        rows.append((r, (site, device, ms, r.gateway, r.seq, layout, numbers, texts, quality),
                     (site, device, r.gateway, ms, r.status.value)))
    return rows, refused


def _message_rows(messages: Sequence[SignedMessage], refused: list[tuple[Reading, str]]) -> list[tuple]:
    """Rows of the messages whose readings were not refused."""
    gone = {(r.site, r.gateway, r.epoch, r.seq) for r, _ in refused}
    return [(m.site, m.gateway, m.epoch, m.seq, to_ms(m.ts), m.hash, m.prev, m.key_id, m.raw) for m in messages
            if (m.site, m.gateway, m.epoch, m.seq) not in gone]


def _pairs_frame(site: str, parts: list[tuple], limit: int | None) -> pd.DataFrame:
    """``READ_COLUMNS`` from (device, channel, ts, values, qualities, gateways) in pair order, sorted
    by ts with ties in pair order (that of the SQL ``ORDER BY ts, device, channel``)."""
    lengths = [len(p[2]) for p in parts]
    ts, value, quality, gateway = (np.concatenate([p[k] for p in parts]) if parts else np.empty(0, kind)
                                   for k, kind in ((2, np.int64), (3, float), (4, object), (5, object)))
    device = np.repeat(np.array([p[0] for p in parts], object), lengths)
    channel = np.repeat(np.array([p[1] for p in parts], object), lengths)
    order = np.argsort(ts, kind="stable")[:limit]
    return pd.DataFrame({
        "ts": pd.to_datetime(ts[order], unit="ms", utc=True), "site": np.full(len(order), site, dtype=object),
        "gateway": gateway[order], "device": device[order], "channel": channel[order], "value": value[order],
        "quality": quality[order]}, columns=READ_COLUMNS)


def _source_frame(ts: np.ndarray, value: np.ndarray, quality: np.ndarray) -> pd.DataFrame:
    """``SOURCE_COLUMNS`` of one source's columns, in ts order."""
    return pd.DataFrame({"ts": pd.to_datetime(ts, unit="ms", utc=True), "value": value,
                         "quality": pd.Series(quality, dtype=object)})


def _frame(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=READ_COLUMNS)
    df["ts"] = pd.to_datetime(df["ts"], unit="ms", utc=True)
    return df


def _letters(rows: Iterable[tuple]) -> list[DeadLetter]:
    """Dead letters of rows (received, topic, payload, reason, size, sha256)."""
    return [DeadLetter(dt.datetime.fromisoformat(r), t, bytes(p), why, size, sha) if sha else
            DeadLetter(dt.datetime.fromisoformat(r), t, bytes(p), why)  # kept whole before sizes were kept
            for r, t, p, why, size, sha in rows]
