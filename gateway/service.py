"""The gateway process: schedule every device at its interval and feed the outbox.

Each device is polled at its own interval, on the monotonic clock (poll_schedule.py: a
wall clock stepped back or forward moves no poll), devices of one interval spread over
it so that they do not fire together. Devices behind one endpoint share its client and
its thread (they wait for each other, as they must on a shared bus); devices behind
different endpoints run in parallel.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from contract import topics
from contract.config.site import Site
from gateway.device_poller import DevicePoller
from gateway.modbus_link import ModbusLink
from gateway.outbox import Outbox, move_aside
from gateway.poll_schedule import PollSchedule
from gateway.publisher import Publisher
from gateway.signing_key import signing_key

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, site: Site, broker_url: str | None = None, outbox_path: str | None = None,
                 new_outbox: bool = False):
        self.site = site
        # first: a key that cannot be used stops the gateway before it touches anything
        signing = signing_key(site.custody)
        # then the outbox: a second gateway on it is refused before it makes a Modbus client or an MQTT one
        path = outbox_path or site.outbox.path.format(gateway=site.gateway, site=site.site)
        aside = move_aside(path) if new_outbox else None
        self.outbox = Outbox(path, site.outbox.max_rows, memory_rows=site.outbox.memory_rows, signing=signing)
        self.links: dict[str, ModbusLink] = {}
        for d in site.devices:
            self.links.setdefault(d.connection.endpoint, ModbusLink(d.connection))
        self.pollers = [DevicePoller(site, d, self.links[d.connection.endpoint]) for d in site.devices]
        if new_outbox:
            log.warning("gateway %s: %s; a new outbox starts sequence epoch %s: its sequence starts again at 1",
                        site.gateway, f"moved the outbox {path} aside to {aside} (kept, not deleted)" if aside
                        else f"there was no outbox at {path}", self.outbox.epoch)
        self.publisher = Publisher(site, self.outbox, broker_url=broker_url)
        self.outbox.on_commit = self.publisher.notify
        self.scheduler = PollSchedule(
            [(f"{site.site}/{p.device.id}", p.link.endpoint, p.device.poll_interval, lambda p=p: self.poll_device(p))
             for p in self.pollers])
        self.polls = 0
        self._count_lock = threading.Lock()

    def poll_device(self, poller: DevicePoller) -> None:
        try:
            reading = poller.poll()
            if reading is None:
                return
            topic = topics.reading(reading.site, reading.gateway, reading.device)
            epoch = self.outbox.epoch
            # numbered, rendered, signed and committed by the outbox's committer: the poll
            # thread never waits on the disk
            self.outbox.put(topic, lambda seq: replace(reading, seq=seq, epoch=epoch).to_json())
            with self._count_lock:
                self.polls += 1
            log.debug("%s/%s: polled, %s", self.site.site, poller.device.id, reading.status.value)
        except Exception:  # one poll's failure must not stop the next
            log.exception("%s/%s: poll failed", self.site.site, poller.device.id)

    def start(self) -> None:
        self.publisher.start()
        self.scheduler.start()
        log.info("gateway %s: polling %d devices on %d endpoints", self.site.gateway, len(self.pollers), len(self.links))

    def stop(self) -> None:
        self.scheduler.shutdown()
        self.outbox.flush()  # the last polls' rows, for the publisher to deliver before it stops
        self.publisher.stop()
        for link in self.links.values():
            link.close()
        self.outbox.close()

