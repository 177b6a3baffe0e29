"""Poll one device: run its read plan, decode, flag, and back off when it is dead.

Failures are isolated per point: a rejected merged read is split and only the
points that the device still rejects are flagged. A device that answers nothing
is retried after a growing pause so that it does not hold a shared bus.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from contract.config.site import Device, Site
from contract.message import DeviceStatus, Quality, Reading
from gateway.modbus_link import DeviceRejected, LinkDown, ModbusLink
from gateway.read_plan import Request, plan_requests, split
from gateway.register_map import decode_points

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0


class DevicePoller:
    def __init__(self, site: Site, device: Device, link: ModbusLink, clock=time.monotonic):
        self.site, self.device, self.link = site, device, link
        self.profile = device.register_map
        self.plan: list[Request] = plan_requests(list(self.profile.points), self.profile.max_gap)
        self.units = {p.channel: p.unit for p in self.profile.points}
        self.failures = 0  # consecutive polls that read nothing
        self.retry_at = 0.0
        self._clock = clock

    @property
    def requests_per_poll(self) -> int:
        return len(self.plan)

    def poll(self) -> Reading | None:
        """Read the device once; ``None`` while it is backed off."""
        now = self._clock()
        if now < self.retry_at:
            return None
        ts = dt.datetime.now(dt.UTC)
        values: dict = {}
        quality: dict[str, Quality] = {}
        link_down: LinkDown | None = None
        new_plan: list[Request] = []
        pending = list(self.plan)
        while pending:
            request = pending.pop(0)
            if link_down is not None:
                self._flag(request, link_down.quality, values, quality)
                new_plan.append(request)
                continue
            try:
                block = self.link.read(request.table, request.start, request.count, self.device.connection.unit_id)
            except DeviceRejected as exc:
                parts = split(request) if exc.quality is Quality.illegal_address else [request]
                if len(parts) > 1:
                    log.info("%s/%s: %s at %s %d+%d, splitting the read", self.site.site, self.device.id,
                             exc, request.table, request.start, request.count)
                    pending[:0] = parts
                    continue
                log.warning("%s/%s: %s for %s", self.site.site, self.device.id, exc,
                            ", ".join(p.channel for p in request.points))
                self._flag(request, exc.quality, values, quality)
                new_plan.append(request)
                continue
            except LinkDown as exc:
                link_down = exc
                self._flag(request, exc.quality, values, quality)
                new_plan.append(request)
                continue
            new_plan.append(request)
            points = request.points
            for point, (value, q) in zip(points, decode_points(points, self.profile, request.start, block)):
                values[point.channel] = value
                if q is not None:
                    quality[point.channel] = q
        self.plan = new_plan
        status = self._status(values, quality, link_down)
        self._update_backoff(status, link_down, self._clock())
        return Reading(
            site=self.site.site, gateway=self.site.gateway, device=self.device.id, ts=ts,
            values=values, quality=quality, units=self.units, status=status,
        )

    @staticmethod
    def _flag(request: Request, q: Quality, values: dict, quality: dict) -> None:
        for point in request.points:
            values[point.channel] = None
            quality[point.channel] = q

    def _status(self, values: dict, quality: dict, link_down: LinkDown | None) -> DeviceStatus:
        failed = {c for c, q in quality.items() if values.get(c) is None and q is not Quality.not_implemented}
        if link_down is not None and len(failed) == len(values):
            return DeviceStatus.offline
        if not failed:
            return DeviceStatus.ok
        return DeviceStatus.offline if len(failed) == len(values) else DeviceStatus.degraded

    def _update_backoff(self, status: DeviceStatus, link_down: LinkDown | None, now: float) -> None:
        if status is not DeviceStatus.offline or link_down is None:
            if self.failures:
                log.info("%s/%s: answering again after %d failed polls", self.site.site, self.device.id, self.failures)
            self.failures = 0
            self.retry_at = 0.0
            return
        self.failures += 1
        pause = min(MAX_BACKOFF_S, self.device.poll_interval * 2 ** (self.failures - 1))
        self.retry_at = now + pause - self.device.poll_interval / 2  # the next due poll after the pause
        log.warning("%s/%s: no answer (%s), %d in a row; next try in %.0f s",
                    self.site.site, self.device.id, link_down, self.failures, pause)
