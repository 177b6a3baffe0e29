"""Gaps along each gateway's sequence: seqs that never arrive, and new sequence epochs.

Every gateway numbers its messages 1, 2, 3, ... within an epoch (a new or emptied
outbox starts a new one). Seqs arrive out of order (the live lane overtakes the
backlog, a shared subscription splits the stream across collectors, the broker
redelivers), so a missing seq is only suspected at first. A hole still open after
``grace_s`` is checked against the store, which holds, per block of ``BLOCK_SEQS`` seqs,
a bitmap of the seqs each collector stored (``ReadingStore.record_seq_blocks``): what no
collector stored is recorded as a gap finding, with the gateway's ``outbox_dropped``
counter as its cause when that accounts for it, and its ``outbox_unused`` ranges (seqs it
left unused after an unclean stop) for the seqs they hold. The store is the source of truth, so a
restarted collector, or a second one on the shared subscription, neither raises a false
gap nor forgets a real one.

A reading of an epoch this gateway never used before, when it used another, is recorded
at once as an epoch finding and logged as a WARNING: the readings of the old epoch after
its highest seq that had not arrived are lost.

Bounded on purpose: the store is read only for the blocks of the holes being checked, and
what a seq may cost is bounded against a broken or hostile gateway too; each bound is a part
of ``SequenceGaps`` in a file of its own (``marks``, ``own_blocks``, ``far_seqs``,
``epoch_churn``, ``holes_cap``: see the package's ``__init__``).

The work per message is a dictionary look-up and, in order, one comparison and a bit set;
the store is asked once per batch (the blocks touched) and once per gateway with an old hole,
and takes the marks moved at most every ``MARK_EVERY_S``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import operator
import secrets
import time
from dataclasses import replace

from collector.sequence_gaps import holes_cap
from collector.sequence_gaps.epoch import _Epoch
from collector.sequence_gaps.epoch_churn import _Churn, _EpochChurn
from collector.sequence_gaps.far_seqs import _FarSeqs, other_jump
from collector.sequence_gaps.holes_cap import _HolesCap
from collector.sequence_gaps.marks import _Marks
from collector.sequence_gaps.own_blocks import _OwnBlocks
from collector.sequence_gaps.runs import _first, _Run
from contract import topics
from contract.message import MAX_SEQ, Reading
from contract.store import (BLOCK_SEQS, ReadingStore, ReadUnsupported, SeqBlock, SeqRange, SequenceFinding,
                            StoreUnavailable)
from contract.text import printable

def _unused(ranges: object) -> tuple[tuple[int, int], ...]:
    """A status's ``outbox_unused``: [first, last] seq ranges, at most ``MAX_UNUSED_RANGES``; anything
    else explains nothing, nor does a range longer than ``MAX_UNUSED_SEQS``."""
    if not isinstance(ranges, list) or len(ranges) > topics.MAX_UNUSED_RANGES:
        return ()
    if not all(isinstance(r, list) and len(r) == 2 and all(type(n) is int for n in r) and 1 <= r[0] <= r[1] <= MAX_SEQ
               for r in ranges):
        return ()
    return tuple((a, b) for a, b in ranges if b - a < topics.MAX_UNUSED_SEQS)


def _overlap(first: int, last: int, ranges: tuple[tuple[int, int], ...]) -> int:
    """How many seqs of the gap ``first``..``last`` the ranges left unused hold, of those wholly within it
    (the gateway's ranges do not overlap; counted at most once each anyway). A range the gap covers only
    in part had a seq received or stored beside the gap: the range was given to readings (the outbox was a
    backup of its last seconds), so it explains nothing."""
    held = sorted((a, b) for a, b in ranges if first <= a and b <= last)
    n, upto = 0, first - 1
    for a, b in held:
        a = max(a, upto + 1)
        if a <= b:
            n += b - a + 1
            upto = b
    return n


#: every module of the package logs as ``collector.sequence_gaps``: one name for operators to filter on
log = logging.getLogger(__package__)

#: readings whose seqs wait for the store to take the bookkeeping again
MAX_PENDING = 100_000
#: how often holes are looked at [s]
CHECK_EVERY_S = 1.0
#: how often a gateway with holes learns from the store what other collectors stored [s]: on a
#: shared subscription each collector sees part of the stream, and its own runs would pile up
REFRESH_S = 5.0


def _missing_since(before: list[tuple[int, int, float]], first: int, last: int, now: float) -> float:
    """Since when seqs first..last are missing: a hole that shrank (some of its seqs arrived)
    keeps the time of the holes it was part of. ``before``: (first, last, since), sorted."""
    i = bisect.bisect_right(before, (last, MAX_SEQ + 1))
    since = now
    while i > 0 and before[i - 1][1] >= first:  # the earlier holes overlapping first..last
        since = min(since, before[i - 1][2])
        i -= 1
    return since


class SequenceGaps(_Marks, _EpochChurn, _FarSeqs, _HolesCap, _OwnBlocks):
    """Follows the sequences of every gateway; ``stored`` after each batch is stored,
    ``on_status`` for each gateway status message, ``check`` now and then."""

    def __init__(self, store: ReadingStore, grace_s: float, clock=time.monotonic):
        self.store = store
        self.grace_s = grace_s
        self.clock = clock
        self._gateways: dict[tuple[str, str], dict[str, _Epoch]] = {}
        #: gateways the books knew before they started again (``_restart``), met again at the next check:
        #: one that sends nothing more would keep its holes not yet judged unjudged
        self._unmet: list[tuple[str, str]] = []
        self._unsaved: set[tuple[str, str, str, int]] = set()  # (site, gateway, epoch, block) to write
        self._jumps: set[tuple[str, str, str]] = set()  # (site, gateway, epoch) whose jump finding to write
        self._far_blocks: list[SeqBlock] = []  # of the seqs held since the blocks were last written
        self._churn: dict[tuple[str, str], _Churn] = {}  # gateways with epochs beyond ``MAX_EPOCHS``
        self._status: dict[tuple[str, str], dict] = {}
        self._refreshed: dict[tuple[str, str], float] = {}  # (site, gateway) -> when last refreshed
        self._next_check = 0.0
        self._next_mark = 0.0
        self.off = False  # the store cannot read the bookkeeping back (see ``stored``)
        self._refused = False  # the store refused the last ``stored`` (not a fault of ours)
        self._pending: list[Reading] = []  # stored, but their seqs not yet followed (the store refused)
        #: ``_pending`` as the write being staged found it, until it is ``settled`` (see ``staged``)
        self._staging: list[Reading] | None = None
        #: names this process's blocks in the store: a restarted collector must not replace what it
        #: wrote before (it no longer holds those seqs), nor another collector's
        self._writer = f"{time.time_ns():x}-{secrets.token_hex(4)}"

    # -- input ------------------------------------------------------------------------
    def on_status(self, site: str, gateway: str, body: dict) -> None:
        """Keep what the gateway's status says of its outbox (what explains a gap)."""
        dropped = body.get("outbox_dropped")
        if type(dropped) is int and dropped >= 0:
            epoch = body.get("epoch")
            self._status[(site, gateway)] = {"dropped": dropped, "epoch": epoch if isinstance(epoch, str) else None,
                                             "unused": _unused(body.get("outbox_unused"))}

    def stored(self, readings: list[Reading]) -> None:
        """Readings the store now has: follow their seqs, report new epochs, write the runs
        changed, name the seqs and epochs not followed (``_far``, ``_room``). Never raises: what the store did not take is done again with the next batch
        (at most ``MAX_PENDING`` readings are held for that); a store that cannot be read
        back at all turns the bookkeeping off, with one WARNING."""
        self._settle(self.staged(readings), written=False)

    def staged(self, readings: list[Reading]) -> list[SeqBlock]:
        """Readings a store is writing, called inside its write (``ReadingStore.write``'s ``books``):
        follow their seqs and return the blocks to record with them, so that the readings and their
        seqs' records are durable together or not at all; ``settled`` once the write returned. Called
        again for a write tried again: what the try before followed, and the findings it wrote, were
        rolled back with it, and the store may refuse other readings this time, so the books start
        again from the store, as a restarted collector's do (``_restart``). Never raises (as ``stored``)."""
        if self.off:
            return []
        if self._staging is not None:
            self._restart(self._staging)
        self._staging = list(self._pending)
        readings = self._pending + readings
        self._pending = []
        self._refused = False
        done = 0
        now = self.clock()
        try:
            for r in readings:
                epochs = self._gateways.get((r.site, r.gateway))
                if epochs is None:
                    epochs = self._load(r.site, r.gateway, now)
                epoch = r.epoch or ""
                track = epochs.get(epoch)
                if track is None:
                    if not self._room(r, epochs, now):
                        done += 1
                        continue
                    track = self._new_epoch(r, epochs, now)
                track.seen = now
                runs = track.runs  # up to the highest seq followed and one more, nothing to weigh
                if (not runs or r.seq > runs[-1].last + 1) and r.seq > self._limit(r.site, r.gateway, epoch, track):
                    if self._far(r.site, r.gateway, epoch, track, r.seq, r.ts):
                        self._far_blocks.append(self._far_block(r.site, r.gateway, epoch, r.seq, r.ts))
                else:
                    self._follow(r.site, r.gateway, epoch, track, r.seq, r.ts)
                    self._reach(r.site, r.gateway, epoch, track)
                done += 1
        except Exception as exc:
            self._failed(exc, readings[done:])
        return self._blocks()

    def settled(self, blocks: list[SeqBlock]) -> None:
        """The blocks ``staged`` returned are durable with their readings: the rest of the books
        (jump and churn findings, the holes' check). Never raises (as ``stored``)."""
        self._settle(blocks, written=True)

    def _settle(self, blocks: list[SeqBlock], written: bool) -> None:
        self._staging = None
        if self.off:
            return
        try:
            if blocks:
                if not written:
                    self.store.record_seq_blocks(blocks)
                self._blocks_written()
            while self._jumps:
                self._write_jump(*next(iter(self._jumps)))
            for churn in self._churn.values():
                if churn.dirty:
                    churn.write(self.store)
            if self.clock() >= self._next_check:
                self._next_check = self.clock() + CHECK_EVERY_S
                self.check()
        except Exception as exc:
            self._failed(exc, [])

    def _restart(self, pending: list[Reading]) -> None:
        """Forget all but what the store holds, the gateways' statuses and the readings ``pending``
        (stored by an earlier write, their seqs not followed yet): under a new writer name, as the
        seqs this process held for its blocks may have gone with the rollback."""
        fresh = vars(SequenceGaps(self.store, self.grace_s, self.clock))
        del fresh["_status"]  # the same dict kept: ``on_status`` is called from the MQTT thread
        # each gateway once in ``_unmet``, however many retries before a check succeeds
        vars(self).update(fresh, _pending=pending, _unmet=list(dict.fromkeys([*self._unmet, *self._gateways])))

    def _failed(self, exc: Exception, left: list[Reading]) -> None:
        """The books could not be kept: ``left``, the readings whose seqs were not followed, are
        followed with the next batch; a store that cannot read the books back turns them off."""
        if isinstance(exc, ReadUnsupported):
            log.warning("sequence gaps are not followed: the store cannot read its bookkeeping back: %s",
                        printable(str(exc)))
            self.off, self._pending = True, []
            return
        if not isinstance(exc, StoreUnavailable):  # bookkeeping must never stop ingestion
            log.error("sequence bookkeeping failed: %s", printable(repr(exc)), exc_info=exc)
        self._pending += left
        self._refused = isinstance(exc, StoreUnavailable)
        if len(self._pending) > MAX_PENDING:
            log.error("sequence bookkeeping: dropping %d readings' seqs held too long; their seqs may "
                      "show as false gaps", len(self._pending) - MAX_PENDING)
            del self._pending[:-MAX_PENDING]
        log.error("sequence bookkeeping: %s; %d readings' seqs held for the next batch",
                  printable(str(exc)), len(self._pending))

    def _follow(self, site: str, gateway: str, epoch: str, track: _Epoch, seq: int, ts: dt.datetime) -> None:
        block = track.add(seq, ts)
        if block is not None:
            self._unsaved.add((site, gateway, epoch, block))
            if track.recorded and track.is_recorded(seq, seq):
                self._resolve(site, gateway, epoch, track, seq)

    def save(self) -> None:
        """Write the bookkeeping ``stored`` could not write yet: called before the readings are
        acknowledged, as a gateway deletes what is acknowledged and a broker no longer redelivers
        it, so seqs the bookkeeping never learnt would be a false gap after a restart. Raises
        ``StoreUnavailable`` while the store refuses it (a fault of ours holds nothing up)."""
        if (self._pending or self._unsaved or self._far_blocks or self._jumps
                or any(c.dirty for c in self._churn.values())):
            self.stored([])
            if self._refused and (self._pending or self._unsaved or self._far_blocks or self._jumps
                                  or any(c.dirty for c in self._churn.values())):
                raise StoreUnavailable("the sequence bookkeeping of stored readings is not written yet")

    def _epoch(self, r: Reading, epochs: dict[str, _Epoch]) -> _Epoch:
        epoch = r.epoch or ""
        # another collector on the shared subscription may have met it, or stored more of the one before
        latest = max(((t.highest()[1], e) for e, t in epochs.items() if t.highest()), default=(None, None))[1]
        self._learn(r.site, r.gateway, epochs, only={epoch, latest})
        found = self.store.sequence_findings(r.site, gateway=r.gateway, epoch=epoch)
        told = any(f.kind == "epoch" for f in found)
        before = [(e, t.highest()) for e, t in epochs.items() if e != epoch and t.highest()]
        if told or epoch in epochs:
            pass  # reported, or already stored by another collector
        elif not before:
            log.info("gateway %s of site %s: first sequence epoch %s", r.gateway, r.site, epoch or "(none)")
        else:
            previous, (seq, ts) = max(before, key=lambda b: b[1][1])  # the epoch it last used
            cause = (f"gateway {r.gateway} started a new sequence epoch {epoch or '(none)'} after "
                     f"{previous or '(none)'} at seq {seq}: readings of {previous or '(none)'} after {seq} not "
                     "received are lost (a new or emptied outbox)")
            log.warning("site %s: %s", r.site, cause)
            self.store.record_finding(SequenceFinding("epoch", r.site, r.gateway, epoch, seq, seq,
                                                      dt.datetime.now(dt.UTC), cause, previous=previous, start=ts,
                                                      end=r.ts))
        # only now: should the store refuse the finding, the next attempt reports the epoch again
        track = epochs.setdefault(epoch, _Epoch(floor=1 if epoch else None))
        # met after the gateway was loaded: the others' open jump findings of it, as ``_load`` learns them
        track.others.update((f.first, f.last) for f in found if other_jump(f, r.gateway, epoch, track))
        return track

    def _resolve(self, site: str, gateway: str, epoch: str, track: _Epoch, seq: int) -> None:
        """A seq arrived inside a recorded gap: if the whole gap has now arrived, say so."""
        f = track.recorded[track.recorded_first(seq)]
        if f.resolved is None:
            i = bisect.bisect_right(track.runs, seq, key=_first) - 1
            if i >= 0 and track.runs[i].first <= f.first and f.last <= track.runs[i].last:
                self._arrived(site, gateway, epoch, track, f)
            elif f.first not in track.open:
                # a gap not looked for (below the mark this process met the gateway at, or one of more
                # than ``OPEN_GAPS``): the seqs of it that arrived before, or at another collector, are
                # in the store, not in our runs
                track.look_for(f.first, f.last)

    def _arrived(self, site: str, gateway: str, epoch: str, track: _Epoch, f: SequenceFinding) -> None:
        """Every seq of the recorded gap ``f`` is in the store now: say so."""
        done = replace(f, resolved=dt.datetime.now(dt.UTC))
        self.store.record_finding(done)
        track.record(done)
        track.open.pop(f.first, None)
        log.info("site %s: gateway %s: seqs %d..%d of epoch %s arrived after all",
                 site, gateway, f.first, f.last, epoch or "(none)")

    # -- holes ------------------------------------------------------------------------
    def check(self) -> None:
        """Record as gaps the holes missing for longer than the grace period and absent
        from the store, and move the marks over what is judged. Raises ``StoreUnavailable``."""
        now = self.clock()
        while self._unmet:
            if self._unmet[-1] not in self._gateways:
                self._load(*self._unmet[-1], now)
            self._unmet.pop()
        marks = []
        for (site, gateway), epochs in self._gateways.items():
            oldest = self._suspect(epochs, now)
            marks += self._judged(site, gateway, epochs)
            self._log_unlogged(site, gateway, epochs, now)
            if oldest is None and not any(track.open or track.far or track.others for track in epochs.values()):
                continue
            if now - self._refreshed.get((site, gateway), -REFRESH_S) >= REFRESH_S:
                self._refresh(site, gateway, epochs)
                self._refreshed[(site, gateway)] = now
                oldest = self._suspect(epochs, now)
            if oldest is not None and now - oldest >= self.grace_s:
                self._record_gaps(site, gateway, epochs, now)
        while self._jumps:  # resolved by what ``_refresh`` learnt
            self._write_jump(*next(iter(self._jumps)))
        self._write_marks(marks, now)

    def _suspect(self, epochs: dict[str, _Epoch], now: float) -> float | None:
        """Note since when each hole not yet recorded is missing; return the earliest such
        time (None: no hole). Called every ``CHECK_EVERY_S``, and on a shared subscription
        there is a hole for every seq the other collector took since the last refresh: so
        while no hole changed, only the holes above those suspected are looked at (new ones),
        and otherwise each hole costs a dictionary look-up in the usual cases."""
        oldest = None
        for track in epochs.values():
            if track.reshaped:
                self._suspect_all(track, now)
            else:
                self._suspect_new(track, now)
            if track.oldest is not None and (oldest is None or track.oldest < oldest):
                oldest = track.oldest
        return oldest

    @staticmethod
    def _suspect_all(track: _Epoch, now: float) -> None:
        """Every hole: one seen before keeps its time, and so does what is left of its start
        (seqs only ever arrive, so a hole only shrinks or splits); one above all those seen
        before is new."""
        before = track.suspected  # ascending by first seq: built here, from ``holes()``, in order
        top = before[next(reversed(before))][0] if before else 0
        ordered = None
        track.suspected = suspected = {}
        track.oldest = None
        for first, last, *_ in track.holes():
            if track.covered(first, last):
                continue
            seen = before.get(first)
            if seen is not None and seen[0] >= last:  # inside the hole seen before, which no other overlaps
                since = seen[1]
            elif first > top:
                since = now
            else:
                if ordered is None:
                    ordered = [(f, last_, t) for f, (last_, t) in before.items()]
                since = _missing_since(ordered, first, last, now)
            suspected[first] = (last, since)
            if track.oldest is None or since < track.oldest:
                track.oldest = since
        track.reshaped = False
        track.looked = track.runs[-1].first if track.runs else 0

    @staticmethod
    def _suspect_new(track: _Epoch, now: float) -> None:
        """The holes above those looked at, while no hole changed: new, below the runs
        appended above the highest."""
        # a hole a seq on a shared subscription (every other one): the loop is kept to a few look-ups
        runs, new, looked, floor = track.runs, [], track.looked, track.floor or 0
        covered = track.covered if track.recorded or track.swamps else None  # else nothing covers a hole
        i = len(runs) - 1
        while i > 0 and (first := runs[i - 1].last + 1) > looked:
            last = runs[i].first - 1
            if first < floor:
                first = floor
            if first <= last and not (covered and covered(first, last)):
                new.append((first, last))
            i -= 1
        for first, last in reversed(new):
            track.suspected[first] = (last, now)
        if new and track.oldest is None:
            track.oldest = now
        track.looked = runs[-1].first if runs else 0

    def _refresh(self, site: str, gateway: str, epochs: dict[str, _Epoch]) -> None:
        """Merge in what the store holds of the blocks of the holes suspected and of the gaps
        recorded still open: what other collectors (or this one before a restart) stored; and
        of an epoch with seqs held or jump findings open, up to its bound (``_catch_up``)."""
        for epoch, track in epochs.items():
            spans: list[list[int]] = []  # of blocks, joined where they touch (a hole may span 2**51 blocks)
            for first, last in sorted([(f, la) for f, (la, _) in track.suspected.items()] + list(track.open.items())):
                lo, hi = first // BLOCK_SEQS, last // BLOCK_SEQS
                if spans and lo <= spans[-1][1] + 1:
                    spans[-1][1] = max(spans[-1][1], hi)
                else:
                    spans.append([lo, hi])
            stored = [r for lo, hi in spans for r in self._read_ranges(site, gateway, epoch, lo, hi)]
            if stored:
                track.reshaped = True
                track.set_runs(self._merged(track.runs, stored))
                track.forget_covered(b for s, g, e, b in self._unsaved if (s, g, e) == (site, gateway, epoch))
                for first in list(track.open):
                    self._resolve(site, gateway, epoch, track, first)
            if track.far or track.others:
                self._catch_up(site, gateway, epoch, track)

    @staticmethod
    def _merged(runs: list[_Run], ranges: list[SeqRange]) -> list[_Run]:
        """Our runs and the store's ranges of one epoch, joined where they overlap or touch
        (one sweep, as both may be long). Ours come first where both start alike: their
        times are the readings', the store's may be bounds."""
        items = sorted([(r.first, 0, r) for r in runs] + [(r.first, 1, r) for r in ranges], key=operator.itemgetter(0, 1))
        out: list[_Run] = []
        for _, _, r in items:
            p = out[-1] if out else None
            if p is not None and r.first <= p.last + 1:
                if r.last > p.last:
                    p.last, p.last_ts = r.last, r.last_ts
            else:
                out.append(_Run(r.first, r.last, r.first_ts, r.last_ts))
        return out

    def _record_gaps(self, site: str, gateway: str, epochs: dict[str, _Epoch], now: float) -> None:
        if self._refreshed.get((site, gateway)) != now:
            self._refresh(site, gateway, epochs)
        for epoch, track in epochs.items():
            swamped: list[tuple[int, int, _Run | None, _Run]] = []  # holes due beyond ``MAX_GAPS``
            learnt = False
            for first, last, before, after in track.holes():
                noticed = track.suspected.get(first, (0, None))[1]
                if noticed is None or now - noticed < self.grace_s or track.covered(first, last):
                    continue
                if not learnt:
                    learnt = True
                    self._learn_gaps(site, gateway, epoch, track)
                    if track.covered(first, last):
                        continue
                if len(track.recorded) >= holes_cap.MAX_GAPS:
                    swamped.append((first, last, before, after))
                    continue
                f = SequenceFinding("gap", site, gateway, epoch, first, last, dt.datetime.now(dt.UTC), "",
                                    start=before.last_ts if before else None, end=after.first_ts)
                f = self._explain(f, track)
                self.store.record_finding(f)
                track.record(f)
                track.look_for(first, last)
                track.reshaped = True
                del track.suspected[first]
                self._log_gap(site, gateway, track, f.cause, now)
            if swamped:
                self._record_holes(site, gateway, epoch, track, swamped, now)

    def _learn_gaps(self, site: str, gateway: str, epoch: str, track: _Epoch) -> None:
        """Take the gaps of the epoch that other collectors (or this one before its books started
        again) recorded since this one met the gateway: a hole inside one is not a gap of its own
        (its seqs would be counted missing twice), and the late seqs of one still open may reach
        both collectors, neither holding them all, so it is looked for in the store as our own are."""
        for f in self.store.sequence_findings(site, gateway=gateway, epoch=epoch, kind="gap"):
            if not track.overlaps(f.first, f.last):
                track.record(f)
                track.reshaped = True
                if f.resolved is None:
                    track.look_for(f.first, f.last)

    def _explain(self, f: SequenceFinding, track: _Epoch) -> SequenceFinding:
        """Say what the gap is, and how much of it the gateway's outbox cap and the seqs it left unused
        account for."""
        n = f.last - f.first + 1
        what = (f"seqs {f.first}..{f.last} of epoch {f.epoch or '(none)'} missing ({n} reading(s)), not received "
                f"within {self.grace_s:g} s and not in the store")
        status = self._status.get((f.site, f.gateway))
        dropped = 0
        unused = status["unused"] if status and status["epoch"] == f.epoch else ()
        skipped = _overlap(f.first, f.last, unused)
        if status and status["epoch"] in (None, f.epoch):
            accounted = sum(max(0, g.explained - _overlap(g.first, g.last, unused)) for g in track.recorded.values())
            dropped = max(0, min(n - skipped, status["dropped"] - accounted))
        if skipped:
            said = ("left unused by the gateway, which skips the seqs it had reserved when it starts again after a "
                    "stop that was not clean followed by a restart of its machine (a power cut): no reading was given "
                    "them, unless its outbox was then replaced by a backup of its last seconds")
            rest = n - skipped
            cause = (f"{what}: {said}" if not rest else
                     f"{what}: {skipped} of them {said}; the other {rest} " + (
                         f"explained by the gateway's outbox cap ({status['dropped']} readings dropped)"
                         if dropped == rest else
                         f"{dropped} explained by the gateway's outbox cap ({status['dropped']} readings dropped), "
                         "the rest lost on the way (broker or network)" if dropped else
                         "not explained by the gateway's outbox counters, so lost on the way"))
            return replace(f, cause=cause, explained=skipped + dropped)
        if dropped == n:
            cause = f"{what}: explained by the gateway's outbox cap: {status['dropped']} readings dropped"
        elif dropped:
            cause = (f"{what}: {dropped} of them explained by the gateway's outbox cap "
                     f"({status['dropped']} readings dropped); the rest were lost on the way (broker or network)")
        else:
            cause = (f"{what}: not explained by the gateway's outbox counters, so lost on the way (a broker that "
                     "lost messages it had acknowledged, or a cleared session); a lost reading may be a lost "
                     "counter value: totals over the gap come from the counters either side")
        return replace(f, cause=cause, explained=dropped)
