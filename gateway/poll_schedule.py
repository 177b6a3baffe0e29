"""When each device is polled: on the monotonic clock, never on the wall clock.

An edge box without a real-time clock boots with a wrong date, and NTP then steps its
clock by hours or years. A schedule kept on the wall clock (APScheduler's) stopped polling
for as long as the clock was set back, and set forward it walked every run missed, one by
one, before the next poll (a year of 5 s polls: 6 million steps, with their memory, per
device). Here each device is due ``interval`` after its last due time on a clock that only
counts elapsed time; the wall clock stamps the readings and nothing else. A device has one
poll at a time: a poll still running (or waiting) when the next is due makes that one
skipped, not queued (a poll run late would be stamped late anyway), and so are the polls
due while the whole gateway was held up.

Each endpoint (lane) has a thread of its own: its polls wait for each other anyway (one
request at a time on a link), and on a pool shared by every endpoint the polls waiting for
an overloaded endpoint took every thread, and the other endpoints waited for them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: at most one line a minute per device about polls skipped
SKIP_LOG_EVERY_S = 60.0


@dataclass
class _Job:
    name: str
    lane: str
    interval: float  # [s]
    run: Callable[[], None]
    due: float = 0.0  # [s] on the monotonic clock
    running: Future | None = None
    skipped: int = 0
    skipped_unlogged: int = 0
    next_skip_log: float = 0.0


class PollSchedule:
    """Run each ``(name, lane, interval [s], run)`` every interval on its lane's thread,
    those of one interval spread evenly over it."""

    def __init__(self, jobs: list[tuple[str, str, float, Callable[[], None]]]):
        self._jobs = [_Job(name, lane, interval, run) for name, lane, interval, run in jobs]
        self._lanes = {job.lane: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"poll {job.lane}")
                       for job in self._jobs}
        self._stop = threading.Event()
        self._paused = False
        self._thread = threading.Thread(target=self._run, name="poll-schedule", daemon=True)

    def start(self) -> None:
        now = time.monotonic()
        by_interval: dict[float, list[_Job]] = {}
        for job in self._jobs:
            by_interval.setdefault(job.interval, []).append(job)
        for interval, group in by_interval.items():
            for i, job in enumerate(group):
                job.due = now + interval * i / len(group)
        self._thread.start()

    def due_in(self) -> dict[str, float]:
        """Seconds until each job is due next."""
        now = time.monotonic()
        return {job.name: job.due - now for job in self._jobs}

    def pause(self) -> None:
        """Start no more runs (those under way finish)."""
        self._paused = True

    def shutdown(self) -> None:
        """Stop, and wait for the runs under way (those waiting for their lane are not made)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for lane in self._lanes.values():
            lane.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            job = min(self._jobs, key=lambda j: j.due)
            if self._stop.wait(max(0.0, job.due - time.monotonic())):
                return
            if not self._paused:
                if job.running is None or job.running.done():
                    job.running = self._lanes[job.lane].submit(job.run)
                else:
                    self._skipped(job)
            # the next due time on the job's own grid, after now: runs missed are not made up
            late = time.monotonic() - job.due
            job.due += job.interval * (1 + max(0, math.floor(late / job.interval)))

    @staticmethod
    def _skipped(job: _Job) -> None:
        job.skipped += 1
        job.skipped_unlogged += 1
        now = time.monotonic()
        if now >= job.next_skip_log:
            log.warning("%s: %d poll(s) skipped: each was due while the one before still ran or waited for "
                        "its endpoint (%d in all)", job.name, job.skipped_unlogged, job.skipped)
            job.skipped_unlogged = 0
            job.next_skip_log = now + SKIP_LOG_EVERY_S
