"""Decide whether a message is a reading we can store, and if not, say why.

Every rejection reason names what was wrong so that the dead-letter list is a to-do
list for whoever fixes the sender.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass

from contract import topics
from contract.config import ConfigError
from contract.config.site import Site
from contract.future_limit import too_far_ahead
from contract.message import Reading
from contract.register_fit import DeviceFit


@dataclass(frozen=True)
class SiteRules:
    gateway: str
    #: device id -> what its readings may carry (its register map: profile with overrides)
    devices: dict[str, DeviceFit]
    #: readings before the site's commissioning day (local midnight) are rejected
    earliest: dt.datetime


def rules_for(sites: list[Site]) -> dict[str, SiteRules]:
    """Each site's rules; ``ConfigError`` if a channel is text in one device and a number in
    another: all sites share one InfluxDB measurement, which keeps one type per field."""
    first: dict[str, tuple[bool, str]] = {}  # channel -> (text, where)
    clashes = []
    for s in sites:
        for d in s.devices:
            for p in d.register_map.points:
                text, where = p.type == "string", f"site {s.site}, device {d.id}"
                seen = first.setdefault(p.channel, (text, where))
                if seen[0] != text:
                    clashes.append(f"collector: channel '{p.channel}' is {'text' if seen[0] else 'a number'} in "
                                   f"{seen[1]} but {'text' if text else 'a number'} in {where}: a store keeps one "
                                   "type per channel name; rename one of them in its profile")
    if clashes:
        raise ConfigError("\n".join(clashes))
    out = {}
    for s in sites:
        start = dt.datetime.combine(s.commissioned, dt.time(), tzinfo=s.zone).astimezone(dt.UTC)
        out[s.site] = SiteRules(s.gateway, {d.id: DeviceFit.of(d) for d in s.devices}, start)
    return out


class Rejected(ValueError):
    """The message cannot be stored; ``str()`` is the reason."""


class WrongStamp(Rejected):
    """Refused for its stamp alone (before commissioning, or in the future): evidence of the
    gateway's clock, which ``reading`` (the message as parsed) carries."""

    def __init__(self, reason: str, reading: Reading):
        super().__init__(reason)
        self.reading = reading


def _sender(topic: str) -> tuple[str, str, str | None]:
    """(site, gateway, device) of a reading topic; of a batch topic (a line of a batch,
    contract/batch.py), device ``None``: the line names it. A batch topic is tried first: a
    batch's lines come thousands to a topic, and a failed ``parse_reading`` costs an exception."""
    if topic.endswith("/batch"):
        with contextlib.suppress(ValueError):
            return (*topics.parse_batch(topic), None)
    return topics.parse_reading(topic)


def validate(topic: str, payload: bytes, rules: dict[str, SiteRules], now: dt.datetime,
             max_bytes: int, max_future: dt.timedelta, parsed: Reading | None = None) -> Reading:
    """The reading of a message on a reading topic, or of a line of a batch on its batch topic.
    ``parsed``: the reading of ``payload`` when the caller has it already (a signed batch line's,
    read by its custody check from the same bytes without the signature)."""
    if len(payload) > max_bytes:
        raise Rejected(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        site, gateway, device = _sender(topic)
    except ValueError as exc:
        raise Rejected(str(exc)) from None
    try:
        reading = parsed or Reading.from_json(payload)
    except ValueError as exc:
        raise Rejected(f"malformed reading: {exc}") from None
    device = reading.device if device is None else device
    if (site, gateway, device) != (reading.site, reading.gateway, reading.device):
        for name, from_topic, from_payload in (("site", site, reading.site), ("gateway", gateway, reading.gateway),
                                               ("device", device, reading.device)):
            if from_topic != from_payload:
                raise Rejected(f"topic says {name} '{from_topic}' but the payload says '{from_payload}'")
    rule = rules.get(site)
    if rule is None:
        raise Rejected(f"unknown site '{site}'")
    if gateway != rule.gateway:
        raise Rejected(f"site '{site}' is served by gateway '{rule.gateway}', not '{gateway}'")
    fit = rule.devices.get(device)
    if fit is None:
        raise Rejected(f"site '{site}' has no device '{device}'")
    misfit = fit.misfit(reading.values, f"device '{device}' of site '{site}'")
    if misfit:
        raise Rejected(misfit)
    if reading.ts < rule.earliest:
        raise WrongStamp(f"timestamp {reading.ts.isoformat()} is before site '{site}' was commissioned", reading)
    if too_far_ahead(reading.ts, now, max_future.total_seconds()):
        raise WrongStamp(f"timestamp {reading.ts.isoformat()} is in the future (received "
                         f"{now.isoformat(timespec='seconds')})", reading)
    return reading
