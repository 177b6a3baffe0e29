"""What a collector knows of one epoch of a gateway: its runs of stored seqs and the holes between.

Seqs arrive out of order (the live lane overtakes the backlog, a shared subscription splits the
stream across collectors, the broker redelivers), so a missing seq is only suspected at first: each
hole keeps since when its seqs are missing, until it is recorded as a gap (``gaps``) or filled. The
epoch is made of one part per bound it keeps (``far_seqs``, ``holes_cap``, ``own_blocks``); its
fields are all here, each saying what it is for.
"""

from __future__ import annotations

import bisect
import datetime as dt
from dataclasses import dataclass, field

from collector.sequence_gaps.far_seqs import _FarEpoch
from collector.sequence_gaps.holes_cap import _Holes, _HolesEpoch
from collector.sequence_gaps.own_blocks import _Own, _OwnEpoch
from collector.sequence_gaps.runs import _first, _Run
from contract.message import MAX_SEQ
from contract.store import SequenceFinding

#: gaps recorded that a collector looks for in the store until they arrive (the newest of each
#: epoch): on a shared subscription their late seqs may reach the other collector only, or be split
#: between both
OPEN_GAPS = 16


@dataclass
class _Epoch(_FarEpoch, _HolesEpoch, _OwnEpoch):
    """What this collector knows of one epoch of a gateway: runs of stored seqs (sorted,
    disjoint, not touching), when each hole was first suspected, the gaps recorded, and the
    seqs it stored itself, by block, until the store's union covers their block."""

    runs: list[_Run] = field(default_factory=list)
    own: dict[int, _Own] = field(default_factory=dict)
    #: hole's first seq -> (its last seq, monotonic time since when its seqs are missing)
    suspected: dict[int, tuple[int, float]] = field(default_factory=dict)
    recorded: dict[int, SequenceFinding] = field(default_factory=dict)  # gap's first seq -> finding
    _recorded_spans: list[tuple[int, int]] = field(default_factory=list)  # (first, last) of those, sorted
    #: first -> last seq of the gaps not yet resolved this process looks for in the store: those it recorded,
    #: found there when it met the gateway or before recording its own, or met below its floor as late seqs
    #: arrived (at most ``OPEN_GAPS``)
    open: dict[int, int] = field(default_factory=dict)
    #: the lowest seq looked at: epochs count from 1, or from above the epoch's mark in the store
    #: (seqs up to it were judged before); a sender without epochs is followed from where we meet
    #: it (None), or from above its mark
    floor: int | None = 1
    #: the highest mark this collector knows the store holds (0: none)
    mark: int = 0
    #: whether a hole may have shrunk or split since ``suspected`` was built (a seq arrived below
    #: the highest, the store's runs were merged in, a gap was recorded); if not, only holes above
    #: those looked at can be new (above ``looked``, the first seq of the highest run then), and
    #: ``oldest`` is still the earliest time in ``suspected``
    reshaped: bool = True
    looked: int = 0
    oldest: float | None = None
    known: int = 0  # seqs the runs hold
    #: (seq, ts) of the first seqs beyond ``limit`` met (at most ``FAR_HELD``), sorted
    far: list[tuple[int, dt.datetime]] = field(default_factory=list)
    far_count: int = 0  # readings beyond ``limit`` this process met (held or not)
    far_dropped: int = 0  # of those, not held
    jump: SequenceFinding | None = None  # this process's finding about them
    #: first -> last seq of the open jump findings of this epoch in the store but ``jump`` (another
    #: collector's, or a predecessor's), learnt when this collector met the gateway or the epoch, or
    #: its own ``jump`` once another named seqs in it beyond the bound: resolved by it once its bound
    #: reaches their last seq (``_reach``)
    others: dict[int, int] = field(default_factory=dict)
    jump_logged: int = 0  # ``far_count`` when it was last logged
    evictions: int = 0  # of ``own`` blocks (``OWN_BLOCKS``)
    seen: float = 0.0  # monotonic time of its last reading (or of when this process learnt it)
    #: (first, last) of the ``holes`` findings (sorted, joined where they overlap): no seq inside is
    #: held as a run, no hole inside is suspected, a late seq inside is only written
    swamps: list[tuple[int, int]] = field(default_factory=list)
    swamped: int = 0  # seqs of the runs dropped inside them (still counted in ``known``)
    swamp: _Holes | None = None  # the ``holes`` finding being extended
    log_until: float = 0.0  # end of the current ``LOG_EVERY_S`` of gap WARNING lines
    log_lines: int = 0  # lines logged in it
    unlogged: int = 0  # gaps recorded in it and not logged

    def set_runs(self, runs: list[_Run]) -> None:
        """Take ``runs`` (ours merged with the store's): what the store holds inside a ``holes``
        finding is not held again (its seqs were counted when its runs were dropped)."""
        self.runs[:] = runs
        if self.swamps:
            self._clip()
        self.known = sum(r.last - r.first + 1 for r in self.runs) + self.swamped

    def covered(self, first: int, last: int) -> bool:
        """Whether first..last lies inside one recorded gap or ``holes`` finding."""
        if self.recorded and self.is_recorded(first, last):
            return True
        if not self.swamps:
            return False
        i = bisect.bisect_right(self.swamps, (first, MAX_SEQ + 1))
        return i > 0 and self.swamps[i - 1][1] >= last

    def add(self, seq: int, ts: dt.datetime) -> int | None:
        """Add a stored seq; return its block, or None for a seq already held."""
        runs = self.runs
        if self.swamps and (not runs or seq <= runs[-1].last) and self.in_swamp(seq):
            return self._own(seq, ts, count=False)  # written for the store's sake, not held (``swallow``)
        if runs:
            tail = runs[-1]
            if seq == tail.last + 1:  # the usual case: the next in order
                tail.last, tail.last_ts = seq, ts
                return self._own(seq, ts)
            if seq > tail.last + 1:  # above every run: on a shared subscription, every other seq
                runs.append(_Run(seq, seq, ts, ts))
                return self._own(seq, ts)
            if tail.first <= seq <= tail.last:
                return None
        self.reshaped = True
        i = bisect.bisect_right(runs, seq, key=_first)  # runs[i-1].first <= seq < runs[i].first
        before = runs[i - 1] if i else None
        after = runs[i] if i < len(runs) else None
        if before and seq <= before.last:
            return None
        if before and seq == before.last + 1:
            before.last, before.last_ts = seq, ts
            if after and after.first == seq + 1:
                before.last, before.last_ts = after.last, after.last_ts
                del runs[i]
        elif after and after.first == seq + 1:
            after.first, after.first_ts = seq, ts
        else:
            runs.insert(i, _Run(seq, seq, ts, ts))
        return self._own(seq, ts)

    def holes(self) -> list[tuple[int, int, _Run | None, _Run]]:
        """(first, last, run before, run after) of every missing stretch from the floor up to the
        highest seq."""
        out = []
        runs, floor = self.runs, self.floor or 0
        if runs and self.floor is not None and runs[0].first > self.floor:
            out.append((self.floor, runs[0].first - 1, None, runs[0]))
        for a, b in zip(runs, runs[1:]):
            if a.last + 1 >= floor:
                out.append((a.last + 1, b.first - 1, a, b))
            elif b.first > floor:  # the hole crosses the floor: only its part above is looked at
                out.append((floor, b.first - 1, None, b))
        return out

    def record(self, f: SequenceFinding) -> None:
        if f.first not in self.recorded:
            bisect.insort(self._recorded_spans, (f.first, f.last))
        self.recorded[f.first] = f

    def recorded_first(self, seq: int) -> int | None:
        """The first seq of the recorded gap that holds ``seq`` (recorded gaps do not overlap)."""
        i = bisect.bisect_right(self._recorded_spans, (seq, MAX_SEQ + 1))
        return self._recorded_spans[i - 1][0] if i > 0 and self._recorded_spans[i - 1][1] >= seq else None

    def overlaps(self, first: int, last: int) -> bool:
        """Whether any seq of first..last lies inside a recorded gap."""
        i = bisect.bisect_right(self._recorded_spans, (last, MAX_SEQ + 1))
        return i > 0 and self._recorded_spans[i - 1][1] >= first

    def look_for(self, first: int, last: int) -> None:
        """Look for the recorded gap first..last in the store until it has arrived (at most
        ``OPEN_GAPS``: the newest, and the one asked for now)."""
        self.open[first] = last
        if len(self.open) > OPEN_GAPS:
            # never the one asked for: a late seq of an old gap puts it back, to be read from the store
            del self.open[min(k for k in self.open if k != first)]

    def is_recorded(self, first: int, last: int) -> bool:
        """Whether first..last lies inside one recorded gap."""
        at = self.recorded_first(first)
        return at is not None and self.recorded[at].last >= last

    def highest(self) -> tuple[int, dt.datetime] | None:
        return (self.runs[-1].last, self.runs[-1].last_ts) if self.runs else None
