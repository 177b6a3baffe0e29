"""The fleet overview's figures that are pure functions of a site's config and its live
state: power now against the nameplate, and how much a site needs attention."""

from __future__ import annotations

from contract import units
from contract.config.site import Site
from liveview.main_channels import POWER_CHANNEL

#: attention levels, most urgent first (the overview sorts by them); low power alone is
#: none (a PV plant at night), the overview shows it beside the nameplate instead
ATTENTION = ("gateway_down", "devices_down", "alarms", "ok")


def _kw(value, unit: str) -> float | None:
    try:
        return float(value) * float(units.ratio(unit, "kW"))
    except (ValueError, TypeError, OverflowError):
        return None  # not a power, or no number


def power_sources(site: Site) -> list[tuple[str, str, float]]:
    """The channels whose sum is the site's power now: ``(device, channel, sign)``.

    The first monitored parameter is the site's main output: its ``power_source`` when
    the monitoring plan names one, otherwise the power channel of each of its meters."""
    if not site.monitoring:
        return []
    main = site.monitoring[0]
    if main.power_source:
        device, channel = main.power_source.split(".")
        return [(device, channel, main.power_sign)]
    out = []
    for src in main.sources:
        device = src.split(".")[0]
        channel = POWER_CHANNEL.get(site.device(device).kind)
        if channel:
            out.append((device, channel, 1.0))
    return out


def capacity_kw(site: Site) -> float | None:
    """The nameplate capacity of the devices that give the power now [kW]; ``None``
    when the site file rates none of them in a power unit."""
    devices = {d for d, _, _ in power_sources(site)}
    rated = [_kw(r.capacity, r.unit) for r in site.nameplate.ratings if r.device in devices]
    rated = [r for r in rated if r is not None]
    return sum(rated) if rated else None


def power_now_kw(site: Site, devices: list[dict]) -> float | None:
    """The site's power now [kW] from the live snapshot's devices; ``None`` when a
    source has no live value (offline, stale or never heard) or its gateway flags it (out of
    its valid range: kept as evidence, not a figure)."""
    live = {d["id"]: d for d in devices}
    total, seen = 0.0, False
    for device, channel, sign in power_sources(site):
        d = live.get(device)
        value = (d or {}).get("values", {}).get(channel)
        if d is None or d["state"] not in ("online", "faulted") or not isinstance(value, (int, float)) \
                or d.get("quality", {}).get(channel):
            return None
        kw = _kw(value, site.device(device).register_map.point(channel).unit)
        if kw is None:
            return None
        total, seen = total + sign * kw, True
    return total if seen else None


def attention(gateway_state: str, device_states: dict[str, int], active_alarms: int) -> str:
    """How much a site needs attention: one of ``ATTENTION``, most urgent first."""
    if gateway_state != "online":  # offline, or never heard from
        return "gateway_down"
    if any(device_states.get(s) for s in ("offline", "stale", "faulted")):
        return "devices_down"
    return "alarms" if active_alarms else "ok"
