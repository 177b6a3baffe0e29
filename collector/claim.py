"""What the store holds of one gateway's epoch, as one collector knows it, kept compactly.

On a shared subscription the broker deals a gateway's single messages out in turn, so until a
collector hears the others it holds every other seq: as ranges, one per message, thousands in a
fast drain. A :class:`Claim` keeps instead

- the *head* ``[floor, edge)``: held in full, one pair of numbers however long;
- the *window*: the ``WINDOW`` seqs from ``edge`` (the lowest seq not held) on, one bit each;
- ranges *above* the window (a live lane far ahead of its backlog, seqs a hostile gateway
  scatters), at most ``MAX_KEPT_RANGES``: beyond them the highest are forgotten (the gateway
  sends those readings again after its confirm timeout) until the window reaches them.

So its memory is bounded (``WINDOW`` bits and ``MAX_KEPT_RANGES`` ranges) whatever seqs a gateway
or a peer sends, and the holes between two collectors' seqs cost a bit each. Its acknowledgement
(:meth:`Claim.ack`) lists the lowest ranges and carries the rest of the window as a bitmap.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator
from itertools import chain, islice

from contract import acknowledgement
from contract.acknowledgement import MAX_BITS, MAX_RANGES, Ack, Ranges
from contract.message import MAX_SEQ

#: seqs kept as bits from the lowest one not held: as many as an acknowledgement can carry
WINDOW = MAX_BITS
#: ranges kept above the window
MAX_KEPT_RANGES = 4 * MAX_RANGES

_ONES = re.compile("1+")


def runs_of(mask: int, base: int) -> Iterator[tuple[int, int]]:
    """The inclusive ranges [seq] of the bits set in ``mask`` (bit i: seq ``base`` + i), ascending."""
    for m in _ONES.finditer(bin(mask)[:1:-1]):  # least significant bit first; in C, not a loop per bit
        yield base + m.start(), base + m.end() - 1


class Claim:
    """The seqs of one gateway epoch the store holds (as this collector knows): head, window, above."""

    __slots__ = ("floor", "edge", "bits", "above", "full")

    def __init__(self, floor: int = 1):
        self.floor = floor  # the gateway's, as last heard (1 until then): nothing below it is kept
        self.edge = floor  # [floor, edge) held; edge is not
        self.bits = 0  # bit i: seq edge + i held, for i < WINDOW (bit 0 never set once settled)
        self.above: Ranges = []  # beyond edge + WINDOW
        #: the highest seq kept above the window while there is no room for more ranges there
        #: (some above it were forgotten); None while there is room
        self.full: int | None = None

    def __bool__(self) -> bool:
        return self.edge > self.floor or self.bits > 0 or bool(self.above)

    def add_seqs(self, seqs: Iterable[int]) -> None:
        """The store holds ``seqs``."""
        edge, top = self.edge, self.edge + WINDOW
        inside, far = [], []
        for s in seqs:
            if edge <= s < top:
                inside.append(s - edge)
            elif s >= top:
                far.append(s)
        if inside:  # one integer built at once: a shift of the whole window per seq would cost more
            buf = bytearray(max(inside) // 8 + 1)
            for i in inside:
                buf[i >> 3] |= 1 << (i & 7)
            self.bits |= int.from_bytes(buf, "little")
        if far:
            self._keep_above(acknowledgement.from_seqs(far))
        self._settle()

    def add_ranges(self, ranges: Iterable[tuple[int, int]]) -> None:
        """The store holds the seqs of ``ranges`` (inclusive, any length up to ``MAX_SEQ``)."""
        top = self.edge + WINDOW
        far = []
        for a, b in ranges:
            a = max(a, self.edge)  # below it: held already, or below the floor
            if a > b:
                continue
            if a < top:
                hi = min(b, top - 1)
                self.bits |= ((1 << (hi - a + 1)) - 1) << (a - self.edge)
            if b >= top:
                far.append((max(a, top), b))
        if far:
            self._keep_above(sorted(far))
        self._settle()

    def add_bits(self, base: int, mask: int) -> None:
        """The store holds seq ``base`` + i for each bit i set in ``mask`` (an acknowledgement's bitmap)."""
        if base < self.edge:
            mask >>= self.edge - base  # below the edge: held already, or below the floor
            base = self.edge
        if mask <= 0:
            return
        offset = base - self.edge
        if offset < WINDOW:
            mask <<= offset
            self.bits |= mask & ((1 << WINDOW) - 1)
            mask >>= WINDOW
            base = self.edge + WINDOW
        if mask:
            self._keep_above(runs_of(mask, base))
        self._settle()

    def prune(self, floor: int) -> None:
        """The gateway confirmed (or dropped) every seq below ``floor``: forget them. A floor lower
        than before (its outbox went back to an older copy of itself, which holds again rows this
        claim had let go): seqs from it on are claimed again as the store takes them, or the gateway
        would send those rows for ever; what is known held above the old floor is kept."""
        if floor < self.floor:
            self._rebase(floor)
            return
        if floor == self.floor:
            return
        self.floor = floor
        if floor > self.edge:
            self.bits >>= floor - self.edge
            self.edge = floor
            self.above = acknowledgement.clip(self.above, floor, MAX_SEQ)
            self._settle()

    def _rebase(self, floor: int) -> None:
        """Move the window down to ``floor`` (below the floor until now), keeping what is held: the
        head and the window shifted up as bits, what goes past the window's top as ranges above it
        (as many as are kept, read no further), so a gateway's floor that goes up and down costs
        a few shifts, not a range per run of the window."""
        top = floor + WINDOW
        old_floor, old_edge, old_bits = self.floor, self.edge, self.bits
        self.floor = self.edge = floor
        self.bits, self.full = 0, None
        far: list[Iterable[tuple[int, int]]] = []
        if old_edge > old_floor:  # the head [old_floor, old_edge) is held
            hi = min(old_edge, top) - 1
            if old_floor <= hi:
                self.bits = ((1 << (hi - old_floor + 1)) - 1) << (old_floor - floor)
            if old_edge > top:
                far.append([(max(old_floor, top), old_edge - 1)])
        offset = old_edge - floor
        if offset < WINDOW:
            self.bits |= (old_bits << offset) & ((1 << WINDOW) - 1)
            old_bits >>= WINDOW - offset
            offset = WINDOW
        if old_bits:
            far.append(runs_of(old_bits, floor + offset))
        if far:
            self._keep_above(chain(*far))
        self._settle()

    def runs(self) -> Iterator[tuple[int, int]]:
        """Inclusive ranges [seq] held, ascending, disjoint and not adjacent."""
        last = (self.floor, self.edge - 1) if self.edge > self.floor else None
        for run in chain(runs_of(self.bits, self.edge), self.above):
            if last is not None and run[0] == last[1] + 1:  # the window's top and the lowest range above it
                last = (last[0], run[1])
                continue
            if last is not None:
                yield last
            last = run
        if last is not None:
            yield last

    def ack(self, epoch: str, run: str | None = None) -> Ack:
        """The acknowledgement of this claim, built under the gateway's run ``run``: the lowest
        ``MAX_RANGES`` ranges (all a gateway from before bitmaps reads), then the rest of the window
        as a bitmap, as much as fits."""
        listed = list(islice(self.runs(), MAX_RANGES + 1))
        if len(listed) <= MAX_RANGES:
            return Ack(epoch, tuple(listed), run=run)
        del listed[MAX_RANGES:]
        base = listed[-1][1] + 1
        if base >= self.edge + WINDOW:
            return Ack(epoch, tuple(listed), run=run)  # the window is listed whole; the ranges above it wait
        return Ack.fitted(epoch, listed, base, self.bits >> (base - self.edge), run)

    def _keep_above(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Fold ``ranges`` (ascending) into those above the window; the highest beyond
        ``MAX_KEPT_RANGES`` are forgotten, and ``ranges`` not read further."""
        merged: Ranges = []
        for a, b in heapq.merge(self.above, ranges):
            if merged and a <= merged[-1][1] + 1:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            elif len(merged) == MAX_KEPT_RANGES:
                self.full = merged[-1][1]
                break
            else:
                merged.append((a, b))
        self.above = merged

    def _settle(self) -> None:
        """Move the edge up to the lowest seq not held, and the ranges above into the window it reaches."""
        while True:
            if self.bits & 1:
                ones = (~self.bits & (self.bits + 1)).bit_length() - 1  # trailing ones
                self.edge += ones
                self.bits >>= ones
            top = self.edge + WINDOW
            if not self.above or self.above[0][0] >= top:
                break
            a, b = self.above[0]  # a >= edge: the edge moved up by at most WINDOW
            if a == self.edge:  # the head takes the range whole, however long
                del self.above[0]
                self.bits >>= b + 1 - self.edge
                self.edge = b + 1
            else:
                hi = min(b, top - 1)
                self.bits |= ((1 << (hi - a + 1)) - 1) << (a - self.edge)
                if hi == b:
                    del self.above[0]
                else:
                    self.above[0] = (hi + 1, b)
        if len(self.above) < MAX_KEPT_RANGES:
            self.full = None
