"""Property-based: arbitrary bytes, arbitrary JSON trees, near-valid readings with one
field mutated and the known hostile messages, interleaved with valid readings, published
on a reading topic of a real Mosquitto to the real collector (SQLite, and InfluxDB
1.6.7). After every example: the collector still runs, every valid reading is stored
once, and every other message is either a dead letter with a reason (found by its
SHA-256) or, if the mutation left it valid, stored.

``JCM_FUZZ_EXAMPLES`` raises the example count for a long run."""

import datetime as dt
import hashlib
import itertools
import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.service import Collector
from contract import topics
from jcm.broker import Mosquitto
from store import open_store
from tests.conftest import fuzz_examples, tcp_device, write_site
from tests.test_collector import DEVICES, T0, Publisher, config, running, wait_until
from tests.test_collector_hostile import TRIGGERS

json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_tree = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=4)
                         | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=16)
FIELDS = ["schema", "site", "gateway", "device", "seq", "ts", "values", "quality", "units", "status",
          "values.energy_import", "values.active_power", "values.other", "quality.active_power", "units.energy_import"]

message = st.one_of(
    st.tuples(st.just("valid")),
    st.tuples(st.just("bytes"), st.binary(max_size=200)),
    st.tuples(st.just("tree"), json_tree, st.booleans()),
    st.tuples(st.just("mutant"), st.sampled_from(FIELDS), st.none() | json_tree, st.booleans()),
    st.tuples(st.just("trigger"), st.sampled_from(sorted(TRIGGERS))),
)


def reading_body(i: int) -> dict:
    return {"schema": 1, "site": "test-site", "gateway": "gw-test", "device": DEVICES[i % len(DEVICES)], "seq": i,
            "ts": (T0 + dt.timedelta(seconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "values": {"energy_import": 1000.0 + i, "active_power": 5.0}, "units": {"energy_import": "kWh"}}


def render(kind: tuple, i: int) -> bytes:
    """The payload of one generated message; ``i`` makes a reading's point unique."""
    if kind[0] == "valid":
        return json.dumps(reading_body(i)).encode()
    if kind[0] == "bytes":
        return kind[1]
    if kind[0] == "tree":  # ensure_ascii=False writes lone surrogates raw: invalid UTF-8
        return json.dumps(kind[1], ensure_ascii=kind[2]).encode("utf-8", "surrogatepass")
    if kind[0] == "trigger":
        return TRIGGERS[kind[1]][1]
    _, field, value, delete = kind
    body = reading_body(i)
    *outer, key = field.split(".")
    target = body.setdefault(outer[0], {}) if outer else body
    if delete:
        target.pop(key, None)
    else:
        target[key] = value
    return json.dumps(body).encode("utf-8", "surrogatepass")



@pytest.mark.fuzz
def test_no_message_stops_ingestion_or_is_lost(tmp_path, store_url):
    broker = Mosquitto(tmp_path / "mosquitto").start()
    sites = write_site(tmp_path, [tcp_device(d, "power_meter_3ph", 1502, unit_id=n + 1)
                                  for n, d in enumerate(DEVICES)]).parent
    c = Collector(config(broker, store_url, sites, batch_timeout=0.05,
                         dead_letters_per_window=1_000_000))  # every refused message kept whole, to match each one
    c.start()
    pub = Publisher(broker)
    store = open_store(store_url)
    points = itertools.count(1)
    try:
        running(c, pub)

        @settings(max_examples=fuzz_examples(25), deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(message, min_size=1, max_size=8))
        def one_example(kinds):
            sent = [(kind, i, render(kind, i)) for kind, i in zip(kinds, points)]
            stored, dead = c.stored, c.dead
            pub.send([(topics.reading("test-site", "gw-test", DEVICES[i % len(DEVICES)]), body) for _, i, body in sent])
            assert wait_until(lambda: c.stored + c.dead - stored - dead >= len(sent), 20), "messages unaccounted for"
            assert c.failure is None and c.alive()
            assert c.stored + c.dead - stored - dead == len(sent)  # each message once: stored or a dead letter
            letters = store.dead_letters(c.dead - dead) if c.dead > dead else []
            assert all(d.reason for d in letters)
            kept = Counter(d.sha256 for d in letters)
            for kind, i, body in sent:
                ts, device = T0 + dt.timedelta(seconds=i), DEVICES[i % len(DEVICES)]
                frame = store.read("test-site", ts, ts + dt.timedelta(milliseconds=1), devices=[device])
                sha = hashlib.sha256(body).hexdigest()
                if kind[0] == "valid":
                    assert sorted(frame.channel) == ["active_power", "energy_import"], frame
                    assert frame.set_index("channel")["value"]["energy_import"] == 1000.0 + i
                elif kind[0] != "mutant" or not len(frame):  # a mutation may leave a valid reading
                    assert kept[sha] > 0, (kind, body[:200])
                    kept[sha] -= 1

        one_example()
    finally:
        c.stop()
        pub.close()
        store.close()
        broker.stop()
