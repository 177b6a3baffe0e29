"""What the collector does per line of a backlog's batch beyond checking the line: on the
batch stream it is the whole of a collector's cost (the broker's work is one message a batch)."""

import dataclasses
import datetime as dt

import collector.service
import contract.custody
import contract.topics
from collector.service import Collector, Incoming
from contract import batch, topics
from contract.config import CollectorConfig
from contract.message import Reading
from tests.conftest import tcp_device, write_site

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def line(seq: int) -> bytes:
    return Reading(site="test-site", gateway="gw-test", device="m1", ts=T0 + dt.timedelta(seconds=seq),
                   values={"energy_import": 1000.0 + seq}, seq=seq, epoch="0123456789abcdef").to_json().encode()


def test_an_unsigned_batch_costs_no_chain_check_no_reading_topic_parse_and_no_copy_per_line(tmp_path, monkeypatch):
    """Each line of an unsigned batch went through the chain check (a malformed-signature verdict
    made and thrown away), had its batch topic tried as a reading topic first (an exception) and
    its delivery copied by ``dataclasses.replace``: ~3.5 of the checker's ~18 us a reading."""
    sites_dir = write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", 1502)]).parent
    c = Collector(CollectorConfig(broker={"url": "mqtt://127.0.0.1:1"}, store=f"sqlite:///{tmp_path}/jcm.db",
                                  sites_dir=str(sites_dir)))
    calls = {"chain": 0, "reading topic": 0, "replace": 0}

    def counted(name, f):
        def call(*args, **kwargs):
            calls[name] += 1
            return f(*args, **kwargs)
        return call
    monkeypatch.setattr(contract.custody, "_chained", counted("chain", contract.custody._chained))
    monkeypatch.setattr(contract.topics, "parse_reading", counted("reading topic", contract.topics.parse_reading))
    copy = counted("replace", dataclasses.replace)
    monkeypatch.setattr(dataclasses, "replace", copy)
    monkeypatch.setattr(collector.service, "replace", copy, raising=False)  # had it been imported by name
    lines = [line(s) for s in range(1, 501)] + [line(501).replace(b'"seq":501', b'"seq":"x"')]
    payload, n = batch.pack(lines)
    assert n == len(lines)
    checked = c._check([Incoming(1, 1, 1, topics.batch("test-site", "gw-test"), payload, dt.datetime.now(dt.UTC))])
    assert [r.seq for r in checked.readings] == list(range(1, 501))
    assert [d.payload for d in checked.letters] == lines[-1:] and "malformed" in checked.letters[0].reason
    assert calls == {"chain": 0, "reading topic": 0, "replace": 0}
    c.store.close()


def test_a_signed_batch_line_is_read_once(tmp_path, monkeypatch):
    """Each line of a signed batch was read by its custody check (from its signed bytes) and
    again by validation (from the same bytes with the signature): ~10 of the checker's ~33 us a
    reading on a signed backlog. The reading the custody check made is used."""
    from tests.test_collector_custody import chain, sites
    c = Collector(CollectorConfig(broker={"url": "mqtt://127.0.0.1:1"}, store=f"sqlite:///{tmp_path}/jcm.db",
                                  sites_dir=str(sites(tmp_path, require=True))))
    reads = {"n": 0}
    from_json = Reading.from_json.__func__

    def counted(cls, payload):
        reads["n"] += 1
        return from_json(cls, payload)
    monkeypatch.setattr(Reading, "from_json", classmethod(counted))
    messages = [m for _, m in chain(range(1, 201)).values()]
    payload, n = batch.pack(messages)
    assert n == len(messages)
    checked = c._check([Incoming(1, 1, 1, topics.batch("test-site", "gw-test"), payload, dt.datetime.now(dt.UTC))])
    assert [r.seq for r in checked.readings] == list(range(1, 201)) and not checked.letters
    assert len(checked.signed) == 200
    assert reads["n"] == 200
    c.store.close()
