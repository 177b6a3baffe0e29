"""A run: seqs first..last of an epoch, every one stored, with the times of the readings at its ends.

What a collector holds of an epoch is its runs (sorted, disjoint, not touching), not its seqs one by
one: a hole is what lies between two runs, and a run costs the same whatever its length.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(slots=True)  # one a message on a shared subscription (every other seq): made and read per seq
class _Run:
    first: int
    last: int
    first_ts: dt.datetime
    last_ts: dt.datetime


def _first(run: _Run) -> int:
    return run.first
