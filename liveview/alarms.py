"""Alarms: when each started and ended, kept in SQLite because they are MRV evidence too.

The rules are pure functions of what the live view knows (latest readings, gateway
status, site config, month-to-date completeness); ``AlarmBook.update`` turns the set
of currently true conditions into start and end transitions.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from contract.config.site import Site
from contract.sqlite_file import use_wal
from contract.store import SequenceFinding

SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT NOT NULL, subject TEXT NOT NULL, kind TEXT NOT NULL,
    detail TEXT NOT NULL, started TEXT NOT NULL, ended TEXT
);
CREATE INDEX IF NOT EXISTS alarms_open ON alarms (site, ended);
CREATE INDEX IF NOT EXISTS alarms_subject ON alarms (site, subject, kind, ended);
"""

#: alarm kinds and their meaning, for the page's legend and the API
KINDS = {
    "device_stale": "no reading for 3 poll intervals",
    "device_offline": "the gateway gets no answer from the device (it backs off and retries)",
    "device_faulted": "some points of the device failed or read out of range",
    "gateway_offline": "the gateway's last will said offline",
    "counter_backwards": "a cumulative counter went backwards",
    "counter_jump": "a cumulative counter rose faster than physically possible",
    "out_of_range": "a value outside its valid range",
    "calibration_due": "meter calibration due within 30 days",
    "calibration_overdue": "meter calibration overdue",
    "completeness_low": "month-to-date completeness below the site's threshold",
    "sequence_gap": "readings the gateway sent never arrived (seqs missing), until they arrive after all",
    "sequence_epoch": "the gateway started a new sequence epoch: its unsent readings were lost (for 7 days)",
    "sequence_jump": "the gateway sent seqs far beyond its sequence: stored, not followed, until its seqs reach them",
    "sequence_churn": "the gateway sent readings under more new epochs than a real one starts (for 7 days)",
    "sequence_holes": "readings missing at too many places of a gateway's sequence to name one by one",
    "clock_offset": "the gateway's clock is off by more than the collector's bound: its readings are flagged",
}
#: the kinds judged from what MQTT brings: while the live view is not connected to the broker,
#: silence is its own fault, not the devices' (their alarms are neither opened nor ended then)
FROM_BROKER = frozenset({"device_stale", "device_offline", "device_faulted", "gateway_offline", "counter_backwards",
                         "counter_jump", "out_of_range"})
#: an alarm whose condition comes back within this long of its end is the same alarm, on again:
#: a condition that flaps (a value around its limit) is one alarm, not a row in the book per flip
REOPEN_WITHIN = dt.timedelta(minutes=10)
#: how long a new sequence epoch stays an alarm
EPOCH_ALARM = dt.timedelta(days=7)


@dataclass(frozen=True)
class Condition:
    site: str
    subject: str  # device, gateway or device.channel
    kind: str
    detail: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.site, self.subject, self.kind


def calibration_conditions(site: Site, today: dt.date) -> list[Condition]:
    out = []
    for d in site.devices:
        if not d.calibrations:
            continue
        last = max(d.calibrations, key=lambda c: c.date)
        if last.next_due < today:
            out.append(Condition(site.site, d.id, "calibration_overdue", f"calibration was due {last.next_due}"))
        elif (last.next_due - today).days <= 30:
            out.append(Condition(site.site, d.id, "calibration_due", f"calibration due {last.next_due}"))
    return out


def completeness_conditions(site: Site, month_to_date: dict | None) -> list[Condition]:
    if not month_to_date:
        return []
    threshold = site.quality.completeness_review
    return [Condition(site.site, src, "completeness_low", f"{frac:.1%} month to date, below {threshold:.0%}")
            for src, frac in sorted(month_to_date.get("completeness", {}).items()) if frac < threshold]


def sequence_conditions(findings: list[SequenceFinding], now: dt.datetime) -> list[Condition]:
    """Open gaps in a gateway's sequence, recent new epochs, and clocks still wrong, as the collector recorded them."""
    out = []
    for f in findings:
        subject = f"{f.gateway}.{f.epoch or 'no-epoch'}.{f.first}"
        if f.kind == "gap" and f.resolved is None:
            out.append(Condition(f.site, subject, "sequence_gap",
                                 f"{f.missing} reading(s) missing, seqs {f.first}..{f.last}: {f.cause}"))
        elif f.kind == "epoch" and now - f.noticed < EPOCH_ALARM:
            out.append(Condition(f.site, subject, "sequence_epoch", f.cause))
        elif f.kind == "clock" and f.resolved is None:
            out.append(Condition(f.site, subject, "clock_offset", f.cause))
        elif f.kind == "jump" and f.resolved is None:
            out.append(Condition(f.site, subject, "sequence_jump", f.cause))
        elif f.kind == "churn" and now - f.noticed < EPOCH_ALARM:
            out.append(Condition(f.site, subject, "sequence_churn", f.cause))
        elif f.kind == "holes" and f.resolved is None:
            out.append(Condition(f.site, subject, "sequence_holes", f.cause))
    return out


class AlarmBook:
    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        use_wal(self._db)
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def active(self, site: str | None = None) -> list[dict]:
        return self._rows("ended IS NULL", site)

    def recent(self, site: str | None = None, limit: int = 50) -> list[dict]:
        return self._rows("1=1", site, limit)

    def _rows(self, where: str, site: str | None, limit: int = 1000) -> list[dict]:
        q = f"SELECT id, site, subject, kind, detail, started, ended FROM alarms WHERE {where}"
        args: list = []
        if site:
            q += " AND site = ?"
            args.append(site)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [dict(zip(("id", "site", "subject", "kind", "detail", "started", "ended"), r)) for r in rows]

    def update(self, scope: tuple[str, set[str]], conditions: list[Condition], now: dt.datetime) -> list[dict]:
        """Make the open alarms of ``scope`` (site, kinds) match ``conditions``; return the transitions."""
        site, kinds = scope
        ts = now.isoformat(timespec="seconds")
        changes = []
        with self._lock:
            open_rows = self._db.execute(
                f"SELECT id, subject, kind, detail FROM alarms WHERE ended IS NULL AND site = ? AND kind IN "
                f"({','.join('?' * len(kinds))})", (site, *kinds)).fetchall()
            open_keys = {(site, subj, kind): (id_, detail) for id_, subj, kind, detail in open_rows}
            wanted = {c.key: c for c in conditions}
            for key, (id_, detail) in open_keys.items():
                if key not in wanted:
                    self._db.execute("UPDATE alarms SET ended = ? WHERE id = ?", (ts, id_))
                    changes.append({"id": id_, "site": site, "subject": key[1], "kind": key[2], "detail": detail,
                                    "started": None, "ended": ts})
            recent = (now - REOPEN_WITHIN).isoformat(timespec="seconds")
            for key, c in wanted.items():
                if key in open_keys:
                    continue
                again = self._db.execute(
                    "SELECT id, started FROM alarms WHERE site = ? AND subject = ? AND kind = ? AND ended >= ? "
                    "ORDER BY id DESC LIMIT 1", (c.site, c.subject, c.kind, recent)).fetchone()
                if again:
                    id_, started = again
                    self._db.execute("UPDATE alarms SET ended = NULL WHERE id = ?", (id_,))
                else:
                    started = ts
                    id_ = self._db.execute(
                        "INSERT INTO alarms (site, subject, kind, detail, started) VALUES (?,?,?,?,?)",
                        (c.site, c.subject, c.kind, c.detail, ts)).lastrowid
                changes.append({"id": id_, "site": c.site, "subject": c.subject, "kind": c.kind,
                                "detail": c.detail, "started": started, "ended": None})
        return changes

    def close(self) -> None:
        self._db.close()
