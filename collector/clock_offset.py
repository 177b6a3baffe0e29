"""Each gateway's clock against the collector's: readings stamped by a wrong clock are flagged.

A reading's *offset* is its stamp minus the time the collector received it [s]. Delivery
only ever lowers it (a reading is received after it was taken), so it is a lower bound of
how far the gateway's clock is ahead:

* one offset above ``+bound_s`` proves the clock ahead;
* one offset within ``±bound_s`` proves the clock not behind by more than the bound;
* an offset below ``-bound_s`` alone proves nothing: a backlog, or the broker's queue
  while the collector was away, delivers readings hours late with right stamps.

A clock behind is told from a late delivery by time. A gateway's live lane sends each
reading as it is polled, so with a right clock an offset near 0 comes within a poll
interval; a late delivery that drains catches up, so its highest offset rises. A clock
behind keeps the same offset. So the clock is behind when, for ``window_s`` of receipt
time, every reading is more than ``bound_s`` behind and the highest offset among them
moves by less than half the bound. (A collector lagging its input by a steady amount
larger than the bound for that long looks the same: its readings are then flagged too,
the conservative side.)

An episode is recorded in the store as ``SequenceFinding`` kind ``clock``, one per run of
seqs of an epoch: seqs ``first``..``last`` received while the clock was suspect or wrong,
``start``..``end`` the range of their stamps, ``noticed`` the receipt of the first of
them, ``resolved`` when the clock was seen right again; the cause names the offset. Every
reading received meanwhile is covered, a backlog among them too: which of them were
stamped by the wrong clock is unknown, so all are treated as such. The finding is
updated after each batch, before the batch is acknowledged; a collector that meets a
gateway whose episode the store holds open (after a restart, or on a shared subscription)
carries it on, so that the episode ends when the clock is right. Readings refused for their
stamps alone (before the site's commissioning, too far ahead) are evidence and covered
too: a box booted at 2000-01-01 sends only those. Retained or queued gateway
statuses are not used: their stamps say nothing of when they were sent.

Memory: a few numbers per gateway of the site files, and at most ``MAX_COVERS`` runs
per episode. Work: a subtraction and a few comparisons per reading; the store is asked
once per gateway met, and written only while a clock is wrong or has just been set right.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field

from contract.message import Reading
from contract.store import ReadingStore, SequenceFinding, StoreUnavailable
from contract.text import printable

log = logging.getLogger(__name__)

#: runs of seqs one episode follows; older ones, already in the store, are let go
MAX_COVERS = 16


@dataclass
class _Cover:
    """Readings of one epoch received while a gateway's clock was suspect or wrong."""

    epoch: str
    first: int
    last: int
    start: dt.datetime
    end: dt.datetime
    noticed: dt.datetime
    recorded: bool = False  # ``first`` is the finding's identity once recorded: it never changes after
    dirty: bool = True
    cause: str = ""  # as an earlier collector recorded it, while this one has seen no offset

    def takes(self, r: Reading) -> bool:
        return self.epoch == (r.epoch or "") and (not self.recorded or r.seq >= self.first)

    def add(self, r: Reading) -> None:
        if r.seq < self.first or r.seq > self.last or r.ts < self.start or r.ts > self.end:
            self.first, self.last = min(self.first, r.seq), max(self.last, r.seq)
            self.start, self.end = min(self.start, r.ts), max(self.end, r.ts)
            self.dirty = True


@dataclass
class _Clock:
    """What is known of one gateway's clock."""

    since: dt.datetime | None = None  # receipt of the first reading of the current suspicion window
    first_high: float = 0.0  # highest offset at the start of that window [s]
    high: float = 0.0  # highest offset since [s]
    offset: float | None = None  # an open episode's offset [s]; -inf: found open in the store, not seen yet
    told: bool = False  # the open episode was logged
    covers: list[_Cover] = field(default_factory=list)
    #: episodes that ended and are not yet marked resolved in the store: (when, offset, their covers)
    ended: list[tuple[dt.datetime, float, list[_Cover]]] = field(default_factory=list)

    def cover(self, r: Reading, received: dt.datetime) -> None:
        last = self.covers[-1] if self.covers else None  # the one a run of readings goes on taking
        c = last if last is not None and last.takes(r) else next((c for c in reversed(self.covers) if c.takes(r)), None)
        if c is None:
            c = _Cover(r.epoch or "", r.seq, r.seq, r.ts, r.ts, received)
            self.covers.append(c)
        c.add(r)

    @property
    def idle(self) -> bool:
        return self.offset is None and self.since is None and not self.covers and not self.ended


def describe(offset_s: float) -> str:
    """``3.0 h behind``, ``150 s ahead of``: an offset for people."""
    size = abs(offset_s)
    text = (f"{size / 86400:.1f} days" if size >= 2 * 86400 else f"{size / 3600:.1f} h" if size >= 3600
            else f"{size:.0f} s")
    return f"{text} {'ahead of' if offset_s > 0 else 'behind'}"


class ClockWatch:
    """Follows every gateway's clock; ``received`` with each batch's stored readings and
    their receipt times, after the store has them and before they are acknowledged."""

    def __init__(self, store: ReadingStore, bound_s: float, window_s: float):
        self.store = store
        self.bound_s = bound_s
        self.window_s = window_s
        self._clocks: dict[tuple[str, str], _Clock] = {}
        self._unwritten: set[tuple[str, str]] = set()  # gateways whose findings the store did not take

    def received(self, readings: list[tuple[Reading, dt.datetime]]) -> None:
        """Judge each reading's offset, then record what changed. Never raises: a finding
        the store did not take is written again after the next batch."""
        touched = self._unwritten
        self._unwritten = set()
        for r, at in readings:
            clock = self._clocks.get((r.site, r.gateway))
            if clock is None:  # the store is asked once per gateway (the sites' gateways, a bounded set)
                clock = self._clocks[(r.site, r.gateway)] = self._resume(r.site, r.gateway)
            self._judge(clock, r, at, (r.ts - at).total_seconds())
            touched.add((r.site, r.gateway))
        for site, gateway in touched:
            clock = self._clocks[(site, gateway)]
            if clock.idle:
                continue
            try:
                self._record(site, gateway, clock)
            except Exception as exc:  # bookkeeping must never stop ingestion
                if not isinstance(exc, StoreUnavailable):
                    log.error("clock bookkeeping failed: %s", printable(repr(exc)), exc_info=True)
                log.error("site %s: gateway %s: the clock finding is not stored yet (%s); writing it again with "
                          "the next batch", site, gateway, printable(str(exc)))
                self._unwritten.add((site, gateway))

    def _resume(self, site: str, gateway: str) -> _Clock:
        """A gateway met for the first time: an episode the store holds open (this collector
        restarted, or another one saw it) goes on, so that it is ended when the clock is right."""
        try:
            found = [f for f in self.store.sequence_findings(site, gateway=gateway, kind="clock") if f.resolved is None]
        except Exception as exc:
            log.error("site %s: gateway %s: open clock findings unreadable (%s): those are not ended by this "
                      "collector", site, gateway, printable(str(exc)))
            return _Clock()
        if not found:
            return _Clock()
        return _Clock(offset=-math.inf, told=True, covers=[
            _Cover(f.epoch, f.first, f.last, f.start or f.noticed, f.end or f.noticed, f.noticed, recorded=True,
                   dirty=False, cause=f.cause) for f in found[-MAX_COVERS:]])

    def _judge(self, clock: _Clock, r: Reading, at: dt.datetime, offset: float) -> None:
        if -self.bound_s <= offset <= self.bound_s:  # not behind: what was suspect was only late
            if clock.offset is not None:
                clock.ended.append((at, clock.offset, clock.covers))
                clock.offset, clock.told = None, False
            clock.since, clock.covers = None, []
            return
        clock.cover(r, at)
        if clock.offset is not None:  # an open episode: everything received meanwhile is covered
            clock.offset = max(clock.offset, offset)
            return
        if len(clock.covers) > MAX_COVERS:  # epoch after epoch, all far behind: no right clock does that
            clock.offset = clock.high
            return
        if offset > self.bound_s:  # no delay makes a stamp later than its receipt
            clock.offset = offset
            return
        if clock.since is None:
            clock.since, clock.first_high, clock.high = at, offset, offset
            return
        clock.high = max(clock.high, offset)
        if (at - clock.since).total_seconds() < self.window_s:
            return
        if clock.high - clock.first_high < self.bound_s / 2:
            clock.offset = clock.high  # the least behind is the nearest to the truth
        else:  # rising: a late delivery draining; look again over the next window
            clock.since, clock.first_high, clock.high = at, offset, offset

    def _record(self, site: str, gateway: str, clock: _Clock) -> None:
        """Write what changed of an episode that ended or is open; log its start and end once."""
        while clock.ended:
            at, offset, covers = clock.ended[0]
            for c in covers:
                self._write(site, gateway, c, offset, resolved=at)
            log.info("site %s: gateway %s: its clock is right again (%s)", site, gateway,
                     at.isoformat(timespec="seconds"))
            del clock.ended[0]
        if clock.offset is None:
            return
        for c in clock.covers:
            if c.dirty:
                cause = self._write(site, gateway, c, clock.offset)
                if not clock.told:
                    log.warning("site %s: %s", site, cause)
                    clock.told = True
        if len(clock.covers) > MAX_COVERS:
            del clock.covers[:-MAX_COVERS]  # in the store already

    def _write(self, site: str, gateway: str, c: _Cover, offset: float, resolved: dt.datetime | None = None) -> str:
        cause = c.cause if not math.isfinite(offset) else (
            f"gateway {gateway}'s clock was {describe(offset)} the collector's (offset {offset:+.0f} s, "
            f"bound {self.bound_s:g} s): the readings received meanwhile, seqs {c.first}..{c.last} of "
            f"epoch {c.epoch or '(none)'} stamped {c.start.isoformat(timespec='seconds')} .. "
            f"{c.end.isoformat(timespec='seconds')}, are flagged: their stamps may not be when they were taken")
        self.store.record_finding(SequenceFinding("clock", site, gateway, c.epoch, c.first, c.last, c.noticed, cause,
                                                  start=c.start, end=c.end, resolved=resolved))
        c.recorded, c.dirty = True, False
        return cause
