"""Opening the pipeline's SQLite files (gateway outbox, embedded store, ledger) safely.

Whoever opens one says whether it may create it. Before SQLite touches an existing
file, it is checked read-only: a directory where the file should be, a file that is
not a SQLite database (garbage, another format), one truncated or damaged, a SQLite
database of another kind (a store given as ``--ledger``), or a directory that is not
writable each give one ``UnusableFile`` line naming the file and what to do, and
nothing is created or modified. A missing file is created, with its directories,
only by an opener that may create it; any other gets an error naming it.

The integrity check (``PRAGMA quick_check``, about 0.5 GB/s) runs on files up to
``DEEP_CHECK_MAX``; larger ones get the cheap checks only (header, whole pages, schema),
and damage found later surfaces as a ``sqlite3.DatabaseError`` when the page is read.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from contract.text import printable

#: files up to this size get a full integrity check when opened [bytes]
DEEP_CHECK_MAX = 512 * 1024 * 1024
MAGIC = b"SQLite format 3\x00"
#: how long ``use_wal`` tries while other connections are switching the same new file [s]
WAL_WAIT = 60.0
#: SQLite's shared lock on a file (its unix VFS: ``SHARED_FIRST``, ``SHARED_SIZE``), which a connection's
#: exclusive lock needs free
SHARED_FIRST, SHARED_SIZE = 0x40000002, 510
#: how often and how far apart ``_snapshot`` tries to take that lock [s]
SNAPSHOT_TRIES, SNAPSHOT_PAUSE = 50, 0.02


class UnusableFile(Exception):
    """A data file cannot be used as it is; the message names it and what to do."""

    #: a command it stops exits with this: 2, which the units do not restart (a file to fix by hand)
    exit_code = 2


def open_sqlite(path: str | Path, what: str, tables: set[str], *, create: bool, damaged_hint: str,
                missing_hint: str = "", read_only: bool = False, **connect_args) -> sqlite3.Connection:
    """Check and open one of the pipeline's SQLite files.

    Parameters
    ----------
    path : file path
    what : what the file is, for messages ("outbox", "store", "ledger")
    tables : tables that make a SQLite file this kind of file (any one suffices)
    create : whether a missing file (and its directories) may be created
    damaged_hint : what to do about a damaged file, appended to the message
    missing_hint : what to do about a missing file when ``create`` is false
    read_only : open an existing file for reading only (``unwritable`` says why the caller may want to): a copy
        in memory when nothing holds it in write-ahead-log mode (``_snapshot``), so nothing is created beside it
    connect_args : passed on to ``sqlite3.connect``
    """
    p = Path(path)
    if p.is_dir():
        raise UnusableFile(f"{what} {p} is a directory, not a SQLite file: nothing was changed; {damaged_hint}")
    if not p.exists():
        if not create:
            raise UnusableFile(f"{what} {p} does not exist" + (f": {missing_hint}" if missing_hint else ""))
        check_can_create(p, what)
        p.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(_uri(p, "rwc"), uri=True, **connect_args)
    _check_existing(p, what, tables, create, damaged_hint, read_only)
    if read_only and (snapshot := _snapshot(p)) is not None:
        db = sqlite3.connect(":memory:", **connect_args)
        db.deserialize(snapshot)
        db.execute("PRAGMA query_only=ON")
        return db
    return sqlite3.connect(_uri(p, "ro" if read_only else "rw"), uri=True, **connect_args)


def _snapshot(p: Path) -> bytes | None:
    """The file ``p`` read whole, as of one instant, when nothing holds it in write-ahead-log mode (no -wal
    beside it: the file alone holds every commit); else None. Read in place, SQLite would leave -wal and -shm
    files beside it, this user's: another user's write to the file (the processor's) then fails, and where
    this user cannot create them, the read fails. A commit meanwhile goes to a -wal; the file itself is
    written only by a checkpoint, which needs a -wal there, or a connection's last one, which needs the lock
    held here (SQLite's shared lock: ``SHARED_FIRST``), as does a writer of a file in rollback-journal mode.
    No connection of this process may have the file open: closing ``f`` ends every lock the process holds on it."""
    if any(beside(p, end).exists() for end in ("-wal", "-journal")):
        return None
    try:
        with open(p, "rb") as f:
            for _ in range(SNAPSHOT_TRIES):
                try:
                    fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB, SHARED_SIZE, SHARED_FIRST)
                except OSError:  # a writer holds it (a rollback-journal commit, a last checkpoint): a moment
                    time.sleep(SNAPSHOT_PAUSE)
                    continue
                try:
                    if any(beside(p, end).exists() for end in ("-wal", "-journal")):
                        return None
                    data = bytearray(f.read())
                    if any(beside(p, end).exists() for end in ("-wal", "-journal")):
                        return None  # a checkpoint may have written the file meanwhile
                finally:
                    fcntl.lockf(f, fcntl.LOCK_UN, SHARED_SIZE, SHARED_FIRST)
                data[18:20] = b"\x01\x01"  # rollback-journal mode: SQLite reads a write-ahead-log file in place only
                return bytes(data)
    except OSError:
        pass
    return None


def use_wal(db: sqlite3.Connection) -> None:
    """Put the file in write-ahead-log mode (a no-op once it is). Switching needs the file to itself,
    and SQLite answers "database is locked" at once, without waiting for its busy timeout, when two
    connections switch a new file together (each holds the read lock the other waits for): two
    collectors sharing one store, started together, stopped one in ten such starts. Every failed try
    releases its locks, so one of them gets through."""
    while_busy(db, "PRAGMA journal_mode=WAL", seconds=WAL_WAIT)


def while_busy(db: sqlite3.Connection, sql: str, *, seconds: float,
               waiting: Callable[[], None] | None = None, pause: float = 0.01) -> sqlite3.Cursor:
    """``db.execute(sql)``, tried again every ``pause`` seconds while another connection holds the file
    busy (beyond SQLite's own busy timeout, or where SQLite does not wait), for ``seconds`` (a finite
    wait: a process stuck holding the file would otherwise hold this one for ever, unseen); ``waiting``
    is called once, at the first refusal (to say why the caller waits), even one past ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return db.execute(sql)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if waiting:
                waiting()
                waiting = None
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)


def _uri(p: Path, mode: str, immutable: bool = False) -> str:
    return p.absolute().as_uri() + f"?mode={mode}" + ("&immutable=1" if immutable else "")


def check_can_create(p: Path, what: str) -> None:
    """Raise ``UnusableFile`` naming ``p`` when this user cannot create it (a file where a directory
    should be, a directory not writable or on a read-only filesystem)."""
    existing = p.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UnusableFile(f"cannot create {what} {p}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UnusableFile(f"cannot create {what} {p}: directory {existing} is not writable by this user "
                           f"(uid {os.geteuid()}) or is on a read-only filesystem")


def _check_existing(p: Path, what: str, tables: set[str], may_be_empty: bool, hint: str, read_only: bool) -> None:
    damaged = f"{what} {p} is damaged or not a {what}"
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise UnusableFile(f"cannot read {what} {p}: {exc.strerror}") from None
    if size == 0:
        if may_be_empty:  # what sqlite3.connect leaves when stopped before its first write
            return _check_writable(p, what)
        raise UnusableFile(f"{what} {p} is empty (0 bytes): nothing was changed; {hint}")
    if not header.startswith(MAGIC):
        raise UnusableFile(f"{damaged} (not a SQLite database): nothing was changed; {hint}")
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    if len(header) < 100 or page < 512 or page & (page - 1) or size % page:
        raise UnusableFile(f"{damaged} (truncated: {size} bytes is not a whole number of {page}-byte pages): "
                           f"nothing was changed; {hint}")
    # read-only; immutable when no -wal file exists, so that not even -wal/-shm files appear
    wal = beside(p, "-wal").exists()
    try:
        db = sqlite3.connect(_uri(p, "ro", immutable=not wal), uri=True)
    except sqlite3.Error as exc:
        raise UnusableFile(f"cannot open {what} {p}: {exc}") from None
    try:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if size <= DEEP_CHECK_MAX:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise UnusableFile(f"{damaged} ({'; '.join(map(printable, problems))}): nothing was changed; {hint}")
    except sqlite3.OperationalError:
        raise  # the disk refused (full, I/O error), not damage: a later try may pass
    except sqlite3.DatabaseError as exc:
        raise UnusableFile(f"{damaged} ({printable(str(exc))}): nothing was changed; {hint}") from None
    finally:
        db.close()
    if names and not names & tables:
        # a foreign file's names: shown escaped, so that none breaks the line or drives the terminal
        raise UnusableFile(f"{what} {p} is a SQLite database but not a {what} (its tables: "
                           f"{', '.join(sorted(map(printable, names)))}): nothing was changed; check the path")
    if not names and not may_be_empty:
        raise UnusableFile(f"{what} {p} is an empty SQLite database, not a {what}: nothing was changed; check the path")
    if not read_only:
        _check_writable(p, what)


def _check_writable(p: Path, what: str) -> None:
    if problem := unwritable(p, what):
        raise UnusableFile(f"{problem}: nothing was changed")


def unwritable(p: str | Path, what: str) -> str | None:
    """Why this user cannot write the existing file ``p`` as SQLite does, if it cannot."""
    p, real = Path(p), Path(os.path.realpath(p))
    # SQLite writes the file and, in WAL mode, creates -wal and -shm files beside it
    for target, name in ((p, f"{what} {p}"), (real.parent, f"the directory {real.parent} of {what} {p}")):
        if not os.access(target, os.W_OK):
            return f"{name} is not writable by this user (uid {os.geteuid()}) or is on a read-only filesystem"
    return None


def beside(p: str | Path, end: str) -> Path:
    """The file SQLite keeps beside database ``p`` (``end``: "-wal", "-shm", "-journal"): beside the
    file a symlink ``p`` leads to, where SQLite puts them, not beside the symlink."""
    return Path(f"{os.path.realpath(p)}{end}")
