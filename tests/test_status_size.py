"""A gateway's status stays within what the collectors read (``topics.MAX_STATUS_BYTES``) whatever
its lists hold: a status they ignore teaches them neither the epoch, the run nor the list of
collectors whose claims count."""

import time

from collector.acknowledgement import Acknowledgements
from contract import topics
from contract.config import CollectorConfig
from contract.config.site import MAX_ACKNOWLEDGED_BY
from contract.message import MAX_SEQ
from gateway.outbox import Outbox
from gateway.publisher import MAX_UNLISTED_SHOWN, Publisher
from tests.conftest import load_site, wait_until
from tests.test_end_to_end_ack import e2e_site


def _id(n: int) -> str:
    return f"{n:03d}" + "x" * 125  # the longest a collector id may be (128 characters)


def test_the_fullest_status_is_read_by_the_collectors(tmp_path, mosquitto):
    """Every list full of the longest ids, every number at its largest, and a disk error naming a path of
    4,000 characters. Before, it was over 4 KiB without the error: the collectors' acknowledgements ignored
    it, so they never learned the gateway's epoch, run or list of collectors (and kept merging the claims
    of one it no longer lists)."""
    listed = [_id(n) for n in range(MAX_ACKNOWLEDGED_BY)]
    site = load_site(e2e_site(tmp_path, acknowledged_by=listed))
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    outbox.unused = [[MAX_SEQ - 2 * n - 1, MAX_SEQ - 2 * n] for n in range(topics.MAX_UNUSED_RANGES)]
    outbox.error = str(OSError(28, "No space left on device", "/" + "\U0001f600" * 4000))
    acks = Acknowledgements(CollectorConfig(broker={"url": mosquitto.url}, store=f"sqlite:///{tmp_path}/jcm.db",
                                            sites_dir=str(tmp_path / "sites"), client_id=listed[0]),
                            [(site.site, site.gateway)], {(site.site, site.gateway): listed})
    pub = Publisher(site, outbox, broker_url=mosquitto.url)
    pub.unlisted = {**{_id(100 + n): MAX_SEQ for n in range(MAX_UNLISTED_SHOWN)}, "*": MAX_SEQ}
    pub.silent = listed
    g = acks._gateways[(site.site, site.gateway)]
    try:
        acks.start()
        time.sleep(0.3)  # subscribed
        pub.start()
        assert wait_until(lambda: g.current is not None, 5), "the collector ignored the status"
        assert (g.current, g.run, g.trusted) == (outbox.epoch, pub.run, frozenset(listed))
    finally:
        pub.stop(timeout=0)
        acks.stop()
        outbox.close()
