"""Simulated history: what a site's meters would have recorded over past days, from the
same plant physics the live simulators serve, at the monitoring plan's recording
interval. For the demo and the processing tests: it gives the processor complete past
months to verify. Every reading it makes carries the channel ``simulated = 1``."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator

from contract.config.site import Site
from contract.message import Reading
from simulators.plants import Plant, plant_for

SIMULATED_CHANNEL = "simulated"


def history(site: Site, first: dt.date, last: dt.date | None = None, step_s: float = 900.0,
            channels: set[str] | None = None, until: dt.datetime | None = None,
            plant: Plant | None = None,
            progress: Callable[[int, int], None] | None = None) -> Iterator[list[Reading]]:
    """Readings of every device from local midnight of ``first`` to the end of ``last``
    (or to ``until``), one batch per time step. ``channels`` limits what is kept
    (default: all). Pass ``plant`` to keep using its counters afterwards (the demo hands
    it to the live simulator, so that history and live readings join up). ``progress``
    is called with (time steps done, time steps in all) after each batch is consumed."""
    start = dt.datetime.combine(first, dt.time(), tzinfo=site.zone).astimezone(dt.UTC)
    if until is not None:
        end = until
    else:
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=site.zone).astimezone(dt.UTC)
    plant = plant or plant_for(site, start)
    t = start
    step = dt.timedelta(seconds=step_s)
    total, done = max(0, math.ceil((end - start) / step)), 0
    while t < end:
        batch = []
        for device in site.devices:
            values = plant.values(device, t)
            wanted = {p.channel for p in device.register_map.points if channels is None or p.channel in channels}
            if not wanted:
                continue
            kept = {k: (float(v) if isinstance(v, (int, float, bool)) else v) for k, v in values.items() if k in wanted}
            for p in device.register_map.points:
                if p.kind.value == "counter" and p.channel in kept and p.rollover:
                    kept[p.channel] = kept[p.channel] % p.rollover  # the register wraps as the meter's does
            kept[SIMULATED_CHANNEL] = 1.0
            batch.append(Reading(site=site.site, gateway=site.gateway, device=device.id, ts=t, values=kept,
                                 units={p.channel: p.unit for p in device.register_map.points if p.channel in kept}))
        yield batch
        t += step
        done += 1
        if progress is not None:
            progress(done, total)
