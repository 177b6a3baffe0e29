"""The mark: how far each epoch is judged, kept in the store, and what a collector meeting a gateway reads back.

An epoch's mark (``SeqMark``) is the seq up to which every seq is stored or inside a gap recorded.
It is kept in the store and advanced only over what the store holds: never past a block not yet
written, nor a hole whose gap the store has not taken (every run a collector holds is in the store,
and every gap it knows recorded there), so the mark is a fact about the store; the marks moved are
written at most every ``MARK_EVERY_S`` (a mark a little behind costs a restarted collector a few more
blocks to read). A collector that meets a gateway reads every block of each epoch from the mark up
(seqs up to it are not looked at again), in pages of ``LOAD_BLOCKS`` held in memory as runs, so a
hole its predecessor saw but had not yet judged when it stopped is judged now, however far back.
"""

from __future__ import annotations

from collector.sequence_gaps import epoch_churn
from collector.sequence_gaps.epoch import _Epoch
from collector.sequence_gaps.far_seqs import other_jump
from contract.store import BLOCK_SEQS, SeqMark, SeqRange, block_ranges

#: blocks read per query when a collector meets a gateway and reads every block of an epoch
#: from its mark up (4,194,304 seqs, 34 ms on SQLite): what one read holds in memory
LOAD_BLOCKS = 1024
#: how often the marks are written [s]: a mark a little behind costs a restarted collector a few
#: more blocks to read, one written every check a store write a second
MARK_EVERY_S = 5.0


class _Marks:
    """Of ``SequenceGaps``: reads a gateway back from the store from its marks up, and moves the marks."""

    def _load(self, site: str, gateway: str, now: float) -> dict[str, _Epoch]:
        """What the store knows of a gateway, the first time this collector meets it."""
        epochs: dict[str, _Epoch] = {}
        self._learn(site, gateway, epochs)
        for f in self.store.sequence_findings(site, gateway=gateway):
            if f.kind == "gap":
                track = epochs.setdefault(f.epoch, _Epoch(floor=1 if f.epoch else None))
                track.record(f)
                if f.resolved is None:
                    # the collector that looked for it may have started its books again since, and its
                    # late seqs may be split between collectors, neither holding them all
                    track.look_for(f.first, f.last)
            elif f.kind == "holes":
                epochs.setdefault(f.epoch, _Epoch(floor=1 if f.epoch else None)).swallow(f.first, f.last)
            elif f.epoch in epochs and other_jump(f, gateway, f.epoch, epochs[f.epoch]):
                epochs[f.epoch].others[f.first] = f.last  # not continued (``_hold_beyond``)
        for epoch, track in epochs.items():
            self._arrived_below(site, gateway, epoch, track)
            # not met by this process yet: as idle as an epoch given up (``_room``) once its holes had two
            # grace periods to be judged; one in use is met again with its next reading. (Seen now, a gateway
            # with ``MAX_EPOCHS`` epochs in the store had its next new epoch taken for churn for an hour.)
            track.seen = (now - max(epoch_churn.EPOCH_IDLE_S, 2 * self.grace_s)
                          + (2 * self.grace_s if track.holes() else 0))
        self._gateways[(site, gateway)] = epochs
        return epochs

    def _arrived_below(self, site: str, gateway: str, epoch: str, track: _Epoch) -> None:
        """Of the open gaps below the floor (our runs do not reach there), resolve those the store
        holds whole now, and look no further for the others: a late seq of one that arrives here
        makes it looked for again (``_resolve``)."""
        for first, last in [(a, b) for a, b in track.open.items() if track.floor is not None and b < track.floor]:
            del track.open[first]
            held = self._read_ranges(site, gateway, epoch, first // BLOCK_SEQS, last // BLOCK_SEQS)
            if any(r.first <= first and last <= r.last for r in held):
                self._arrived(site, gateway, epoch, track, track.recorded[first])

    def _learn(self, site: str, gateway: str, epochs: dict[str, _Epoch], only: set[str | None] | None = None) -> None:
        """Learn the blocks of each epoch of the gateway (or of those ``only``) above what is
        judged: of an epoch it meets for the first time, from the store's mark up (seqs up to it
        are not looked at), or from its lowest block when it has no mark (a store of a version
        before marks: a hole left unjudged then is judged now); of one it knows, above the
        highest seq it knows. In pages of ``LOAD_BLOCKS``: held in memory as runs, not seqs."""
        tops = self.store.seq_tops(site, gateway)
        marks = self.store.seq_marks(site, gateway) if tops else {}
        for epoch, top in tops.items():
            if only is not None and epoch not in only:
                continue
            track = epochs.get(epoch)
            if track is not None and track.runs:
                first = track.runs[-1].last // BLOCK_SEQS
            else:
                track = epochs.setdefault(epoch, _Epoch(floor=1 if epoch else None))
                mark = marks.get(epoch, 0)
                if mark:
                    track.floor, track.mark = mark + 1, mark
                first = mark // BLOCK_SEQS
            ranges = self._read_ranges(site, gateway, epoch, first, top)
            if ranges:
                track.reshaped = True
                track.set_runs(self._merged(track.runs, ranges))
                self._hold_beyond(site, gateway, epoch, track)

    def _read_ranges(self, site: str, gateway: str, epoch: str, first: int, last: int) -> list[SeqRange]:
        """The runs of stored seqs of blocks ``first``..``last``, read ``LOAD_BLOCKS`` blocks a
        query: what is held is the runs, not the blocks."""
        ranges: list[SeqRange] = []
        while first <= last:
            page = self.store.seq_blocks(site, gateway, epoch, first, last, LOAD_BLOCKS)
            ranges += block_ranges(page)
            if len(page) < LOAD_BLOCKS:
                return ranges
            first = page[-1].block + 1
        return ranges

    def _judged(self, site: str, gateway: str, epochs: dict[str, _Epoch]) -> list[SeqMark]:
        """The marks of the epochs judged further than their mark: up to below the lowest
        hole suspected (right after ``_suspect``: every hole not inside a recorded gap, lowest
        first), else the highest seq; never past a block not yet written. Every run this
        collector holds is in the store, and every gap it knows recorded there (durably, before
        it dropped the hole), so the mark is a fact about the store."""
        out = []
        for epoch, track in epochs.items():
            if not track.runs or (track.floor is not None and track.floor > track.mark + 1):
                continue  # the mark moves only over seqs looked at: from the floor up
            judged = next(iter(track.suspected)) - 1 if track.suspected else track.runs[-1].last
            unsaved = min((b for s, g, e, b in self._unsaved if (s, g, e) == (site, gateway, epoch)), default=None)
            if unsaved is not None:
                judged = min(judged, unsaved * BLOCK_SEQS - 1)
            if judged > track.mark:
                out.append(SeqMark(site, gateway, epoch, judged, self._writer))
        return out

    def _write_marks(self, marks: list[SeqMark], now: float) -> None:
        """Write the marks ``_judged`` moved, at most every ``MARK_EVERY_S``."""
        if marks and now >= self._next_mark:
            self.store.record_seq_marks(marks)
            self._next_mark = now + MARK_EVERY_S
            for m in marks:
                self._gateways[(m.site, m.gateway)][m.epoch].mark = m.seq
