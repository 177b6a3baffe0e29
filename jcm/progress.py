"""Progress of long work (history, months to process, an export) and the time left.

On a terminal a bar (tqdm) on stderr; otherwise, as under systemd or in a pipe, a log
line at the start, every ``every_s`` seconds and at the end, so that a journal shows
the work moving without a line per item.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("jcm.progress")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Callable as ``progress(done, total, label="")``: ``done`` of ``total`` items are finished.

    Parameters
    ----------
    what : str
        What is being done, e.g. ``history mn-solar``.
    unit : str
        What an item is, e.g. ``month``.
    every_s : float
        Seconds between log lines when not on a terminal [s].
    stream
        Where the bar goes (default: stderr); a bar only if it is a terminal.
    """

    def __init__(self, what: str, unit: str = "item", every_s: float = 10.0, stream=None):
        self.what, self.unit, self.every_s = what, unit, every_s
        self.stream = stream or sys.stderr
        self.bar = None
        self.tty = self.stream.isatty() and log.isEnabledFor(logging.INFO)
        self.started = time.monotonic()
        self.said_at: float | None = None
        self.done = 0

    def __call__(self, done: int, total: int, label: str = "") -> None:
        self.done = done
        if self.tty:
            self._bar(done, total, label)
            return
        now = time.monotonic()
        if self.said_at is not None and now - self.said_at < self.every_s and done < total:
            return
        self.said_at = now
        elapsed = now - self.started
        if done >= total:
            log.info("%s: %d/%d %ss done in %s", self.what, done, total, self.unit, _duration(elapsed))
        else:
            left = f", {_duration(elapsed / done * (total - done))} left" if done else ""
            log.info("%s: %d/%d %ss (%d%%)%s%s", self.what, done, total, self.unit,
                     100 * done // max(total, 1), f", {label}" if label else "", left)

    def _bar(self, done: int, total: int, label: str) -> None:
        if self.bar is None:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # no monitor thread (it refreshes bars not moved for 10 s; ours move at each item): an
            # export forks processes to help it only where no other thread runs (processing.export)
            tqdm.monitor_interval = 0
            # log lines go above the bar instead of through it
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
            self.bar = tqdm(total=total, desc=self.what, unit=f" {self.unit}s", file=self.stream,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{unit} "
                                       "[{elapsed} elapsed, {remaining} left{postfix}]")
        self.bar.total = total
        if label:
            self.bar.set_postfix_str(label, refresh=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self._redirect.__exit__(None, None, None)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
