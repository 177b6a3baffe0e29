"""How far ahead of the receiver's clock a reading's timestamp may be.

A gateway's clock drifts a little, so a reading may arrive stamped slightly ahead of
ours; one stamped far ahead (a broken RTC, a crafted message) is refused by every
stage alike: the collector dead-letters it, and the live view ignores it so that it
cannot hide every later reading of that device as "older than the newest".
"""

from __future__ import annotations

import datetime as dt
import functools

#: default of the collector's ``max_future_s`` and the live view's limit [s]
MAX_FUTURE_S = 300.0


def too_far_ahead(ts: dt.datetime, now: dt.datetime, max_future_s: float = MAX_FUTURE_S) -> bool:
    """Whether a reading stamped ``ts`` is further ahead of ``now`` than allowed.

    Parameters
    ----------
    ts : datetime
        The reading's timestamp, timezone-aware.
    now : datetime
        The receiver's clock, timezone-aware.
    max_future_s : float
        Largest accepted lead of ``ts`` over ``now`` [s].
    """
    return ts > now + _lead(max_future_s)


@functools.lru_cache(maxsize=16)  # a timedelta made from seconds costs as much as the rest of the test
def _lead(max_future_s: float) -> dt.timedelta:
    return dt.timedelta(seconds=max_future_s)
