"""What the live view knows right now, fed by MQTT: gateway status, each device's last
reading, and the conditions that raise alarms. Works without the database, so the
page stays live while the store is down."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from dataclasses import dataclass, field

from contract import topics
from contract.config.site import Site
from contract.future_limit import MAX_FUTURE_S, too_far_ahead
from contract.message import Quality, Reading
from contract.register_fit import DeviceFit
from liveview.alarms import Condition, calibration_conditions, completeness_conditions
from liveview.device_state import ALARM_OF_STATE, DeviceHealth
from liveview.main_channels import MAIN_CHANNELS

log = logging.getLogger(__name__)
#: what a gateway's retained status message may say
GATEWAY_STATES = ("online", "offline")
#: status periods without one after which an "online" gateway is shown stale
STALE_STATUS_PERIODS = 3
#: ignored messages of a site logged one by one a minute at most; the rest are counted in one line
LOGGED_PER_MINUTE = 10


@dataclass
class DeviceView:
    id: str
    kind: str
    gateway: str
    health: DeviceHealth
    status: str | None = None
    values: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)  # channel -> (ts, value) for counter checks
    conditions: dict = field(default_factory=dict)  # (subject, kind) -> Condition from readings

    @property
    def last_seen(self) -> dt.datetime | None:
        return self.health.last_seen

    def state(self, now: dt.datetime, gateway_online: bool) -> str:
        return self.health.current(now, gateway_online)[0]


class LiveState:
    def __init__(self, sites: list[Site], started: dt.datetime | None = None):
        self.sites = {s.site: s for s in sites}
        started = started or dt.datetime.now(dt.UTC)
        self.lock = threading.Lock()
        #: site -> (when its minute began [monotonic s], ignored messages in it)
        self.log_budget: dict[str, tuple[float, int]] = {}
        self.gateways: dict[str, dict] = {s.site: {s.gateway: {"state": "unknown", "ts": None}} for s in sites}
        self.devices: dict[str, dict[str, DeviceView]] = {
            s.site: {d.id: DeviceView(d.id, d.kind, s.gateway, DeviceHealth(d.poll_interval, started))
                     for d in s.devices}
            for s in sites}
        self.max_rates = {(s.site, src): m.max_rate_per_h for s in sites for m in s.monitoring
                          for src in m.sources if m.max_rate_per_h}
        #: (site, device) -> what its readings may carry (the collector refuses the others)
        self.fits = {(s.site, d.id): DeviceFit.of(d) for s in sites for d in s.devices}

    # -- MQTT input -----------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, now: dt.datetime | None = None) -> dict | None:
        """Apply one message; return the event to broadcast, or None.

        The topic is the sender's identity (the broker's ACL lets a gateway write only
        under its own site): a message whose payload names another site, gateway or
        device, or is stamped too far ahead of our clock, is ignored and logged."""
        if topic.endswith("/status"):
            return self._on_status(topic, payload, now or dt.datetime.now(dt.UTC))
        try:
            site, gateway, device = topics.parse_reading(topic)
            reading = Reading.from_json(payload)
        except (ValueError, RecursionError, OverflowError) as exc:  # the collector dead-letters these
            log.debug("live view: ignored message on %.120r: %s", topic, exc)
            return None
        known = self.sites.get(site)
        if known is None:
            return None
        claimed = (reading.site, reading.gateway, reading.device)
        if claimed != (site, gateway, device) or gateway != known.gateway:
            self._ignored(site, "live view: ignored reading on %.120r: the payload says site %.80r, gateway %.80r, "
                          "device %.80r (site %r is served by gateway %r)", topic, *claimed, site, known.gateway)
            return None
        now = now or dt.datetime.now(dt.UTC)
        misfit = self._misfit(reading)
        if misfit:
            self._ignored(site, "live view: ignored reading on %.120r: %s", topic, misfit)
            return None
        if too_far_ahead(reading.ts, now):
            self._ignored(site, "live view: ignored reading on %r stamped %s, ahead of this clock by more than %.0f s",
                          topic, reading.ts.isoformat(), MAX_FUTURE_S)
            return None
        return self.on_reading(reading, now)

    def _ignored(self, site: str, message: str, *args) -> None:
        """Log an ignored message of a configured ``site``: ``LOGGED_PER_MINUTE`` a minute one by one, the
        rest counted in one line when the next minute begins (a gateway sending thousands a second
        that no stage takes must not fill the log)."""
        now = time.monotonic()
        with self.lock:
            start, n = self.log_budget.get(site, (now, 0))
            if now - start >= 60:
                if n > LOGGED_PER_MINUTE:
                    log.warning("live view: %d more messages of site %r ignored in the last minute (not logged one "
                                "by one)", n - LOGGED_PER_MINUTE, site)
                start, n = now, 0
            self.log_budget[site] = (start, n + 1)
        if n < LOGGED_PER_MINUTE:
            log.warning(message, *args)

    def _misfit(self, r: Reading) -> str | None:
        """Why a reading does not fit its device's register map (the collector refuses it), or None."""
        fit = self.fits.get((r.site, r.device))
        if fit is None:
            return f"site {r.site!r} has no device {r.device!r}"
        return fit.misfit(r.values, f"device {r.device!r}")

    def _on_status(self, topic: str, payload: bytes, now: dt.datetime) -> dict | None:
        try:
            site, gateway = topics.parse_status(topic)
        except ValueError:
            return None
        known = self.sites.get(site)
        if known is None or gateway != known.gateway:
            return None
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            self._ignored(site, "live view: ignored status on %r: not JSON (%s)", topic, exc)
            return None
        if not isinstance(body, dict) or body.get("site") != site or body.get("gateway") != gateway:
            named = (body.get("site"), body.get("gateway")) if isinstance(body, dict) else (None, None)
            self._ignored(site, "live view: ignored status on %r: the payload says site %.80r, gateway %.80r",
                          topic, *named)
            return None
        state, ts, depth = body.get("state"), body.get("ts"), body.get("outbox_depth")
        if state not in GATEWAY_STATES:
            self._ignored(site, "live view: ignored status on %r: unknown state %.80r", topic, state)
            return None
        with self.lock:
            before = self.gateways[site][gateway].get("state")
            self.gateways[site][gateway] = {
                "state": state, "ts": ts if isinstance(ts, str) and len(ts) <= 40 else None,
                "outbox_depth": depth if isinstance(depth, int) and not isinstance(depth, bool) else None,
                "heard": now}
        if state == before:  # each event makes every open page reload the site: a flood must not multiply
            return None
        return {"type": "gateway", "site": site, "gateway": gateway, "state": state}

    def on_reading(self, r: Reading, received: dt.datetime | None = None) -> dict | None:
        """Apply a reading that arrived at ``received`` (default: now).

        A reading was taken when its stamp says, at the latest when it arrived: a stamp ahead
        of our clock (a gateway clock a few minutes fast, within what is accepted) counts as
        the moment of arrival, so that it neither hides the readings after it as older, nor
        keeps a device that stops answering "online" until our clock reaches its stamp."""
        site = self.sites.get(r.site)
        received = received or dt.datetime.now(dt.UTC)
        seen = min(r.ts, received)
        with self.lock:
            view = self.devices.get(r.site, {}).get(r.device)
            if site is None or view is None:
                return None
            if view.last_seen is not None and seen <= view.last_seen:
                return None  # a redelivery or replay: the live view shows the newest only
            self._counter_checks(site, view, r, seen)
            view.status = r.status.value
            view.quality = {k: q.value for k, q in r.quality.items()}
            view.health.on_reading(seen, view.status, view.quality)  # sets last_seen
            main = MAIN_CHANNELS.get(view.kind, [])
            view.values = {k: r.values.get(k) for k in main if k in r.values}
            for key in [k for k in view.conditions if k[1] == "out_of_range"]:
                del view.conditions[key]
            for ch, q in r.quality.items():
                if q is Quality.out_of_range:
                    subject = f"{r.device}.{ch}"
                    view.conditions[(subject, "out_of_range")] = Condition(
                        r.site, subject, "out_of_range", f"{ch} = {r.values.get(ch)} outside its valid range")
            online = self.gateways[r.site].get(site.gateway, {}).get("state") != "offline"
            return {"type": "reading", "site": r.site, "device": r.device, "ts": seen.isoformat(),
                    "status": r.status.value, "state": view.state(received, online), "values": view.values,
                    "quality": view.quality}

    def _counter_checks(self, site: Site, view: DeviceView, r: Reading, seen: dt.datetime) -> None:
        points = {p.channel: p for p in site.device(view.id).register_map.points if p.kind.value == "counter"}
        for ch, p in points.items():
            v = r.values.get(ch)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            try:
                v = float(v)  # an integer beyond float range is no counter value
            except OverflowError:
                continue
            subject = f"{view.id}.{ch}"
            prev = view.counters.get(ch)
            view.conditions.pop((subject, "counter_backwards"), None)
            view.conditions.pop((subject, "counter_jump"), None)
            if prev is not None:
                t0, v0 = prev
                wrapped = p.rollover and v0 > 0.5 * p.rollover and v < 0.5 * p.rollover
                if v < v0 and not wrapped:
                    view.conditions[(subject, "counter_backwards")] = Condition(
                        site.site, subject, "counter_backwards", f"{ch} went from {v0:g} to {v:g}")
                rate = self.max_rates.get((site.site, subject))
                hours = max((seen - t0).total_seconds() / 3600, 1 / 3600)
                if rate and v - v0 > rate * hours:
                    view.conditions[(subject, "counter_jump")] = Condition(
                        site.site, subject, "counter_jump", f"{ch} rose {v - v0:g} in {hours * 3600:.0f} s")
            view.counters[ch] = (seen, v)

    # -- evaluation -----------------------------------------------------------------
    def conditions(self, site_id: str, now: dt.datetime, month_to_date: dict | None) -> list[Condition]:
        site = self.sites[site_id]
        out: list[Condition] = []
        with self.lock:
            gateways = self.gateways[site_id]
            for gw, g in gateways.items():
                if g["state"] == "offline":
                    out.append(Condition(site_id, gw, "gateway_offline", "last will: the gateway is offline"))
            online = gateways.get(site.gateway, {}).get("state") != "offline"
            for view in self.devices[site_id].values():
                state, reason, _ = view.health.current(now, online)
                if state in ALARM_OF_STATE:
                    out.append(Condition(site_id, view.id, ALARM_OF_STATE[state], reason))
                if online:
                    out.extend(view.conditions.values())
        out += calibration_conditions(site, now.astimezone(site.zone).date())
        out += completeness_conditions(site, month_to_date)
        return out

    def snapshot(self, site_id: str, now: dt.datetime) -> dict:
        with self.lock:
            gateways = {k: _gateway_fields(v, now) for k, v in self.gateways[site_id].items()}
            online = gateways.get(self.sites[site_id].gateway, {}).get("state") != "offline"
            devices = [{
                "id": v.id, "kind": v.kind, "gateway": v.gateway, **_state_fields(v.health.current(now, online)),
                "last_seen": v.last_seen.isoformat() if v.last_seen else None, "status": v.status,
                "values": v.values, "quality": v.quality,
            } for v in self.devices[site_id].values()]
        return {"gateways": gateways, "devices": devices}


def _gateway_fields(g: dict, now: dt.datetime) -> dict:
    """A gateway's status as last heard, ``stale`` when an "online" one has not been refreshed
    for ``STALE_STATUS_PERIODS`` status periods (of our clock: when we heard it)."""
    out = {k: v for k, v in g.items() if k != "heard"}
    heard, silent = g.get("heard"), STALE_STATUS_PERIODS * topics.STATUS_EVERY_S
    if g["state"] == "online" and heard is not None and (now - heard).total_seconds() > silent:
        out["state"] = "stale"
        out["state_reason"] = f"no status since {heard.isoformat(timespec='seconds')}"
    return out


def _state_fields(current: tuple[str, str, dt.datetime | None]) -> dict:
    state, reason, since = current
    return {"state": state, "state_reason": reason, "state_since": since.isoformat() if since else None}
