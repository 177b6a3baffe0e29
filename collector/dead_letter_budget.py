"""A bound on how many dead letters one site can make the store keep.

Each dead letter is kept with its reason and the first KiB of its payload (about 2 KB in
SQLite), and the collector can write thousands a second: a site sending garbage at that
rate would fill the store's disk in a day and stop ingestion for every site. So each site
may have ``per_window`` dead letters kept whole in each window of ``window_s`` seconds;
the rest of that window are counted, and when the window is over one summary letter says
how many there were, from when to when, with the reason of the last one. Nothing goes
unrecorded: every refused message is a letter or is counted in one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from contract.store import DeadLetter


@dataclass
class _Window:
    start: dt.datetime
    kept: int = 0
    over: int = 0
    over_bytes: int = 0
    last_reason: str = ""


def site_of(topic: str) -> str:
    """The site level of ``jcm/v1/<site>/...`` (``""`` for a topic of another shape)."""
    parts = topic.split("/", 3)
    return parts[2][:64] if len(parts) > 2 and parts[0] == "jcm" else ""


class DeadLetterBudget:
    def __init__(self, per_window: int, window_s: float):
        self.per_window, self.window = per_window, dt.timedelta(seconds=window_s)
        self._windows: dict[str, _Window] = {}

    def admit(self, letters: list[DeadLetter], now: dt.datetime) -> list[DeadLetter]:
        """The letters to keep whole, and the summaries of windows that are over."""
        out = self.due(now)
        for letter in letters:
            site = site_of(letter.topic)
            w = self._windows.setdefault(site, _Window(now))
            if w.kept < self.per_window:
                w.kept += 1
                out.append(letter)
            else:
                w.over += 1
                w.over_bytes += letter.size or 0
                w.last_reason = letter.reason
        return out

    def due(self, now: dt.datetime) -> list[DeadLetter]:
        """Summaries of the windows that are over (their sites start afresh)."""
        out = []
        for site, w in list(self._windows.items()):
            if now - w.start < self.window:
                continue
            del self._windows[site]
            if w.over:
                out.append(DeadLetter(
                    now, f"jcm/v1/{site}/" if site else "", b"",
                    f"{w.over} more dead letter(s) of site '{site}' ({w.over_bytes} bytes) from "
                    f"{w.start.isoformat(timespec='seconds')} to {now.isoformat(timespec='seconds')} were counted, "
                    f"not kept one by one (at most {self.per_window} kept whole a site in {self.window.total_seconds():g} s); "
                    f"the last one's reason: {w.last_reason}"))
        return out
