"""One state per device: the same word on the overview, the site page and in the alarms.

A device is

- ``unknown``: nothing heard from it yet (for less than ``STALE_POLLS`` poll intervals
  since we began watching), or its gateway is offline (nobody can tell);
- ``online``: its last reading had every point, each within its valid range;
- ``faulted``: the gateway read it, but some points failed or a value is out of its range;
- ``offline``: the gateway reports that it does not answer (timeout, link down). The
  gateway then backs off and polls it ever less often, so the silence between those
  readings is expected and does not make it ``stale``;
- ``stale``: it answered last time, but nothing has come for ``STALE_POLLS`` poll intervals;
  or nothing has come at all for that long since we began watching (a gateway that died
  without its last will leaves its retained status "online": its devices must not stay
  "unknown", which no alarm and no attention level counts, for ever).

Hysteresis: a bad state starts with the first reading that shows it, and the device is
``online`` again only after ``RECOVER_READINGS`` good readings in a row. So a device that
fails intermittently, or one the gateway backs off, opens one alarm and closes it once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

STATES = ("online", "faulted", "stale", "offline", "unknown")
#: the alarm kind a device raises while it is in a state
ALARM_OF_STATE = {"faulted": "device_faulted", "stale": "device_stale", "offline": "device_offline"}
#: no reading for this many poll intervals after an answered one: stale
STALE_POLLS = 3
#: good readings in a row that end a faulted or offline spell
RECOVER_READINGS = 2


def reading_state(status: str, quality: dict[str, str]) -> tuple[str, str]:
    """The state one reading shows, and why (for the alarm's detail).

    Parameters
    ----------
    status : str
        The reading's device status: ``ok``, ``degraded`` or ``offline``.
    quality : dict
        Channel -> quality flag of the channels that have one.
    """
    flagged = {ch: q for ch, q in quality.items() if q != "not_implemented"}
    why = ", ".join(f"{ch} {q}" for ch, q in sorted(flagged.items()))
    if status == "offline":
        return "offline", f"the gateway gets no answer ({', '.join(sorted(set(flagged.values()))) or 'offline'})"
    if status == "degraded" or flagged:
        return "faulted", why or "the gateway reports it degraded"
    return "online", ""


@dataclass
class DeviceHealth:
    """The state machine of one device; ``now`` always comes from the caller."""

    poll_interval: float  # [s]
    watched_since: dt.datetime | None = None  # when the live view began listening for it
    state: str = "unknown"
    reason: str = ""
    since: dt.datetime | None = None  # when the stored state began
    last_seen: dt.datetime | None = None
    good_in_a_row: int = 0

    def on_reading(self, ts: dt.datetime, status: str, quality: dict[str, str]) -> None:
        seen, reason = reading_state(status, quality)
        stale_before = self.current(ts, True)[0] == "stale"
        self.last_seen = ts
        if seen != "online":
            self.good_in_a_row = 0
        else:
            self.good_in_a_row += 1
            if self.state in ("faulted", "offline") and self.good_in_a_row < RECOVER_READINGS:
                return
        if seen != self.state or stale_before:
            self.state, self.reason, self.since = seen, reason, ts

    def current(self, now: dt.datetime, gateway_online: bool) -> tuple[str, str, dt.datetime | None]:
        """State, reason and since when, at ``now``."""
        if not gateway_online:
            return "unknown", "the gateway is offline", None
        silent = STALE_POLLS * self.poll_interval
        if self.last_seen is None:
            start = self.watched_since
            if start is not None and (now - start).total_seconds() > silent:
                return "stale", f"no reading since the live view started at {start.isoformat(timespec='seconds')}", \
                    start + dt.timedelta(seconds=silent)
            return "unknown", "no reading yet", None
        age = (now - self.last_seen).total_seconds()
        if self.state in ("online", "faulted") and age > silent:
            return "stale", f"no reading since {self.last_seen.isoformat(timespec='seconds')}", \
                self.last_seen + dt.timedelta(seconds=silent)
        return self.state, self.reason, self.since
