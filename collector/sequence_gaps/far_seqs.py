"""Far seqs: a seq beyond what its epoch makes plausible is stored, held and named, not followed.

Bounded against a broken or hostile gateway (one with a valid password can publish any seq): a seq
more than ``MAX_AHEAD`` beyond what its epoch's seqs so far make plausible (``limit``: the epoch's
floor, twice the seqs followed, and the readings the gateway's status says its outbox cap dropped)
is stored and acknowledged like any other, but not followed, so the seqs between are not judged as
gaps. It is held (the first ``FAR_HELD`` per epoch, each written as a block of its own, so that a
restarted collector holds them again) until the epoch's bound reaches it (a young epoch whose live
lane overtook a longer backlog), and a ``jump`` finding names the gateway, epoch and seqs, logged
as a WARNING when new, resolved, and each time its count grew tenfold; it is resolved once every
held seq has been followed. So a seq of 2**62 costs no false gap of 2**62 seqs, and seqs 4,096
apart cost a block each only within that bound and for the ``FAR_HELD`` held.

Across collectors (a shared subscription, restarts) an epoch may have several open jump findings,
each of the collector that met its seqs first. A collector holding seqs learns at each refresh what
the store holds up to the bound (``_catch_up``: the other may have stored the whole backlog), and
one that meets a gateway (or, later, a new epoch of it) resolves the open findings it does not
continue too, as the store holds them then, once its bound reaches their highest seq
(``_resolve_others``): every seq one names was held, so is stored; one with readings not held stays
open. Two collectors may continue one finding (both restarted): each writes it merged with the
store's version (``_current``), so neither drops the seqs the other named in it, nor resolves it
while the other holds a seq beyond its bound.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from collector.sequence_gaps.own_blocks import _Own
from contract.message import MAX_AHEAD, MAX_SEQ
from contract.store import BLOCK_SEQS, SeqBlock, SequenceFinding

if TYPE_CHECKING:  # annotations only: epoch.py imports this module
    from collector.sequence_gaps.epoch import _Epoch

log = logging.getLogger(__package__)

#: seqs beyond ``MAX_AHEAD`` held per epoch (the first met) until the epoch's bound reaches them; each
#: is written to the store as a block of its own, so a restarted collector holds them again
FAR_HELD = 1024


def other_jump(f: SequenceFinding, gateway: str, epoch: str, track: _Epoch) -> bool:
    """Whether ``f`` is an open jump finding of the epoch that ``track`` does not continue, which a
    collector meeting the epoch resolves once its bound reaches its last seq (``_Epoch.others``); one
    with readings not held is never resolved."""
    return ((f.kind, f.gateway, f.epoch, f.resolved, f.explained) == ("jump", gateway, epoch, None, 0)
            and (track.jump is None or track.jump.first != f.first))


def _span(a: dt.datetime | None, b: dt.datetime | None, pick) -> dt.datetime | None:
    """The earlier (``pick`` ``min``) or later (``max``) of two times, either of which may be unknown."""
    return pick(a, b) if a is not None and b is not None else a or b


class _FarEpoch:
    """The bound of an epoch's seqs followed (``_Epoch.far``, ``jump`` and ``far_*`` hold what it met beyond)."""

    def limit(self) -> int:
        """The highest seq followed (but for what the outbox dropped): ``MAX_AHEAD`` beyond the
        floor and twice the seqs held (a sender without epochs is followed from its first seq)."""
        base = self.floor if self.floor is not None else self.runs[0].first if self.runs else None
        return MAX_SEQ if base is None else base + 2 * self.known + MAX_AHEAD


class _FarSeqs:
    """Of ``SequenceGaps``: the readings of an epoch beyond its bound, held and named in its ``jump`` finding."""

    def _limit(self, site: str, gateway: str, epoch: str, track: _Epoch) -> int:
        """The highest seq of an epoch followed: its ``limit``, and beyond it the readings the
        gateway's status says its outbox cap dropped (they never come)."""
        status = self._status.get((site, gateway))
        return track.limit() + (status["dropped"] if status and status["epoch"] in (None, epoch) else 0)

    def _far(self, site: str, gateway: str, epoch: str, track: _Epoch, seq: int, ts: dt.datetime) -> bool:
        """A stored reading whose seq is beyond what its epoch makes plausible: held (unless
        ``FAR_HELD`` were), and named. Whether it is newly held (its block to be written)."""
        j = track.jump
        if j is None or j.resolved:
            j = SequenceFinding("jump", site, gateway, epoch, seq, seq, dt.datetime.now(dt.UTC), "", start=ts, end=ts)
            track.far_count = track.jump_logged = 0
        i = bisect.bisect_left(track.far, (seq,))
        if i < len(track.far) and track.far[i][0] == seq:
            return False  # held already (a redelivery, or read back from the store)
        track.far_count += 1
        held = len(track.far) < FAR_HELD  # the first met: the lowest would cost a block write a reading
        if held:
            track.far.insert(i, (seq, ts))
        else:
            track.far_dropped += 1
        j = replace(j, last=max(j.last, seq), start=min(j.start, ts), end=max(j.end, ts))
        highest = track.highest()
        cause = (f"{track.far_count} reading(s) of epoch {epoch or '(none)'} with seqs {j.first} (the first) up to "
                 f"{j.last}, beyond seq {self._limit(site, gateway, epoch, track)} (the epoch's floor, twice the "
                 f"{track.known} seqs followed, {MAX_AHEAD} and the readings its outbox dropped; highest followed "
                 f"{highest[0] if highest else 'none'}): stored and acknowledged, but their seqs are not followed "
                 "until the epoch's seqs reach them (a broken or hostile gateway, or a store that never saw the start "
                 "of this epoch); the seqs between are not judged as gaps")
        if track.far_dropped:
            cause += (f"; {track.far_dropped} of them not held (only the first {FAR_HELD} are): should the "
                      "epoch's seqs reach them, a gap over them may hold stored readings")
        # ``explained``: the readings not held, read back by a restarted collector (the finding stays open)
        track.jump = replace(j, cause=cause, explained=track.far_dropped)
        self._jumps.add((site, gateway, epoch))
        return held

    def _reach(self, site: str, gateway: str, epoch: str, track: _Epoch) -> None:
        """Follow the held seqs the epoch's bound now reaches: its jump finding is resolved once every
        seq it named is followed, and the others' (``_Epoch.others``) once the bound reaches their last."""
        while track.far and track.far[0][0] <= self._limit(site, gateway, epoch, track):
            self._follow(site, gateway, epoch, track, *track.far.pop(0))
            if not track.far and not track.far_dropped:
                track.jump = replace(track.jump, resolved=dt.datetime.now(dt.UTC))
                self._jumps.add((site, gateway, epoch))
        if track.others and min(track.others.values()) <= self._limit(site, gateway, epoch, track):
            self._resolve_others(site, gateway, epoch, track)

    def _resolve_others(self, site: str, gateway: str, epoch: str, track: _Epoch) -> None:
        """Resolve the others' jump findings whose last seq the epoch's bound reaches, as the store holds
        them now (their collector may have named more seqs in one since, or resolved it). Every seq one
        names is stored, as each was held (``explained`` 0) and a held seq's block is written before its
        finding; and every one is within the bound now: followed, or read from the store as a hole is."""
        limit, others = self._limit(site, gateway, epoch, track), {}
        for f in self.store.sequence_findings(site, gateway=gateway, epoch=epoch, kind="jump"):
            if (f.kind, f.gateway, f.epoch, f.resolved, f.explained) != ("jump", gateway, epoch, None, 0) \
                    or f.first not in track.others:
                continue
            if f.last > limit:
                others[f.first] = f.last
                continue
            self.store.record_finding(replace(f, resolved=dt.datetime.now(dt.UTC)))
            log.warning("site %s: gateway %s: %s; all of them followed now", site, gateway, f.cause)
        track.others = others

    def _catch_up(self, site: str, gateway: str, epoch: str, track: _Epoch) -> None:
        """Of an epoch with seqs held or others' jump findings open: learn what the store holds above
        the highest seq followed up to the bound, and follow what that brings within it. On a shared
        subscription the other collector may store the whole backlog below them, and this one meet no
        other seq of the epoch. A read a refresh, and one more each time what it read raised the bound."""
        while True:
            limit = self._limit(site, gateway, epoch, track)
            top = track.runs[-1].last if track.runs else track.floor or 0
            ranges = [r for r in self._read_ranges(site, gateway, epoch, top // BLOCK_SEQS, limit // BLOCK_SEQS)
                      if r.first <= limit]  # beyond: another's held seqs, not followed yet
            if ranges:
                track.reshaped = True
                track.set_runs(self._merged(track.runs, ranges))
            self._reach(site, gateway, epoch, track)
            if not track.runs or track.runs[-1].last <= top or not (track.far or track.others):
                return

    def _far_block(self, site: str, gateway: str, epoch: str, seq: int, ts: dt.datetime) -> SeqBlock:
        """The block of a held seq, under a writer of its own (a store that cannot merge on write
        keeps each), so that a restarted collector finds it and holds it again (``_hold_beyond``)."""
        own = _Own()
        own.add(seq, ts)
        return SeqBlock(site, gateway, epoch, seq // BLOCK_SEQS, int.from_bytes(own.bits, "little"), own.times(),
                        f"{self._writer}.far{seq}")

    def _hold_beyond(self, site: str, gateway: str, epoch: str, track: _Epoch) -> None:
        """Hold again the seqs read from the store beyond the epoch's bound (held by a collector
        before, ``_far_block``), and its open jump finding: they are followed once the epoch's
        seqs reach them, as if this collector had met them."""
        runs, beyond = track.runs, []
        while runs and runs[-1].first > self._limit(site, gateway, epoch, track):
            beyond.append(runs.pop())
            track.known -= beyond[-1].last - beyond[-1].first + 1
        if not beyond:
            return
        if track.jump is None:
            track.jump = max((f for f in self.store.sequence_findings(site, gateway=gateway, epoch=epoch, kind="jump")
                              if f.resolved is None), key=lambda f: f.noticed, default=None)
            track.far_dropped = track.jump.explained if track.jump else 0
        for run in reversed(beyond):
            last = min(run.last, run.first + FAR_HELD)  # the rest of a longer run cannot be held
            for seq in range(run.first, last + 1):
                self._far(site, gateway, epoch, track, seq, run.first_ts if seq == run.first else run.last_ts)
            track.far_count += run.last - last
            track.far_dropped += run.last - last
            track.jump = replace(track.jump, explained=track.far_dropped)
        track.reshaped = True

    def _current(self, site: str, gateway: str, epoch: str,
                 track: _Epoch) -> tuple[SequenceFinding, SequenceFinding | None]:
        """An epoch's jump finding as the store is to hold it now, and as it holds it. Two collectors may
        continue one finding (both restarted, ``_hold_beyond``), each with a copy of its own, and the
        other may have named more seqs in it (or readings not held) since this one read it: so it is read
        again and the two merged (the highest last, the most readings not held). This collector resolves
        it only if its bound reaches that last and every reading was held; else it stays open."""
        j = track.jump
        s = next((f for f in self.store.sequence_findings(site, gateway=gateway, epoch=epoch, kind="jump")
                  if f.first == j.first), None)
        if s is None or s.resolved is not None or s == j:  # resolved: every seq its copy named is followed
            return j, s
        ours = (j.last, j.explained) >= (s.last, s.explained)
        j = replace(j, last=max(j.last, s.last), noticed=s.noticed, start=_span(j.start, s.start, min),
                    end=_span(j.end, s.end, max), explained=max(j.explained, s.explained),
                    cause=j.cause if ours else s.cause)
        if j.resolved is not None and (j.explained or j.last > self._limit(site, gateway, epoch, track)):
            j = replace(j, resolved=None)
        return j, s

    def _write_jump(self, site: str, gateway: str, epoch: str) -> None:
        """Write an epoch's jump finding (``_current``); log it when new, resolved, and each time its
        count grew tenfold. One another collector named seqs in beyond the bound stays open: this
        collector, which follows all it held, resolves it as another's (``others``) once the bound
        reaches its last (never, with readings not held)."""
        track = self._gateways[(site, gateway)][epoch]
        j, stored = self._current(site, gateway, epoch, track)
        if j != stored:
            self.store.record_finding(j)
        self._jumps.discard((site, gateway, epoch))
        if track.jump.resolved and not j.resolved:
            track.jump = None
            if not j.explained:
                track.others[j.first] = j.last
        elif j.resolved or track.far_count >= 10 * track.jump_logged:
            track.jump_logged = track.far_count
            log.warning("site %s: gateway %s: %s%s", site, gateway, j.cause,
                        "; all of them followed now" if j.resolved else "")
