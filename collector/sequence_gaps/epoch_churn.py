"""Epoch churn: at most ``MAX_EPOCHS`` epochs of a gateway are followed at once.

A gateway starts a new epoch only with a new or emptied outbox (a few a year). Bounded against a
broken or hostile gateway, one publishing under ever new epochs: one more epoch is followed when
another had no reading for ``EPOCH_IDLE_S`` (and twice the grace period: the gateway left it, and
its holes were judged; an epoch a restarted collector finds in the store counts as that idle once
its holes had two grace periods). Readings of more new ones while the others are in use are stored
and acknowledged, and named in one ``churn`` finding per gateway (readings, epochs, the first),
logged as a WARNING when new and each time its count grew tenfold; an epoch not followed then and
followed later is followed from the seq it is met at, as its seqs before were not followed.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace

from collector.sequence_gaps.epoch import _Epoch
from contract.message import Reading
from contract.store import ReadingStore, SequenceFinding

log = logging.getLogger(__package__)

#: epochs of a gateway followed at once: a gateway starts a new epoch only with a new or emptied
#: outbox (a few a year); one more is followed when another had no reading for ``EPOCH_IDLE_S``
#: (and twice the grace period): the gateway left it, and its holes were judged
MAX_EPOCHS = 16
EPOCH_IDLE_S = 3600.0
#: epochs not followed (beyond ``MAX_EPOCHS``) a gateway's ``churn`` finding remembers: one of them
#: followed later is followed from the seq it is met at, as its seqs before were not followed
CHURNED_KEPT = 1024


class _Churn:
    """A gateway's readings of epochs beyond ``MAX_EPOCHS``: what its churn finding says."""

    def __init__(self):
        self.finding: SequenceFinding | None = None
        self.count = 0  # readings
        self.distinct = 0  # epochs (as far as ``epochs`` remembers them)
        self.epochs: dict[str, None] = {}  # the last ``CHURNED_KEPT`` of them, oldest first
        self.resume: dict[str, int] = {}  # epoch -> the seq it is followed from, once there is room for it
        self.dirty = False
        self.logged = 0  # ``count`` when last logged

    def add(self, r: Reading) -> None:
        epoch = r.epoch or ""
        self.count += 1
        if self.epochs.pop(epoch, 0) is not None:
            self.distinct += 1
        self.epochs[epoch] = None
        if len(self.epochs) > CHURNED_KEPT:
            del self.epochs[next(iter(self.epochs))]
        f = self.finding or SequenceFinding("churn", r.site, r.gateway, epoch, r.seq, r.seq, dt.datetime.now(dt.UTC),
                                            "", start=r.ts, end=r.ts)
        self.finding = replace(f, start=min(f.start, r.ts), end=max(f.end, r.ts), cause=(
            f"{self.count} reading(s) of {self.distinct} epoch(s) new to the collector while it followed "
            f"{MAX_EPOCHS} others of this gateway, each with a reading within the last {EPOCH_IDLE_S:.0f} s (or two "
            f"grace periods); the first: seq {f.first} of epoch {f.epoch or '(none)'}: stored and acknowledged, but "
            "their seqs are not followed (a gateway starts an epoch only with a new or emptied outbox: this one is "
            "broken or hostile); one of them followed later is followed from the seq it is met at"))
        self.dirty = True

    def write(self, store: ReadingStore) -> None:
        f = self.finding
        store.record_finding(f)
        self.dirty = False
        if self.count >= 10 * self.logged:
            self.logged = self.count
            log.warning("site %s: gateway %s: %s", f.site, f.gateway, f.cause)


class _EpochChurn:
    """Of ``SequenceGaps``: whether an epoch new to it is followed, and the ``churn`` finding of those that are not."""

    def _room(self, r: Reading, epochs: dict[str, _Epoch], now: float) -> bool:
        """Whether an epoch not followed yet can be: a gateway's epochs beyond ``MAX_EPOCHS`` (its
        idle ones given up) are stored and acknowledged, not followed, and named in its churn finding."""
        epoch = r.epoch or ""
        if len(epochs) >= MAX_EPOCHS:
            idle = min(epochs, key=lambda e: epochs[e].seen)
            if (now - epochs[idle].seen < max(EPOCH_IDLE_S, 2 * self.grace_s)
                    or any(k[:3] == (r.site, r.gateway, idle) for k in (*self._unsaved, *self._jumps))):
                churn = self._churn.get((r.site, r.gateway))
                if churn is None:
                    churn = self._churn[(r.site, r.gateway)] = _Churn()
                churn.add(r)
                return False
            log.info("site %s: gateway %s: epoch %s, without a reading for %.0f s (or since the collector started), "
                     "is no longer followed (%d epochs at most)", r.site, r.gateway, idle or "(none)",
                     now - epochs[idle].seen, MAX_EPOCHS)
            del epochs[idle]
        churn = self._churn.get((r.site, r.gateway))
        if churn is not None and epoch in churn.epochs:
            churn.resume[epoch] = r.seq
        return True

    def _new_epoch(self, r: Reading, epochs: dict[str, _Epoch], now: float) -> _Epoch:
        track = self._epoch(r, epochs)
        track.seen = now
        churn = self._churn.get((r.site, r.gateway))
        resume = churn.resume.pop(r.epoch or "", None) if churn else None
        if resume is not None and track.floor is not None:  # its seqs met before were not followed
            track.floor = max(track.floor, resume)
        return track
