"""Durable outbox: every reading is committed to SQLite before anything is sent.

A row is deleted only when the store has it (a collector's acknowledgement, see
contract/acknowledgement.py; or the broker's PUBACK with ``confirmed_by: broker``), so
a broker down for days or crashing, a flapping link or a SIGKILL loses nothing: what
is still here is sent again. The row id is the gateway's sequence number:
AUTOINCREMENT never reuses an id, so the sequence survives restarts and deletions.
The sequence's epoch, drawn when the sequence starts (a new file, or one whose
sequence was reset), is stored beside it, so that a restarted sequence is never
confused with the old one.

One gateway per outbox: each holds a flock on its file (``hold``). The file
``<outbox>.sequence`` beside it (beside the file a symlinked path leads to) keeps the
highest seq committed and reserved, so that an older copy of the outbox put at its path
(a backup restored) is told at open and reuses no seq of its epoch (``Outbox._vouch``).

With a signing key, each row is stored signed (``contract.custody.sign``) as it is
numbered, so a backlog delivered days later carries the signature made at poll time.
The chain's last hash is stored with the rows, in the same transaction: it survives
the deletion of the rows it was computed from, and a new epoch starts at ``GENESIS``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from contract.custody import GENESIS, chain_hash, sign
from contract.message import MAX_SEQ
from contract.sqlite_file import UnusableFile, beside, check_can_create, open_sqlite, use_wal
from contract.topics import MAX_UNUSED_RANGES
from gateway.signing_key import SigningKey

log = logging.getLogger(__name__)

#: how often the committer checks that the outbox's path still names the open file [s]
PATH_CHECK_EVERY = 10.0
_HASH = re.compile("[0-9a-f]{64}")
#: seqs reserved at a time in the sequence file: it is written (fsynced) before a seq beyond
#: the last reservation is assigned, so an outbox gone back in time skips at most this many unused
RESERVE = 256
#: the highest seq a sequence file may name: none reaches it (2**62 readings: 146,000 years at a million a second), so
#: a file beyond it was damaged or edited, and believed it would leave no seq to number readings with
SEQUENCE_FILE_MAX = (MAX_SEQ + 1) // 2
#: the sequence file is fsynced at least this often while rows are committed [s]; it learns each commit's seqs
#: right after the commit (written, not fsynced): a machine that did not restart since keeps that write, a power
#: cut may not (see ``Outbox._vouch``)
SEQUENCE_EVERY = 10.0
#: the sequence file's size [bytes]: its text padded with spaces, so that the write after each commit overwrites it
#: in place, within one page and one disk sector, rather than renaming a new file over it (which costs a writeback)
SEQUENCE_FILE_SIZE = 512
#: this boot of the machine (Linux): a sequence file written in it holds every write, fsynced or not
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sequence_epoch (epoch TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chain (seq INTEGER NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS acknowledged_by (collectors TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trusted_by (collectors TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS unused (first INTEGER NOT NULL, last INTEGER NOT NULL);
"""


class _Entry:
    """A reading handed to the outbox; numbered, rendered and signed by the committer."""

    __slots__ = ("topic", "payload_for", "report", "seq", "payload", "hash", "settled", "error")

    def __init__(self, topic: str, payload_for: Callable[[int], str], report: bool):
        self.topic, self.payload_for, self.report = topic, payload_for, report
        self.seq: int | None = None
        self.payload: str | None = None
        self.hash: str | None = None  # chain hash of a signed payload
        self.settled = False  # committed, held in memory, dropped or refused: its append returns
        self.error: Exception | None = None


class Outbox:
    """Group commit by one committer thread: polling threads hand readings over
    (``put``) and never wait on the disk; the committer numbers, renders and signs them
    in sequence order and writes what came in meanwhile in one transaction (one disk
    flush). ``append`` waits until its row is committed, or, when the disk refuses the
    commit (full, I/O error), until the row is held in memory for the next commit to
    take along. ``on_commit`` is called after each commit that wrote rows.

    Rows held in memory are bounded by ``memory_rows``; beyond it the oldest are dropped,
    counted and logged CRITICAL. Confirmed rows whose delete fails are remembered and
    deleted by the next transaction that succeeds, and never handed out again.

    Rows the broker has acknowledged and the store has not yet confirmed are *awaiting*
    (kept in memory only: after a restart every row is sent again anyway); the cap drops
    them last."""

    def __init__(self, path: str | Path, max_rows: int, durable: bool = True, memory_rows: int = 10_000,
                 signing: SigningKey | None = None):
        self.path = str(path)
        self.signing = signing
        self.on_commit: Callable[[], None] | None = None
        self.max_rows = max_rows
        self.memory_rows = memory_rows
        self._lock = threading.Lock()  # the connection, _acked, _unsaved_drops, error
        self._pending_lock = threading.Lock()  # sequence numbers and rows not yet written
        self._pending: list[_Entry] = []  # numbered, not yet committed
        self._incoming: list[_Entry] = []  # handed over, not yet numbered
        self._wake = threading.Condition()  # _incoming, _closing
        self._settled = threading.Condition()  # an entry settled
        self._closing = False
        self._handed = self._settled_count = 0  # entries handed over, and settled: flush() waits for these
        self._acked: set[int] = set()  # confirmed, delete not yet committed
        # seq -> when the broker acknowledged it (monotonic), oldest first
        self._awaiting: dict[int, float] = {}
        self._unsaved_drops = 0  # dropped from memory, not yet added to the stored counter
        self.error: str | None = None  # why the last write failed; None once one succeeds
        self._episode_drops = 0  # dropped from memory since the disk began refusing writes
        self._drops_unlogged = 0  # of which not yet logged: once a minute, not once a reading
        self._next_drop_log = 0.0
        self._durable = durable
        self._next_path_check = 0.0
        self._unopened: str | None = None  # put back at its path, not reopened yet: why
        self._held: int | None = None  # a descriptor of the open file, holding its flock (one gateway per outbox)
        # beside the outbox: the highest seq committed and reserved, to tell an older copy of the outbox;
        # beside the file a symlinked path leads to, so that every link to one outbox finds the same one
        self._sequence_file = beside(self.path, ".sequence")
        self._noted: tuple[Path, int] | None = None  # the sequence file last written whole, and a descriptor of it
        #: [first, last] seqs of the rows held in memory since the disk began refusing commits, in the sequence
        #: file too
        self._unsaved: list[int] | None = None
        self._fresh = False  # the epoch was drawn by this open
        self._rewound = False  # this open found an older copy of the outbox and skipped its reused seqs
        self._next_reserve_log = 0.0
        self._next_sequence_write = 0.0
        self._skip_to = 0  # the next seq comes after this one (an acknowledgement showed the outbox went back)
        self._skipped_by_ack = False  # believed once a run at most
        self._next_claim_log = 0.0
        self._db = self._open()
        try:
            self._db.executescript(SCHEMA)
            self._files = self._identities()
            self._depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
            self._seq = row[0] if row else 0
            row = self._db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()
            self._stored_drops = row[0] if row else 0
            self.epoch = self._epoch()
            self._vouch()
            self._prev = self._chain_start()
        except BaseException:  # the flock goes with the failed open: a retry in this process is not refused
            self._db.close()
            os.close(self._held)
            self._let_go_of_sequence_file()
            raise
        self._committer = threading.Thread(target=self._run, name="outbox-committer", daemon=True)
        self._committer.start()

    def _open(self) -> sqlite3.Connection:
        # where SQLite keeps this connection's -wal and -shm: beside the file a symlinked path leads to
        self._beside = {end: str(beside(self.path, end)) for end in ("-wal", "-shm")}
        first = self._held is None  # a file put back at its path was locked before it got there
        if first:  # locked (made if missing) before SQLite opens it: no --new-outbox moves it meanwhile
            self._held = hold(self.path, create=True)
        try:
            db = open_sqlite(
                self.path, "outbox", {"outbox"}, create=True, check_same_thread=False, isolation_level=None,
                damaged_hint=f"run `jcm gateway --site <site file> --new-outbox` once: it moves the file aside to "
                             f"{Path(self.path).name}.corrupt-<UTC time> (never deletes it) and starts a new outbox")
        except BaseException:
            if first and self._held is not None:
                os.close(self._held)
                self._held = None
            raise
        try:
            use_wal(db)  # the first write: a gateway refused above has touched nothing
            # FULL: a committed reading survives a power cut too, not only a killed process
            db.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")
        except BaseException:
            db.close()
            if first and self._held is not None:
                os.close(self._held)
                self._held = None
            raise
        return db

    def _identities(self) -> dict[str, tuple[int, int]]:
        """(st_dev, st_ino) of the files at the outbox's path now: the database, its -wal and -shm (``_beside``)."""
        ids = {}
        for end, where in (("", self.path), *self._beside.items()):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(where)
                ids[end] = (st.st_dev, st.st_ino)
        return ids

    def _check_path(self, now: float | None = None) -> None:
        """Put the open database back at its path if the file there was deleted or replaced
        (a technician cleaning the directory): a restart would otherwise open an empty outbox,
        start a new epoch, and lose every row not yet delivered. At most every
        ``PATH_CHECK_EVERY`` seconds (one stat), unless ``now`` is None. Holds ``_lock``."""
        if now is not None:
            if now < self._next_path_check:
                return
            self._next_path_check = now + PATH_CHECK_EVERY
        if self._unopened is not None:
            self._reopen()
            return
        here = self._identities()
        if here.get("") == self._files.get(""):
            return
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        copy = f"{self.path}.restore-{stamp}"
        closed = False
        taken = None  # the copy's flock, taken before the copy is renamed into place: it is a new file
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            for end in ("", "-journal"):  # a copy left by a restore that failed
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{copy}{end}")
            dst = sqlite3.connect(copy)
            try:
                self._db.backup(dst)  # every committed row, through the open (deleted) file and its WAL
            finally:
                dst.close()
            _fsync(copy)
            taken = hold(copy)
            if "" in here:
                try:  # another gateway's open outbox: moved aside, it would move this one aside in turn
                    os.close(hold(self.path))
                except OutboxInUse:
                    self._db.close()
                    closed = True
                    raise
                except UnusableFile:
                    pass  # a file this user cannot open is no gateway's outbox: moved aside as any other
            # files at the path that are not this outbox's (another database and its -wal/-shm)
            # are kept beside it; this outbox's own -wal/-shm go when its connection closes
            foreign = [end for end in ("", "-wal", "-shm") if end in here and here[end] != self._files.get(end)]
            if Path(self.path).is_symlink():  # the link alone: a file it leads to keeps its -wal beside it
                foreign = [""] if "" in here else []
            aside = None
            if foreign:
                aside = _unused_name(Path(self.path), "replaced")
                for end in foreign:
                    os.rename(f"{self.path}{end}", f"{aside}{end}")
            self._db.close()
            closed = True
            # SQLite leaves this outbox's -wal when its file has moved; beside the copy it would be
            # replayed onto it (the copy already holds it), and beside another file it corrupts that one
            for end, where in self._beside.items():
                if end in self._files and self._identities().get(end) == self._files[end]:
                    os.unlink(where)
            os.rename(copy, self.path)
            self._held, taken = self._swap_hold(taken), None
            _fsync(os.path.dirname(os.path.abspath(self.path)))
            if (moved := beside(self.path, ".sequence")) != self._sequence_file:  # the copy replaced a symlink
                self._sequence_file = moved
                self._reserve(self._reserved)
        except (OSError, sqlite3.Error, UnusableFile) as exc:  # a full disk, an unwritable directory: tried again
            if closed:  # the copy has every row: go on with it where it is
                log.critical("outbox %s: the file was deleted or replaced and the copy of the open outbox could not "
                             "be renamed to it (%s): the outbox is now %s; move it back while the gateway is stopped",
                             self.path, exc, copy)
                self.path = copy
                self._sequence_file = Path(f"{copy}.sequence")  # the one at the path is the other gateway's
                if taken is not None:
                    self._held = self._swap_hold(taken)
                self._reopen()
                return
            if taken is not None:
                os.close(taken)
            with contextlib.suppress(OSError):
                os.unlink(copy)
            self._next_path_check = time.monotonic() + 60  # said once a minute, not once a check
            log.error("outbox %s: the file was %s while the gateway runs and could not be put back (%s): "
                      "its rows live only in the deleted file until the gateway stops; do not restart it "
                      "before the backlog is delivered", self.path, "replaced" if "" in here else "deleted", exc)
            return
        log.error("outbox %s: the file was %s while the gateway runs; the open outbox (%d row(s), seq up to "
                  "%d, epoch %s) is back at its path%s. Nothing may delete or replace the outbox.",
                  self.path, "replaced by another" if "" in here else "deleted", self._depth, self._seq,
                  self.epoch, f"; the file found there was moved aside to {aside} (kept)" if aside else "")
        self._reopen()

    def _swap_hold(self, taken: int) -> int:
        """Let go of the old file's flock for ``taken``, the flock of the file now in use."""
        if self._held is not None:
            os.close(self._held)
        return taken

    def _reopen(self) -> None:
        """Open the outbox put back at its path. Refused (a full disk), the file there keeps every
        committed row, the closed connection makes each commit hold its readings in memory, and
        the next check tries again. Holds ``_lock``."""
        try:
            db = self._open()
        except (OSError, sqlite3.Error, UnusableFile) as exc:
            if self._unopened is None:
                log.error("outbox %s: put back but cannot reopen it (%s): readings are held in memory until it "
                          "can (tried again every %g s)", self.path, exc, PATH_CHECK_EVERY)
            self._unopened = str(exc)
            return
        self._db, self._files = db, self._identities()
        if self._unopened is not None:
            log.warning("outbox %s: reopened (%s is over)", self.path, self._unopened)
            self._unopened = None

    def _epoch(self) -> str:
        """The sequence's epoch; a new one when the sequence starts again at 1."""
        row = self._db.execute("SELECT epoch FROM sequence_epoch").fetchone()
        if row and self._seq:
            return row[0]
        epoch = secrets.token_hex(8)
        self._fresh = True
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM sequence_epoch")
        self._db.execute("DELETE FROM chain")  # the new epoch's chain starts at GENESIS
        self._db.execute("DELETE FROM unused")
        self._db.execute("INSERT INTO sequence_epoch VALUES (?)", (epoch,))
        if self._seq:  # rows of an outbox from before epochs: they carry it from now on
            self._db.execute("UPDATE outbox SET payload = json_set(payload, '$.epoch', ?) WHERE json_valid(payload)",
                             (epoch,))
        self._db.execute("COMMIT")
        if row or self._seq:
            log.warning("outbox %s: new sequence epoch %s%s", self.path, epoch,
                        " (its sequence was reset: seq starts again at 1)" if row else
                        f" for the {self._depth} row(s) of an outbox from before epochs")
        else:
            log.info("outbox %s: new outbox, sequence epoch %s, seq starts at 1", self.path, epoch)
        return epoch

    def _vouch(self) -> None:
        """Tell an outbox gone back in time (a backup of it restored while the gateway was stopped)
        from its sequence file, and never reuse its seqs. Restored with the file too (a VM snapshot
        rolled back), it is told by the collectors' acknowledgements instead (``claimed``).

        The file beside the outbox holds the epoch, the highest seq committed and the highest
        reserved (every seq assigned is reserved there, fsynced, first). An outbox of that epoch
        whose sequence is below the committed one is an older copy of itself: the seqs above it may
        have been sent and stored, so new readings start after the reservation, and the readings
        of the seqs skipped that the store does not hold are a gap the collectors name. Its rows,
        older, are sent again (a collector stores each once). The file learns each commit right after
        it (fsynced only every ``SEQUENCE_EVERY`` s), so when the machine restarted after a stop that
        was not clean (seqs reserved beyond the committed one, the boot id another), a backup of the
        last seconds looks like the outbox: new readings start after the reservation too, and the seqs
        left unused are a gap as well. A missing or unreadable file is no rewind: it is said once, and
        written anew."""
        known = read_sequence_file(self._sequence_file)
        by_link = Path(f"{self.path}.sequence")
        if isinstance(known, str) and by_link != self._sequence_file:
            # a gateway from before kept it beside the symlink itself; older than the outbox at worst
            # (its seqs only grew since), so it can tell a rewind and never claims a false one
            if not isinstance(older := read_sequence_file(by_link), str):
                known = older
        if isinstance(known, str):
            if self._seq and not self._fresh:
                log.warning("outbox %s: %s: it cannot be vouched that the outbox (epoch %s, seq up to %d) is not an "
                            "older copy of itself; from now on it can", self.path, known, self.epoch, self._seq)
        elif known[0] != self.epoch:
            if not self._fresh:
                log.warning("outbox %s: its sequence file %s is of epoch %s, not of this outbox's epoch %s: it "
                            "cannot be vouched that the outbox is not an older copy of itself; from now on it can",
                            self.path, self._sequence_file, known[0], self.epoch)
        elif self._seq < known[1] or _rebooted(known, self._seq) or (known[5] and known[5][1] > self._seq):
            # behind its committed seq: an older copy. Or not stopped cleanly (a clean stop leaves nothing reserved
            # beyond the committed seq) before the machine restarted: the writes since the last fsync may be lost,
            # so a backup taken in the last SEQUENCE_EVERY s before the stop looks like the outbox itself. Or it
            # stopped holding readings in memory, unsaved: lost, their seqs are a gap, not given to new readings
            went_back, rebooted = self._seq, _rebooted(known, self._seq)
            restarted = went_back >= known[1]  # not behind the file: not an older copy
            skip_to = max(known[2], known[1]) if not restarted or rebooted else known[5][1]
            linked = known[3] is not None and skip_to == known[1]  # stopped cleanly: the chain goes on from its row
            # signed, the first new row must not follow a seq the store may hold and whose hash is not known here
            # (a wrong link, read as a forgery): one more seq is left unused, a gap as the others
            skip_to += self.signing is not None and not linked
            # rows held in memory while the disk refused commits: their seqs were given to readings, now lost
            lost = (max(known[5][0], went_back + 1), min(known[5][1], skip_to)) if known[5] else (skip_to + 1, skip_to)
            unused = [r for r in ((went_back + 1, lost[0] - 1), (lost[1] + 1, skip_to)) if r[0] <= r[1]] \
                if lost[0] <= lost[1] else [(went_back + 1, skip_to)]
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'", (skip_to,))
            self._db.execute("DELETE FROM chain")
            if linked:
                self._db.execute("INSERT INTO chain VALUES (?, ?)", (skip_to, known[3]))
            if restarted and unused:
                self._db.executemany("INSERT INTO unused VALUES (?, ?)", unused)
                self._db.execute("DELETE FROM unused WHERE rowid NOT IN (SELECT rowid FROM unused ORDER BY rowid DESC "
                                 "LIMIT ?)", (MAX_UNUSED_RANGES,))
            self._db.execute("COMMIT")
            self._seq, self._rewound = skip_to, True
            if restarted and unused and rebooted:
                log.warning("outbox %s: the gateway did not stop cleanly before the machine restarted (a power cut?): "
                            "its sequence file (epoch %s) cannot tell the outbox (seq up to %d) from a backup of it "
                            "taken in the last %g s before the stop, which may have reused seqs up to %d. New readings "
                            "start at seq %d: seqs %s are left unused (none was given to a reading unless the "
                            "outbox is such a backup); the status names them, and the collectors' gap over them "
                            "says so", self.path, self.epoch, went_back, SEQUENCE_EVERY, known[2], skip_to + 1,
                            " and ".join(f"{a}..{b}" for a, b in unused))
            if restarted and lost[0] <= lost[1]:
                log.error("outbox %s: the gateway stopped (%s) while its disk refused commits: the readings of seqs "
                          "%d..%d, held in memory unsaved, are lost (not left unused), and the collectors name them as "
                          "a gap. New readings start at seq %d", self.path,
                          "not cleanly, and the machine restarted since: a power cut?" if rebooted else
                          "killed, or stopped before the disk took them", *lost, skip_to + 1)
            if not restarted:
                log.error("outbox %s: the outbox WENT BACK from seq %d to seq %d (epoch %s): an older copy of it (a "
                          "backup restored, a snapshot rolled back) is at its path. New readings start at seq %d "
                          "(seqs up to %d were reserved, up to %d committed), so that none reuses a seq a collector "
                          "may hold; the readings of seqs %d..%d the store does not hold are lost, and the collectors "
                          "name them as a gap. The %d row(s) of the older copy are sent again%s.", self.path,
                          known[1], went_back, self.epoch, skip_to + 1, known[2], known[1], went_back + 1, skip_to,
                          self._depth,
                          "" if self.signing is None else f"; the hash chain goes on from seq {skip_to}'s hash"
                          if linked else "; the hash chain starts again at GENESIS")
        #: [first, last] ranges of this epoch's seqs left unused after unclean stops, the latest ``MAX_UNUSED_RANGES``:
        #: the status names them, so that the collectors' gap over them is not taken for readings lost
        self.unused = [list(r) for r in self._db.execute("SELECT first, last FROM unused ORDER BY first")]
        self._committed = self._committed_at_open = self._seq
        row = self._db.execute("SELECT seq, hash FROM chain").fetchone()
        self._committed_hash = row[1] if row and row[0] == self._seq else None
        self._reserved = self._seq
        self._reserve(self._seq + RESERVE)
        self._next_sequence_write = 0.0  # after the run's first commit: a backup taken at the last stop is then told
        if by_link != self._sequence_file and self._reserved > self._seq:
            # the one beside the real file is written: a file left beside the link would be read again by nothing
            # but a gateway from before, and would mislead whoever looks for the outbox's sequence file
            try:
                by_link.unlink()
                log.info("outbox %s: removed %s, the sequence file a gateway from before kept beside the link; "
                         "it is %s now", self.path, by_link, self._sequence_file)
            except FileNotFoundError:
                pass
            except OSError as exc:  # not the gateway's to remove, or not a file: left, and said
                log.warning("outbox %s: cannot remove %s, the sequence file a gateway from before kept beside the "
                            "link (%s); it is %s now", self.path, by_link, exc.strerror, self._sequence_file)

    def _reserve(self, upto: int, committed: bool = False) -> None:
        """Write (fsynced) that seqs up to ``upto`` may be assigned; refused (a full disk), said once a
        minute, and the readings are numbered anyway: they come first. ``committed``: right after a
        commit of rows, fsynced only when ``SEQUENCE_EVERY`` is due (or a new reservation is), so that a
        process killed after it leaves the file as far as the outbox and a backup older than the commit
        is told by it. Holds ``_lock`` then: no row of the commit is read (to be sent) before the file has it."""
        durable = self._durable and (not committed or upto > self._reserved
                                     or time.monotonic() >= self._next_sequence_write)
        text = _sequence_text(self.epoch, self._committed, upto, self._committed_hash, self._unsaved)
        try:
            if not (committed and not durable and self._in_place(text)):
                fd = _write_sequence_file(self._sequence_file, text, durable)
                self._let_go_of_sequence_file()
                self._noted = (self._sequence_file, fd)
        except OSError as exc:
            if time.monotonic() >= self._next_reserve_log:
                self._next_reserve_log = time.monotonic() + 60
                log.error("outbox %s: cannot write its sequence file %s (%s): an older copy of the outbox put in "
                          "its place now could reuse seqs up to %d", self.path, self._sequence_file, exc.strerror, upto)
            return
        self._reserved = upto
        if durable or not self._durable:
            self._next_sequence_write = time.monotonic() + SEQUENCE_EVERY

    def _in_place(self, text: bytes) -> bool:
        """Overwrite the sequence file in place with ``text``, when it can be (a descriptor of the file at its
        path, ``text`` of its size); whether it was."""
        if not (self._noted and self._noted[0] == self._sequence_file and len(text) == SEQUENCE_FILE_SIZE):
            return False
        if os.pwrite(self._noted[1], text, 0) != len(text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return True

    def _note_unsaved(self) -> None:
        """Write (fsynced) in the sequence file the seqs of the rows held in memory, unsaved (``_unsaved``):
        after a power cut, they are readings lost, not seqs left unused. In place, the one write a full
        disk allows (a new file needs a block); refused, their seqs are said to be left unused, as before."""
        text = _sequence_text(self.epoch, self._committed, self._reserved, self._committed_hash, self._unsaved)
        try:
            if self._in_place(text):
                os.fsync(self._noted[1])
        except OSError:
            pass  # the outbox's own refusal is said already, once a minute

    def _let_go_of_sequence_file(self) -> None:
        if self._noted is not None:
            os.close(self._noted[1])
            self._noted = None

    def _chain_start(self) -> str:
        """``prev`` of the next signed row: the stored hash of the last committed seq."""
        row = self._db.execute("SELECT seq, hash FROM chain").fetchone()
        if row and row[0] == self._seq:
            return row[1]
        if self.signing is not None and self._seq and not self._rewound:
            # signing begins (or resumes after rows stored unsigned) mid-epoch: the chain
            # starts here, and a verifier sees seq > 1 with GENESIS, not a forged link
            log.warning("outbox %s: the hash chain of epoch %s starts at seq %d (GENESIS): the rows before it "
                        "were not signed", self.path, self.epoch, self._seq + 1)
        return GENESIS

    def put(self, topic: str, payload_for: Callable[[int], str]) -> None:
        """Hand a message to the committer and return at once; ``payload_for(seq)``
        renders it with its sequence number (on the committer thread: an exception is
        logged there and the reading is not stored)."""
        self._hand_over(_Entry(topic, payload_for, report=True))

    def append(self, topic: str, payload_for: Callable[[int], str]) -> int:
        """Store one message and return its seq once it is committed (or held in memory)."""
        entry = _Entry(topic, payload_for, report=False)
        self._hand_over(entry)
        with self._settled:
            self._settled.wait_for(lambda: entry.settled)
        if entry.error is not None:
            raise entry.error
        return entry.seq

    def _hand_over(self, entry: _Entry) -> None:
        with self._wake:
            if self._closing:
                raise RuntimeError(f"outbox {self.path} is closed")
            self._incoming.append(entry)
            self._handed += 1
            self._wake.notify()

    def flush(self) -> None:
        """Wait until everything handed over so far is committed (or held in memory)."""
        with self._wake:
            target = self._handed
        with self._settled:
            self._settled.wait_for(lambda: self._settled_count >= target)

    def _run(self) -> None:
        """The committer: everything handed over while the last commit was flushing
        goes into the next one."""
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._incoming or self._closing, timeout=PATH_CHECK_EVERY)
                taken, self._incoming = self._incoming, []
                if not taken and self._closing:
                    return
            with self._lock:
                try:
                    self._check_path(time.monotonic())
                except Exception:  # neither the committer nor the readings it took may go with it
                    log.exception("outbox %s: checking its path failed", self.path)
            if not taken:
                continue
            try:
                if self._number(taken):
                    with self._lock:
                        self._commit()
                    if self.on_commit is not None:
                        self.on_commit()
            except Exception:  # the committer must outlive any one batch
                log.exception("outbox %s: commit failed", self.path)
            finally:
                with self._settled:
                    for e in taken:
                        e.settled = True
                    self._settled_count += len(taken)
                    self._settled.notify_all()

    def _number(self, taken: list[_Entry]) -> int:
        """Give each entry its seq, payload and signature, in order; queue them for the commit."""
        ready = []
        seq = max(self._seq, self._skip_to)
        if seq + len(taken) > self._reserved:
            self._reserve(seq + len(taken) + RESERVE)
        for e in taken:
            try:
                payload = e.payload_for(seq + 1)
                payload.encode()  # a text SQLite cannot store fails this reading here, not every later commit
                if self.signing is not None:
                    signed = sign(payload, self._prev, self.signing.id, self.signing.key)
                    e.hash = chain_hash(signed)
                    payload = signed.decode()
            except Exception as exc:
                e.error = exc
                if e.report:
                    log.exception("outbox %s: a reading for %s could not be stored", self.path, e.topic)
                continue
            seq += 1
            e.seq, e.payload = seq, payload
            if e.hash is not None:
                self._prev = e.hash
            ready.append(e)
        with self._pending_lock:  # together: floor() must never see a seq neither pending nor stored
            self._pending.extend(ready)
            self._seq = seq
        return len(ready)

    def _commit(self) -> None:
        """Write every pending row and forget every acknowledged one, in one transaction."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
        acked = sorted(self._acked)
        if not batch and not acked and not self._unsaved_drops:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO outbox(seq, topic, payload) VALUES (?,?,?)",
                                 [(e.seq, e.topic, e.payload) for e in batch])
            if batch and batch[-1].hash is not None:
                self._db.execute("DELETE FROM chain")
                self._db.execute("INSERT INTO chain VALUES (?, ?)", (batch[-1].seq, batch[-1].hash))
            cur = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in acked])
            deleted = cur.rowcount if acked else 0
            capped = max(0, self._depth - deleted + len(batch) - self.max_rows)
            if capped:
                victims = self._victims(capped)
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(v,) for v in victims])
            if capped + self._unsaved_drops:
                self._db.execute(
                    "INSERT INTO counters VALUES ('dropped', ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                    (capped + self._unsaved_drops, capped + self._unsaved_drops),
                )
            self._db.execute("COMMIT")
        except BaseException as exc:
            # SQLite may have rolled back by itself (a COMMIT that hit a full disk does)
            # a failed rollback, or a connection closed (put back, not reopened), must not lose the batch
            with contextlib.suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            self._hold(batch, exc)
            if not isinstance(exc, sqlite3.Error):
                raise
            return
        self._acked.difference_update(acked)
        if batch:
            self._committed, self._committed_hash = batch[-1].seq, batch[-1].hash
            self._unsaved = None  # every row held is in this commit (the file learns it below)
        if capped:
            for v in victims:
                self._awaiting.pop(v, None)
        self._stored_drops += capped + self._unsaved_drops
        self._unsaved_drops = 0
        self._depth += len(batch) - deleted - capped
        if self.error is not None:
            log.log(logging.CRITICAL if self._episode_drops else logging.WARNING,
                    "outbox %s: writing again (%s is over); %d held reading(s) saved, %d dropped meanwhile",
                    self.path, self.error, len(batch), self._episode_drops)
            self.error = None
            self._episode_drops = self._drops_unlogged = 0
        if capped:
            log.critical("OUTBOX FULL (%d rows): dropped the %d oldest reading(s); %d dropped in all. "
                         "Raise outbox.max_rows or restore the link to the broker.", self.max_rows, capped,
                         self._stored_drops)
        if batch:
            self._reserve(max(self._reserved, self._committed), committed=True)  # reserving what a full disk refused

    def _victims(self, n: int) -> list[int]:
        """The ``n`` rows the cap drops: the oldest, those awaiting the store last."""
        oldest = [s for (s,) in self._db.execute("SELECT seq FROM outbox ORDER BY seq LIMIT ?",
                                                 (n + len(self._awaiting),))]
        victims = [s for s in oldest if s not in self._awaiting][:n]
        return victims + [s for s in oldest if s in self._awaiting][:n - len(victims)]

    def _hold(self, batch: list[_Entry], exc: BaseException) -> None:
        """Keep the rows of a failed commit in memory, in sequence order, for the next commit."""
        with self._pending_lock:
            self._pending[:0] = batch
            held = [self._unsaved[0] if self._unsaved else self._pending[0].seq, self._pending[-1].seq] \
                if self._pending else self._unsaved
            over = len(self._pending) - self.memory_rows
            if over > 0:
                lost, self._pending = self._pending[:over], self._pending[over:]
        if over > 0:
            self._unsaved_drops += over
            self._episode_drops += over
            self._drops_unlogged += over
            if time.monotonic() >= self._next_drop_log:
                log.critical("OUTBOX CANNOT WRITE %s (%s) and holds %d reading(s) in memory, its limit: dropped "
                             "%d more of the oldest (up to seq %d), %d since the disk refused writes. Free space "
                             "on that disk.", self.path, exc, self.memory_rows, self._drops_unlogged, lost[-1].seq,
                             self._episode_drops)
                self._drops_unlogged = 0
                self._next_drop_log = time.monotonic() + 60
        if held != self._unsaved:
            self._unsaved = held
            self._note_unsaved()
        if self.error is None:
            log.error("outbox %s: cannot write (%s): readings are held in memory, not saved, until it can "
                      "(at most %d)", self.path, exc, self.memory_rows)
        self.error = str(exc)

    def after(self, seq: int, limit: int, upto: int | None = None) -> list[tuple[int, str, str]]:
        """Rows with seq > ``seq`` (and <= ``upto``) not confirmed, oldest first."""
        with self._lock:
            acked = self._acked
            if upto is None:
                q = "SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?"
                rows = self._db.execute(q, (seq, limit + len(acked))).fetchall()
            else:
                q = "SELECT seq, topic, payload FROM outbox WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
                rows = self._db.execute(q, (seq, upto, limit + len(acked))).fetchall()
            return [r for r in rows if r[0] not in acked][:limit]

    def awaiting(self, seq: int) -> bool:
        """Whether the broker has the row and the store has not confirmed it yet."""
        return seq in self._awaiting

    def sent(self, seqs: Iterable[int]) -> None:
        """The broker has these rows (PUBACK): they await the store's confirmation."""
        now = time.monotonic()
        with self._lock:
            for s in seqs:
                self._awaiting.pop(s, None)  # to the end: the dict stays in time order
                self._awaiting[s] = now

    def expired(self, timeout: float) -> list[int]:
        """Rows awaiting the store for longer than ``timeout`` [s]: no longer awaiting, to be sent again."""
        limit = time.monotonic() - timeout
        late = []
        with self._lock:
            for s, t in self._awaiting.items():  # oldest first: stop at the first in time
                if t >= limit:
                    break
                late.append(s)
            for s in late:
                del self._awaiting[s]
        return late

    def forget_sent(self) -> int:
        """Every row awaiting the store is to be sent again (the connection came back); how many."""
        with self._lock:
            n = len(self._awaiting)
            self._awaiting.clear()
        return n

    def confirm(self, ranges: Iterable[tuple[int, int]], held: Callable[[int], bool] | None = None) -> int:
        """Delete the rows in ``ranges`` (inclusive seqs of this epoch), those ``held`` says if given:
        the store has them. How many."""
        with self._lock:
            found = {s for a, b in ranges
                     for (s,) in self._db.execute("SELECT seq FROM outbox WHERE seq BETWEEN ? AND ?", (a, b))
                     if held is None or held(s)}
            found -= self._acked
            if found:
                for s in found:
                    self._awaiting.pop(s, None)
                self._acked |= found
                self._commit()
        return len(found)

    def claimed(self, top: int) -> None:
        """A collector's acknowledgement of this epoch claims seqs up to ``top``. Beyond every seq this
        outbox assigned, that is only true of an older copy of the outbox restored with its sequence
        file (a VM snapshot rolled back, the whole directory restored), which the file cannot tell:
        new readings start after ``top``, with one ERROR. Believed once a run, and ``max_rows`` seqs
        ahead at most (a claim beyond is logged, once a minute, and not believed): such an
        acknowledgement deletes nothing, and what it can make the gateway skip is bounded, logged,
        and a gap to the collectors."""
        assigned = max(self._seq, self._skip_to)
        if top <= assigned:
            return
        if self._skipped_by_ack or top > assigned + self.max_rows:
            if time.monotonic() >= self._next_claim_log:
                self._next_claim_log = time.monotonic() + 60
                log.error("outbox %s: an acknowledgement claims seqs of epoch %s up to %d, beyond the highest this "
                          "outbox assigned (%d): not believed (%s)", self.path, self.epoch, top, assigned,
                          "once a run" if self._skipped_by_ack else f"more than outbox.max_rows={self.max_rows} ahead")
            return
        self._skipped_by_ack = True
        # signed, the first new row must not follow seq ``top``, held by a collector with a hash not known here
        # (a wrong link, read as a forgery): one more seq is left unused, a gap as the others
        skip = self._skip_to = top + (self.signing is not None)
        with self._lock:  # kept: a gateway stopped (or killed) before its next reading would reuse them next run
            try:
                self._db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox' AND seq < ?", (skip, skip))
            except sqlite3.Error as exc:  # a full disk: the next reading's row keeps it
                log.error("outbox %s: cannot keep the skip to seq %d (%s): if the gateway stops before its next "
                          "reading is committed, the next run may reuse seqs up to %d", self.path, skip, exc, skip)
        log.error("outbox %s: the outbox WENT BACK from seq %d (at least) to seq %d (epoch %s): a collector holds "
                  "seqs this outbox never assigned, so it is an older copy of itself, restored with its sequence "
                  "file (a snapshot rolled back). New readings start at seq %d; seqs numbered since this gateway "
                  "started (after %d) may have been used before: of each, the reading the store does not hold (the "
                  "earlier one, or this run's) is lost", self.path, top, assigned, self.epoch, skip + 1,
                  self._committed_at_open)

    def acknowledged_by(self) -> tuple[bool, list[str] | None]:
        """(whether one was recorded, the collectors whose acknowledgements counted: None for any) as last
        recorded by ``record_acknowledged_by``; not recorded: an outbox from before the record, or new."""
        return self._collectors("acknowledged_by")

    def trusted_by(self) -> tuple[bool, list[str] | None]:
        """As ``acknowledged_by``, of the listed collectors whose retained acknowledgements count: narrowed at a
        start whose list lost some (``record_trusted_by``) before ``acknowledged_by`` catches up."""
        return self._collectors("trusted_by")

    def _collectors(self, table: str) -> tuple[bool, list[str] | None]:
        with self._lock:
            row = self._db.execute(f"SELECT collectors FROM {table}").fetchone()
        return (False, None) if row is None else (True, json.loads(row[0]))

    def record_acknowledged_by(self, collectors: list[str] | None) -> None:
        """Record whose acknowledgements count (None: any collector's), for the next run to compare its list with;
        they are trusted again."""
        self._record(collectors, "acknowledged_by", "trusted_by")

    def record_trusted_by(self, collectors: list[str]) -> None:
        """Record that only ``collectors`` are trusted until ``record_acknowledged_by``: a collector dropped then
        listed again before it is recorded has no retained acknowledgement of a time it counted."""
        self._record(collectors, "trusted_by")

    def _record(self, collectors: list[str] | None, *tables: str) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for table in tables:
                    self._db.execute(f"DELETE FROM {table}")
                    self._db.execute(f"INSERT INTO {table} VALUES (?)", (json.dumps(collectors),))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:  # a full disk
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                log.error("outbox %s: cannot record %s (%s): the next run compares its outbox.acknowledged_by with "
                          "the record before", self.path, " and ".join(tables), exc)

    def floor(self) -> int:
        """The lowest seq not confirmed: every seq below it is confirmed (or dropped, counted) and gone."""
        with self._lock:
            low = self._db.execute("SELECT MIN(seq) FROM outbox").fetchone()[0]
        with self._pending_lock:
            candidates = [s for s in (low, self._pending[0].seq if self._pending else None) if s is not None]
            return min(candidates) if candidates else self._seq + 1

    def delete(self, seqs: Iterable[int]) -> None:
        """Forget confirmed rows (one transaction, one flush, per batch of confirmations)."""
        seqs = set(seqs)
        if not seqs:
            return
        with self._lock:
            self._acked |= seqs
            self._commit()

    def last_seq(self) -> int:
        """The highest sequence number committed."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
            return row[0] if row else 0

    @property
    def depth(self) -> int:
        """Rows stored and not yet acknowledged."""
        return self._depth - len(self._acked)

    @property
    def unsaved(self) -> int:
        """Readings held in memory because the disk refused them."""
        return len(self._pending) if self.error is not None else 0

    @property
    def dropped(self) -> int:
        """Readings dropped in all: by the ``max_rows`` cap and by the memory bound."""
        return self._stored_drops + self._unsaved_drops

    def close(self) -> None:
        """Commit what was handed over, stop the committer, close the file."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._committer.join()
        with self._lock:
            self._check_path()
            if self._pending or self._acked:
                self._commit()  # a last try for what the disk refused so far
            if self._pending:
                log.critical("outbox %s: %d reading(s) held in memory could not be saved (%s) and are lost "
                             "(seq %d..%d)", self.path, len(self._pending), self.error, self._pending[0].seq,
                             self._pending[-1].seq)
            else:  # nothing beyond it assigned (or claimed): an older copy restored now skips no unused seq
                self._reserve(max(self._committed, self._skip_to))
            self._let_go_of_sequence_file()
            self._db.close()
            if self._held is not None:  # closed twice: the second finds nothing to do, as before
                os.close(self._held)
                self._held = None


class OutboxInUse(UnusableFile):
    """Another gateway (or another Outbox of this process) has the outbox open."""

    exit_code = 1  # it may stop (a gateway started by hand): the unit tries again


def hold(path: str | Path, create: bool = False) -> int:
    """A new descriptor of the file at ``path``, holding an exclusive flock on it: one gateway per outbox.

    flock, not a lock file beside it (which a refused command would create) nor fcntl's POSIX
    locks (SQLite's own, per process, and dropped when any descriptor of the file closes, SQLite's
    included): a flock belongs to this open file description alone, and goes with the process,
    however it dies. Raises ``OutboxInUse`` naming the holder's pid when it can be read, having
    changed nothing; ``UnusableFile`` when the filesystem has no flock (some NFS and FUSE mounts),
    where one gateway per outbox cannot be guaranteed.

    ``create``: a missing file is created (empty, with its directories) and locked before anyone
    else can open it, so that no second gateway nor ``--new-outbox`` slips in between SQLite making
    it and the lock; refused for want of flock, the file made here is removed again (refused because
    another gateway holds it, it is that gateway's outbox now and stays)."""
    made = False
    try:
        if create and not os.path.exists(path):
            real = os.path.realpath(path)  # a symlink to a file not made yet: the file it names
            check_can_create(Path(real), "outbox")
            Path(real).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(real, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                made = True
            except FileExistsError:  # another gateway made it meanwhile: its lock decides
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnusableFile(f"cannot {'create' if create else 'open'} outbox {path} to lock it: {exc.strerror}: "
                           f"nothing was changed") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _flock_holder(os.fstat(fd))
        os.close(fd)  # not removed, though made here: the gateway holding it opened it after, and writes to it
        raise OutboxInUse(f"outbox {path} is in use by another gateway{f' (pid {holder})' if holder else ''}: "
                          f"nothing was changed; one gateway per outbox: stop that one first") from None
    except OSError as exc:  # ENOLCK, EOPNOTSUPP: no flock on this filesystem
        _let_go(fd, path, made)
        raise UnusableFile(f"outbox {path} cannot be locked ({exc.strerror}): its filesystem does not support "
                           f"flock, so one gateway per outbox cannot be guaranteed there: nothing was changed; "
                           f"put the outbox on a local filesystem") from None
    except BaseException:
        _let_go(fd, path, made)
        raise
    return fd


def _let_go(fd: int, path: str | Path, made: bool) -> None:
    """Close a descriptor ``hold`` could not lock, and remove the file if ``hold`` made it."""
    os.close(fd)
    if made:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.realpath(path))


def _flock_holder(st: os.stat_result) -> int | None:
    """The pid holding a flock on the file ``st`` describes, from /proc/locks (Linux), if it says."""
    file = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/locks") as locks:
            for line in locks:
                f = line.split()
                if "->" not in f and f[1] == "FLOCK" and f[5] == file:
                    return int(f[4])
    return None


def read_sequence_file(path: Path) -> tuple[str, int, int, str | None, str | None, list[int] | None] | str:
    """(epoch, highest seq committed, highest reserved, the chain hash of the committed seq if it was
    signed, the boot of the machine it was written in if known, [first, last] seqs of the rows then held
    in memory unsaved if any) from an outbox's sequence file, or why not."""
    try:
        body = json.loads(path.read_bytes())
        known = (body["epoch"], body["committed"], body["reserved"], body.get("hash"), body.get("boot"),
                 body.get("unsaved"))
    except FileNotFoundError:
        return f"it has no sequence file {path} (the first run of a gateway from before it, or the file was deleted)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its sequence file {path} cannot be read ({exc}); it is written anew"
    if not (isinstance(known[0], str) and all(type(n) is int and n >= 0 for n in known[1:3])
            and (known[3] is None or isinstance(known[3], str) and _HASH.fullmatch(known[3]))
            and (known[4] is None or isinstance(known[4], str))
            and (known[5] is None or isinstance(known[5], list) and len(known[5]) == 2
                 and all(type(n) is int and n >= 1 for n in known[5]) and known[5][0] <= known[5][1])):
        return f"its sequence file {path} is not one (epoch, committed, reserved, hash); it is written anew"
    if max(known[1:3]) > SEQUENCE_FILE_MAX:
        return (f"its sequence file {path} names seq {max(known[1:3])}, beyond any an outbox reaches "
                f"({SEQUENCE_FILE_MAX}): damaged or edited, it is not believed and is written anew")
    return known


def _sequence_text(epoch: str, committed: int, reserved: int, chain: str | None, unsaved: list[int] | None) -> bytes:
    """The sequence file's text, padded to ``SEQUENCE_FILE_SIZE``."""
    return json.dumps({"epoch": epoch, "committed": committed, "reserved": reserved, "hash": chain,
                       "boot": _boot(), "unsaved": unsaved}).encode().ljust(SEQUENCE_FILE_SIZE)


def _write_sequence_file(path: Path, text: bytes, durable: bool = True) -> int:
    """Replace the sequence file whole (a new file renamed over it): a power cut leaves the old or
    the new; ``durable`` (as the outbox's commits): both fsynced. A descriptor of the new file, to
    write it in place after."""
    new = Path(f"{path}.new")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        if os.write(fd, text) != len(text):  # a disk filling up as it was written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if durable:
            os.fsync(fd)
        os.rename(new, path)
        if durable:
            _fsync(os.path.dirname(os.path.abspath(path)))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _rebooted(known: tuple, seq: int) -> bool:
    """Whether the sequence file ``known`` says the gateway did not stop cleanly (seqs reserved beyond the
    outbox's ``seq``) before the machine restarted (another boot id, or none known)."""
    return known[2] > seq and (known[4] is None or known[4] != _boot())


@functools.cache
def _boot() -> str | None:
    """This boot of the machine's id (Linux), None where it cannot be read: then every unclean stop is taken
    for one the machine restarted after."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return None


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unused_name(path: Path, label: str) -> Path:
    """``<name>.<label>-<UTC time>`` beside ``path``, or ``...-2``, ``-3``... when that name or its
    -wal, -shm or -journal is taken: a rename onto it would silently replace a file kept there."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.{label}-{stamp}")
    n = 1
    while any(os.path.lexists(f"{aside}{s}") for s in ("", "-wal", "-shm", "-journal")):
        n += 1
        aside = path.with_name(f"{path.name}.{label}-{stamp}-{n}")
    return aside


def move_aside(path: str | Path) -> Path | None:
    """Rename an outbox that cannot be used (with its -wal and -shm files) to
    ``<name>.corrupt-<UTC time>`` beside it, so that a new one can start; never delete it.

    Returns the new name, or None when there was nothing at ``path``; raises ``OutboxInUse``
    when a gateway has it open."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    held = hold(path) if path.exists() else None  # a gateway running on it: refused, nothing moved
    try:
        aside = _unused_name(path, "corrupt")
        os.rename(path, aside)
        for suffix in ("-wal", "-shm", "-journal"):  # the WAL may hold committed rows: keep it with its file
            if Path(f"{path}{suffix}").exists():
                os.rename(f"{path}{suffix}", f"{aside}{suffix}")
    finally:
        if held is not None:
            os.close(held)
    return aside
