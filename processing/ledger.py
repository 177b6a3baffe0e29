"""The append-only ledger of monthly results (SQLite).

Every run of a month is a revision carrying what it was computed from: the hash of
the readings and the version of its form (``period.input_hash``), the methodology and
default-value versions, the code version, the site configuration that fed it, the QA
findings and every adjustment. Triggers refuse updates and deletes. Re-running on
unchanged inputs records nothing new; a month signed off by MRV staff takes no further
revisions.

The hash's version is in the revision's recorded summary, not a column: the ``revisions``
table keeps the layout that code before versions reads (``SELECT *`` into its columns), so
a processor of that code still running on the ledger, or a roll-back to it, goes on working,
and a revision it writes names no version: version 1, which its hash is.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from contract.sqlite_file import open_sqlite, use_wal

#: a revision's columns, named: a ledger written by code that added one to them still reads
COLUMNS = ("id, site, month, revision, created, fingerprint, input_hash, methodology, methodology_version, "
           "defaults_hash, config_hash, code_version, status, RE, PE, ER_unrounded, ER, provisional, result_json")
SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL, month TEXT NOT NULL, revision INTEGER NOT NULL, created TEXT NOT NULL,
    fingerprint TEXT NOT NULL, input_hash TEXT NOT NULL, methodology TEXT NOT NULL,
    methodology_version TEXT NOT NULL, defaults_hash TEXT NOT NULL, config_hash TEXT NOT NULL,
    code_version TEXT NOT NULL, status TEXT NOT NULL, RE REAL, PE REAL, ER_unrounded REAL, ER INTEGER,
    provisional INTEGER, result_json TEXT NOT NULL,
    UNIQUE (site, month, revision)
);
CREATE TRIGGER IF NOT EXISTS revisions_no_update BEFORE UPDATE ON revisions
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS revisions_no_delete BEFORE DELETE ON revisions
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
-- INSERT OR REPLACE deletes the old row without firing delete triggers
CREATE TRIGGER IF NOT EXISTS revisions_no_replace BEFORE INSERT ON revisions
    WHEN EXISTS (SELECT 1 FROM revisions WHERE id = NEW.id
                 OR (site = NEW.site AND month = NEW.month AND revision = NEW.revision))
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TABLE IF NOT EXISTS signoffs (
    site TEXT NOT NULL, month TEXT NOT NULL, revision INTEGER NOT NULL, signed_by TEXT NOT NULL,
    signed_at TEXT NOT NULL, PRIMARY KEY (site, month)
);
CREATE TRIGGER IF NOT EXISTS signoffs_no_update BEFORE UPDATE ON signoffs
    BEGIN SELECT RAISE(ABORT, 'a sign-off is final'); END;
CREATE TRIGGER IF NOT EXISTS signoffs_no_delete BEFORE DELETE ON signoffs
    BEGIN SELECT RAISE(ABORT, 'a sign-off is final'); END;
CREATE TRIGGER IF NOT EXISTS signoffs_no_replace BEFORE INSERT ON signoffs
    WHEN EXISTS (SELECT 1 FROM signoffs WHERE site = NEW.site AND month = NEW.month)
    BEGIN SELECT RAISE(ABORT, 'a sign-off is final'); END;
CREATE TABLE IF NOT EXISTS month_to_date (
    site TEXT NOT NULL, month TEXT NOT NULL, computed TEXT NOT NULL, through TEXT NOT NULL,
    result_json TEXT NOT NULL, PRIMARY KEY (site, month)
);
"""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def code_version() -> str:
    """Hash of the code that computes the figures: a change of any equation changes it
    (the exporter only presents figures, so it is left out). Read once per process, at first
    use: a revision is labelled with the code this process runs, not with what an upgrade has
    since put on disk (and the files are not read again each month)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.py") if "export" not in p.relative_to(root).parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return "processing-" + h.hexdigest()[:16]


@dataclass(frozen=True)
class Revision:
    id: int
    site: str
    month: str
    revision: int
    created: str
    status: str
    ER: int | None
    ER_unrounded: float | None
    provisional: bool
    input_hash: str
    code_version: str
    result: dict
    new: bool = False  # recorded by this call
    defaults_hash: str = ""
    config_hash: str = ""
    input_hash_version: int = 1


class SignedOff(Exception):
    """The month is signed off; late data does not change it."""


class Ledger:
    """``create``: whether a missing ledger may be created (the processor's and the demo's
    first run); commands that use an existing ledger refuse a missing one rather than
    start an empty record beside the real one. ``read_only``: an existing ledger opened
    for reading only (never created, nothing written)."""

    def __init__(self, path: str | Path, *, create: bool = True, read_only: bool = False):
        self.path = str(path)
        self._db = open_sqlite(
            path, "ledger", {"revisions"}, create=create and not read_only, read_only=read_only,
            isolation_level=None, check_same_thread=False, timeout=10,
            damaged_hint="restore it from a backup (it is the record of every result and sign-off: never start "
                         "an empty one in its place)",
            missing_hint="check --ledger (`jcm processor` creates the ledger on its first run; "
                         "`jcm process --create-ledger` creates it on purpose)")
        if read_only:  # a verifier's look at it (jcm verify --ledger): nothing set up, nothing written or created
            return
        use_wal(self._db)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def _row(self, row, new=False) -> Revision:
        (id_, site, month, rev, created, _fp, input_hash, _m, _v, defaults_hash, config_hash, code, status, _re, _pe,
         er_u, er, prov, result) = row
        result = json.loads(result)
        # a revision recorded before input hashes had versions names none: its hash is version 1
        version = result.get("summary", {}).get("input_hash_version", 1)
        return Revision(id_, site, month, rev, created, status, er, er_u, bool(prov), input_hash, code,
                        result, new, defaults_hash, config_hash, version)

    def latest(self, site: str, month: str) -> Revision | None:
        row = self._db.execute(f"SELECT {COLUMNS} FROM revisions WHERE site=? AND month=? "
                               "ORDER BY revision DESC LIMIT 1",
                               (site, month)).fetchone()
        return self._row(row) if row else None

    def revisions(self, site: str, month: str | None = None) -> list[Revision]:
        q, args = f"SELECT {COLUMNS} FROM revisions WHERE site=?", [site]
        if month:
            q, args = q + " AND month=?", args + [month]
        return [self._row(r) for r in self._db.execute(q + " ORDER BY month, revision", args)]

    def signoff(self, site: str, month: str) -> tuple | None:
        return self._db.execute("SELECT revision, signed_by, signed_at FROM signoffs WHERE site=? AND month=?",
                                (site, month)).fetchone()

    def record(self, site: str, month: str, summary: dict, details: dict, versions: dict) -> Revision:
        """Append a revision unless the latest has the same fingerprint; refuse a signed-off month.
        ``summary["input_hash_version"]``: the version of its input hash (1 if absent, as before versions),
        recorded in the revision's summary."""
        fingerprint = sha256_text(json.dumps([summary["input_hash"], versions], sort_keys=True))
        latest = self.latest(site, month)
        if latest is not None and self._fingerprint(latest.id) == fingerprint:
            return latest
        signed = self.signoff(site, month)
        if signed is not None:
            raise SignedOff(f"{site} {month} was signed off by {signed[1]} at {signed[2]} (revision {signed[0]}); "
                            "the new data are not applied to it")
        result = {"summary": summary, **details}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rev = (latest.revision if latest else 0) + 1
            self._db.execute(
                "INSERT INTO revisions (site, month, revision, created, fingerprint, input_hash, methodology, "
                "methodology_version, defaults_hash, config_hash, code_version, status, RE, PE, ER_unrounded, ER, "
                "provisional, result_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (site, month, rev, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), fingerprint,
                 summary["input_hash"], summary["methodology"], summary["version"], versions["defaults_hash"],
                 versions["config_hash"], versions["code_version"], summary["status"], summary["RE"], summary["PE"],
                 summary["ER_unrounded"], summary["ER"], int(bool(summary["provisional"])),
                 json.dumps(result, sort_keys=True, default=str)))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return self._row(self._db.execute(f"SELECT {COLUMNS} FROM revisions WHERE site=? AND month=? AND revision=?",
                                          (site, month, rev)).fetchone(), new=True)

    def _fingerprint(self, id_: int) -> str:
        return self._db.execute("SELECT fingerprint FROM revisions WHERE id=?", (id_,)).fetchone()[0]

    def sign_off(self, site: str, month: str, by: str, revision: int | None = None) -> int:
        latest = self.latest(site, month)
        if latest is None:
            raise ValueError(f"{site} {month}: no result in the ledger to sign off")
        rev = revision or latest.revision
        if not self._db.execute("SELECT 1 FROM revisions WHERE site=? AND month=? AND revision=?",
                                (site, month, rev)).fetchone():
            raise ValueError(f"{site} {month}: no revision {rev}")
        if self.signoff(site, month):
            raise SignedOff(f"{site} {month} is already signed off")
        self._db.execute("INSERT INTO signoffs VALUES (?,?,?,?,?)",
                         (site, month, rev, by, dt.datetime.now(dt.UTC).isoformat(timespec="seconds")))
        return rev

    def save_month_to_date(self, site: str, month: str, through: str, result: dict) -> None:
        self._db.execute("INSERT INTO month_to_date VALUES (?,?,?,?,?) ON CONFLICT (site, month) DO UPDATE SET "
                         "computed=excluded.computed, through=excluded.through, result_json=excluded.result_json",
                         (site, month, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), through,
                          json.dumps(result, sort_keys=True, default=str)))

    def month_to_date(self, site: str) -> dict | None:
        row = self._db.execute("SELECT result_json FROM month_to_date WHERE site=? ORDER BY month DESC LIMIT 1",
                               (site,)).fetchone()
        return json.loads(row[0]) if row else None

    def close(self) -> None:
        self._db.close()
