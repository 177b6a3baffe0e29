"""Own blocks: the seqs a collector stored itself, by block, as it writes them to the store.

The store holds, per block of ``BLOCK_SEQS`` seqs, a bitmap of the seqs each collector stored
(``ReadingStore.record_seq_blocks``), under the collector's writer name. A batch writes one record
per block it touched (however a shared subscription interleaved its seqs), each with every seq of
that block this process stored, so the collector keeps its own seqs of a block until the runs
cover the block whole.

Bounded against a broken or hostile gateway: a block with a hole is never covered whole, and
sparse seqs touch a block each, so each epoch keeps its own seqs for at most ``OWN_BLOCKS``
blocks; a block dropped and touched again is written under a writer name of its own, beside
what was written of it.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable

from collector.sequence_gaps.runs import _first
from contract.store import BLOCK_SEQS, WORD_SEQS, WORDS, SeqBlock, to_ms

#: blocks per epoch whose own seqs a collector holds after writing them (a block with a hole is
#: never covered whole, and sparse seqs touch a block each)
OWN_BLOCKS = 64


class _Own:
    """The seqs of one block this collector stored, and per word the lowest and highest
    with their readings' times (what it writes as its ``SeqBlock``)."""

    __slots__ = ("bits", "ends", "generation")

    def __init__(self, generation: int = 0):
        #: of its epoch's evictions when made: an evicted block touched again is written under
        #: another writer, as this record no longer holds the seqs written before
        self.generation = generation
        self.bits = bytearray(BLOCK_SEQS // 8)
        self.ends: list[tuple[int, dt.datetime, int, dt.datetime] | None] = [None] * WORDS  # (lo, its ts, hi, its ts)

    def add(self, seq: int, ts: dt.datetime) -> None:
        i = seq % BLOCK_SEQS
        self.bits[i >> 3] |= 1 << (i & 7)
        w = i // WORD_SEQS
        e = self.ends[w]
        if e is None:
            self.ends[w] = (i, ts, i, ts)
        elif i < e[0]:
            self.ends[w] = (i, ts, e[2], e[3])
        elif i > e[2]:
            self.ends[w] = (e[0], e[1], i, ts)

    def times(self) -> tuple[int, ...]:
        return tuple(t for e in self.ends for t in ((to_ms(e[1]), to_ms(e[3])) if e else (0, 0)))


class _OwnEpoch:
    """An epoch's own seqs (``_Epoch.own``, by block): added with each seq it follows, dropped once
    written and covered, at most ``OWN_BLOCKS`` blocks held."""

    def _own(self, seq: int, ts: dt.datetime, count: bool = True) -> int:
        self.known += count
        block = seq // BLOCK_SEQS
        own = self.own.get(block)
        if own is None:
            own = self.own[block] = _Own(self.evictions)
        own.add(seq, ts)
        return block

    def evict(self) -> None:
        """Drop the own seqs of the lowest blocks beyond ``OWN_BLOCKS`` (all written)."""
        if len(self.own) > OWN_BLOCKS:
            for block in sorted(self.own)[:len(self.own) - OWN_BLOCKS]:
                del self.own[block]
            self.evictions += 1

    def forget_covered(self, keep: Iterable[int]) -> None:
        """Drop the own seqs of blocks the runs cover whole (no seq of them can be added
        again), but those of ``keep`` (not yet written)."""
        keep = set(keep)
        for block in [b for b in self.own if b not in keep]:
            first, last = max(block * BLOCK_SEQS, 1), block * BLOCK_SEQS + BLOCK_SEQS - 1
            i = bisect.bisect_right(self.runs, first, key=_first) - 1
            if i >= 0 and self.runs[i].last >= last:
                del self.own[block]


class _OwnBlocks:
    """Of ``SequenceGaps``: writes the blocks changed (``_unsaved``) under this process's writer name."""

    def _blocks(self) -> list[SeqBlock]:
        """The blocks changed (``_unsaved``, ``_far_blocks``), each with every seq of it this process
        stored: what is to be written, kept as unsaved until ``_blocks_written``."""
        blocks = []
        for site, gateway, epoch, block in sorted(self._unsaved):
            own = self._gateways[(site, gateway)][epoch].own[block]
            blocks.append(SeqBlock(site, gateway, epoch, block, int.from_bytes(own.bits, "little"), own.times(),
                                   f"{self._writer}.{own.generation}" if own.generation else self._writer))
        return blocks + self._far_blocks

    def _blocks_written(self) -> None:
        """What ``_blocks`` gave is in the store: no longer unsaved; the own seqs of blocks covered
        whole, or beyond ``OWN_BLOCKS``, dropped."""
        written = {(site, gateway, epoch) for site, gateway, epoch, _ in self._unsaved}
        self._unsaved.clear()
        self._far_blocks = []
        for site, gateway, epoch in written:
            track = self._gateways[(site, gateway)][epoch]
            track.forget_covered(())
            track.evict()
