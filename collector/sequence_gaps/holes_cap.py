"""Many holes: at most ``MAX_GAPS`` gaps per epoch are recorded one by one, and gap WARNING lines are rate-limited.

Bounded against a broken or hostile gateway: one sending every other seq within its epoch's bound
would make a hole, a gap finding and a WARNING line a reading, and the runs between would be held for
good. An honest epoch loses readings a few times a year (its outbox is durable), so at most
``MAX_GAPS`` gaps per epoch are recorded one by one (with those found in the store); beyond, the
holes judged are named together in a ``holes`` finding (one a burst: extended while holes keep
coming, a new one after ``HOLES_QUIET_S`` without; the holes between its ends are taken in), and the
runs inside it are no longer held (its seqs still count towards the epoch's bound): no hole inside is
suspected, a late seq inside is only written, and the mark moves over it. Gaps are logged as
WARNING lines at most ``LOG_LINES`` an epoch every ``LOG_EVERY_S``; then one line counts those not
logged. So a gateway sending every other seq costs neither a finding, a run nor a WARNING line a
reading.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from collector.sequence_gaps.runs import _Run
from contract.message import MAX_SEQ
from contract.store import SequenceFinding

if TYPE_CHECKING:  # annotations only: epoch.py imports this module
    from collector.sequence_gaps.epoch import _Epoch

log = logging.getLogger(__package__)

#: gaps of an epoch recorded one by one (with those found in the store): an honest epoch loses
#: readings a few times a year (its outbox is durable); beyond, its holes are named together in
#: ``holes`` findings, and the seqs between them are no longer held
MAX_GAPS = 1024
#: a ``holes`` finding takes in the holes judged while it was extended within this long [s];
#: after a quiet spell a new one starts, so a finding spans the months of one burst only
HOLES_QUIET_S = 3600.0
#: WARNING lines about an epoch's gaps per ``LOG_EVERY_S`` [s]; then one line counts those not logged
LOG_LINES = 10
LOG_EVERY_S = 60.0


@dataclass
class _Holes:
    """A ``holes`` finding this process writes, and what its cause counts."""

    finding: SequenceFinding
    count: int = 0  # holes taken in
    missing: int = 0  # their seqs
    logged: int = 0  # ``count`` when last logged
    at: float = 0.0  # monotonic time it was last extended


class _HolesEpoch:
    """An epoch's ``holes`` findings (``_Epoch.swamps``): the seqs inside them are not held as runs."""

    def in_swamp(self, seq: int) -> bool:
        i = bisect.bisect_right(self.swamps, (seq, MAX_SEQ + 1))
        return i > 0 and self.swamps[i - 1][1] >= seq

    def _clip(self) -> int:
        """Drop the runs, and the parts of runs, inside ``swamps`` (one sweep of both); return
        the seqs dropped."""
        out, dropped, j, swamps = [], 0, 0, self.swamps
        for r in self.runs:
            while j < len(swamps) and swamps[j][1] < r.first:
                j += 1
            k = j
            while r is not None and k < len(swamps) and swamps[k][0] <= r.last:
                a, b = swamps[k]
                dropped += min(r.last, b) - max(r.first, a) + 1
                if r.first < a:
                    out.append(_Run(r.first, a - 1, r.first_ts, r.first_ts))
                r = _Run(b + 1, r.last, r.last_ts, r.last_ts) if r.last > b else None
                k += 1
            if r is not None:
                out.append(r)
        self.runs[:] = out
        return dropped

    def suspected_in(self, first: int, last: int) -> tuple[int, int]:
        """How many holes suspected lie inside first..last, and their seqs."""
        inside = [(s, la) for s, (la, _) in self.suspected.items() if first <= s <= last]
        return len(inside), sum(la - s + 1 for s, la in inside)

    def swallow(self, first: int, last: int) -> None:
        """Take seqs first..last into ``swamps``: drop the runs and suspected holes inside."""
        spans = sorted([*self.swamps, (first, last)])
        self.swamps = [spans[0]]
        for a, b in spans[1:]:
            if a <= self.swamps[-1][1] + 1:
                self.swamps[-1] = (self.swamps[-1][0], max(b, self.swamps[-1][1]))
            else:
                self.swamps.append((a, b))
        self.swamped += self._clip()
        for s in [s for s in self.suspected if first <= s <= last]:
            del self.suspected[s]
        self.reshaped = True


class _HolesCap:
    """Of ``SequenceGaps``: the ``holes`` findings of the epochs beyond ``MAX_GAPS``, and the gap WARNING lines."""

    @staticmethod
    def _log_gap(site: str, gateway: str, track: _Epoch, cause: str, now: float) -> None:
        """Log a gap as a WARNING: at most ``LOG_LINES`` an epoch every ``LOG_EVERY_S``; ``check``
        then logs how many were not (a gateway losing every other seq: 11 lines a minute)."""
        if now >= track.log_until:
            track.log_until, track.log_lines = now + LOG_EVERY_S, 0
        if track.log_lines >= LOG_LINES:
            track.unlogged += 1
            return
        track.log_lines += 1
        log.warning("site %s: gateway %s: %s", site, gateway, cause)

    @staticmethod
    def _log_unlogged(site: str, gateway: str, epochs: dict[str, _Epoch], now: float) -> None:
        """Log how many gaps of each epoch ``_log_gap`` did not, once their ``LOG_EVERY_S`` is over."""
        for epoch, track in epochs.items():
            if track.unlogged and now >= track.log_until:
                log.warning("site %s: gateway %s: %d more gap(s) of epoch %s recorded and not logged (at most %d "
                            "lines every %g s): see the sequence findings", site, gateway, track.unlogged,
                            epoch or "(none)", LOG_LINES, LOG_EVERY_S)
                track.unlogged = 0

    def _record_holes(self, site: str, gateway: str, epoch: str, track: _Epoch,
                      holes: list[tuple[int, int, _Run | None, _Run]], now: float) -> None:
        """Name the holes due of an epoch that has ``MAX_GAPS`` gaps recorded in its ``holes``
        finding (one a burst: a new one after ``HOLES_QUIET_S``), and stop holding the runs between
        them: each hole costs a finding and a run no more, and the mark moves over them."""
        key = (site, gateway, epoch)
        burst = track.swamp if track.swamp is not None and now - track.swamp.at < HOLES_QUIET_S else None
        if burst is not None:
            # a finding keeps its first seq (its identity in the store): holes below it (not due when it
            # began) are named in one of their own; the holes between it and those above are taken in
            lower = [h for h in holes if h[1] < burst.finding.first]
            if lower:
                self._write_holes(track, _Holes(self._new_holes(key, lower)), lower)
            holes = [h for h in holes if h[0] > burst.finding.last]
        if holes:
            track.swamp = self._write_holes(track, burst or _Holes(self._new_holes(key, holes)), holes)
            track.swamp.at = now

    @staticmethod
    def _new_holes(key: tuple[str, str, str], holes: list[tuple[int, int, _Run | None, _Run]]) -> SequenceFinding:
        first, _, before, _ = holes[0]
        return SequenceFinding("holes", *key, first, first, dt.datetime.now(dt.UTC), "",
                               start=before.last_ts if before else None)

    def _write_holes(self, track: _Epoch, burst: _Holes, holes: list[tuple[int, int, _Run | None, _Run]]) -> _Holes:
        """Write ``burst``'s finding taking in ``holes`` and every hole between; log it when new and
        each time its count of holes grew tenfold."""
        f = burst.finding
        n, missing = track.suspected_in(f.first, holes[-1][1])
        f = replace(f, last=holes[-1][1], end=holes[-1][3].first_ts, cause=(
            f"too many holes: {burst.count + n} hole(s) ({burst.missing + missing} seq(s) missing) over seqs "
            f"{f.first}..{holes[-1][1]} of epoch {f.epoch or '(none)'}, not followed one by one: the epoch had "
            f"{MAX_GAPS} gaps recorded already (a broken or hostile gateway, e.g. one sending every other seq); the "
            "readings of that range that arrived are stored, the rest were lost, and only the store's sequence "
            "blocks say which seqs are which"))
        self.store.record_finding(f)
        # only now: should the store refuse the finding, the holes stay suspected and the mark below them
        track.swallow(f.first, f.last)
        burst.finding, burst.count, burst.missing = f, burst.count + n, burst.missing + missing
        if burst.count >= 10 * burst.logged:
            burst.logged = burst.count
            log.warning("site %s: gateway %s: %s", f.site, f.gateway, f.cause)
        return burst
