"""A gateway's clock against the collector's, behind a real Mosquitto with the real
collector: a clock 3 h behind, one ahead, and a jump to 2000-01-01 and back are clock
findings in both stores whose readings the processor does not credit (the month needs
review); a backlog a day old from a gateway whose clock is right is none."""

import datetime as dt
import logging
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector.clock_offset import ClockWatch
from collector.service import Collector
from contract import topics
from contract.custody import GENESIS, chain_hash, sign
from contract.message import Reading
from contract.store import CustodyFinding, SequenceFinding, SignedMessage
from liveview.alarms import sequence_conditions
from processing.period import PeriodProcessor, flag_wrong_clock, sequence_findings, wrong_clock_spans
from store import open_store
from store.sqlite_store import SqliteStore, to_ms
from tests.conftest import fill_history, reference_site, tcp_device, wait_until, write_site
from tests.test_collector import Publisher, config

E1 = "0123456789abcdef"
WINDOW = 1.5  # the collector's clock_window_s in these tests [s]
T_NOTICED = dt.datetime(2026, 11, 3, tzinfo=dt.UTC)


@pytest.fixture
def sites_dir(tmp_path):
    return write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", 1502)]).parent



def message(seq: int, ts: dt.datetime) -> tuple[str, bytes]:
    r = Reading(site="test-site", gateway="gw-test", device="m1", ts=ts, values={"energy_import": 1000.0 + seq},
                seq=seq, epoch=E1)
    return topics.reading("test-site", "gw-test", "m1"), r.to_json().encode()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Gateway:
    """A gateway stand-in on a real paho client: each reading is stamped by its clock
    (the true time plus ``offset``) when it is sent, as the live lane does."""

    def __init__(self, broker):
        self.pub = Publisher(broker)
        self.seq = 0
        self.sent: dict[int, dt.datetime] = {}  # seq -> stamp

    def live(self, seconds: float, offset: dt.timedelta = dt.timedelta(), every: float = 0.05) -> range:
        first = self.seq + 1
        end = time.monotonic() + seconds
        while True:
            self.send(now() + offset)
            if time.monotonic() >= end:
                return range(first, self.seq + 1)
            time.sleep(every)

    def send(self, ts: dt.datetime) -> None:
        self.seq += 1
        self.sent[self.seq] = ts
        self.pub.send([message(self.seq, ts)])


def collector(broker, store_url, sites_dir, **extra) -> Collector:
    c = Collector(config(broker, store_url, sites_dir, **{"clock_window_s": WINDOW, **extra}))
    c.start()
    return c


def clock_findings(store_url: str) -> list[SequenceFinding]:
    store = open_store(store_url)
    try:
        return [f for f in store.sequence_findings("test-site") if f.kind == "clock"]
    finally:
        store.close()


def started(c: Collector, gw: Gateway) -> None:
    """Wait until the collector's subscription is in place: a right-clock probe lands (the
    broker drops what is published before it)."""
    assert wait_until(lambda: gw.send(now()) or c.stored >= 1, 10)
    time.sleep(0.3)
    gw.lost = gw.seq - c.stored


def all_stored(c: Collector, gw: Gateway) -> bool:
    return wait_until(lambda: c.stored >= gw.seq - gw.lost, 20)


def test_a_clock_3_h_behind_is_one_finding_its_readings_flagged_until_it_is_right(
        mosquitto, sites_dir, store_url, caplog):
    c = collector(mosquitto, store_url, sites_dir)
    gw = Gateway(mosquitto)
    try:
        started(c, gw)
        with caplog.at_level(logging.INFO, logger="collector.clock_offset"):
            wrong = gw.live(WINDOW + 1.5, offset=-dt.timedelta(hours=3))
            gw.live(0.3)  # NTP set it right
            assert all_stored(c, gw)
            assert wait_until(lambda: [f.resolved for f in clock_findings(store_url)] not in ([], [None]), 10)
    finally:
        c.stop()
        gw.pub.close()
    [f] = clock_findings(store_url)
    assert (f.gateway, f.epoch, f.first, f.last) == ("gw-test", E1, wrong[0], wrong[-1])
    assert abs(f.start - gw.sent[wrong[0]]) < dt.timedelta(milliseconds=2)
    assert abs(f.end - gw.sent[wrong[-1]]) < dt.timedelta(milliseconds=2)
    assert "3.0 h behind" in f.cause and f.resolved is not None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3.0 h behind" in warnings[0].getMessage()  # once per episode
    # what the processor reads: the readings the wrong clock stamped are flagged, no others
    store = open_store(store_url)
    try:
        frame = store.read_sources("test-site", f.start - dt.timedelta(hours=1), now() + dt.timedelta(minutes=1),
                                   ["m1.energy_import"])["m1.energy_import"]
    finally:
        store.close()
    flagged = flag_wrong_clock(frame, wrong_clock_spans([f]))
    values = {int(v) - 1000 for v in flagged.loc[flagged["quality"] == "wrong_clock", "value"]}
    assert values == set(wrong) and len(frame) == c.stored, (set(wrong) - values, values - set(wrong))


def test_a_restarted_collector_ends_the_episode_the_store_holds_open(mosquitto, sites_dir, tmp_path, caplog):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    c = collector(mosquitto, store_url, sites_dir)
    gw = Gateway(mosquitto)
    try:
        started(c, gw)
        wrong = gw.live(WINDOW + 1.5, offset=-dt.timedelta(hours=3))
        assert wait_until(lambda: [f.last for f in clock_findings(store_url)] == [wrong[-1]], 10)
    finally:
        c.stop()
    told = len(caplog.records)
    c = collector(mosquitto, store_url, sites_dir, client_id="jcm-collector-2")
    try:
        with caplog.at_level(logging.WARNING, logger="collector.clock_offset"):
            more = gw.live(0.5, offset=-dt.timedelta(hours=3))  # still wrong: the same finding grows
            assert wait_until(lambda: [f.last for f in clock_findings(store_url)] == [more[-1]], 10)
            gw.live(0.3)
            assert wait_until(lambda: [f.resolved is None for f in clock_findings(store_url)] == [False], 10)
    finally:
        c.stop()
        gw.pub.close()
    [f] = clock_findings(store_url)
    assert (f.first, f.last) == (wrong[0], more[-1]) and "3.0 h behind" in f.cause
    assert not [r for r in caplog.records[told:] if r.levelno >= logging.WARNING]  # told once, by the first


@pytest.mark.parametrize("live", [True, False], ids=["beside-live-readings", "queued-alone"])
def test_a_day_old_backlog_from_a_right_clock_is_no_finding(mosquitto, sites_dir, tmp_path, live):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    c = collector(mosquitto, store_url, sites_dir)
    gw = Gateway(mosquitto)
    try:
        started(c, gw)
        old = now() - dt.timedelta(days=1)
        end = time.monotonic() + WINDOW * 2 + 0.5
        i = 0
        while time.monotonic() < end:  # the backlog lane: oldest first, faster than real time
            gw.send(old + dt.timedelta(seconds=10 * i))
            i += 1
            if live and i % 10 == 0:
                gw.send(now())
            time.sleep(0.01)
        gw.live(0.3)
        assert all_stored(c, gw)
        time.sleep(0.3)
    finally:
        c.stop()
        gw.pub.close()
    assert clock_findings(store_url) == []


def test_the_brokers_queue_while_the_collector_was_away_is_no_finding(mosquitto, sites_dir, tmp_path):
    """Readings the broker kept for the collector's session arrive late in a burst, then live ones."""
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    c = collector(mosquitto, store_url, sites_dir, clock_offset_max_s=1)
    gw = Gateway(mosquitto)
    try:
        started(c, gw)
        c.stop()
        gw.live(4)  # queued by the broker: up to 4 s late, beyond the bound of 1 s
        stored = c.stored
        c = collector(mosquitto, store_url, sites_dir, clock_offset_max_s=1)
        assert wait_until(lambda: c.stored >= gw.seq - gw.lost - stored, 20)
        gw.live(WINDOW + 0.5)
        assert wait_until(lambda: c.stored >= gw.seq - gw.lost - stored, 20)
    finally:
        c.stop()
        gw.pub.close()
    assert clock_findings(store_url) == []


def test_a_clock_ahead_is_a_finding_at_once(mosquitto, sites_dir, tmp_path):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    c = collector(mosquitto, store_url, sites_dir, clock_window_s=3600)
    gw = Gateway(mosquitto)
    try:
        started(c, gw)
        ahead = gw.live(0.2, offset=dt.timedelta(seconds=200))  # beyond the bound, within max_future_s
        assert wait_until(lambda: [f.last for f in clock_findings(store_url)] == [ahead[-1]], 10)
        [f] = clock_findings(store_url)
        assert (f.first, f.last, f.resolved) == (ahead[0], ahead[-1], None) and "200 s ahead of" in f.cause
        assert [a.kind for a in sequence_conditions([f], now())] == ["clock_offset"]  # a live view alarm
    finally:
        c.stop()
        gw.pub.close()


def test_a_jump_to_2000_and_back_is_flagged_in_both_months(mosquitto, sites_dir, tmp_path):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    c = collector(mosquitto, store_url, sites_dir)
    gw = Gateway(mosquitto)
    try:
        started(c, gw)
        boot = dt.datetime(2000, 1, 1, tzinfo=dt.UTC) - now()  # rebooted without a real-time clock
        wrong = gw.live(WINDOW + 1.5, offset=boot)
        gw.live(0.3)
        assert wait_until(lambda: [f.resolved for f in clock_findings(store_url)] not in ([], [None]), 20)
    finally:
        c.stop()
        gw.pub.close()
    [f] = clock_findings(store_url)  # its readings are dead letters (before commissioning): evidence all the same
    assert (f.first, f.last) == (wrong[0], wrong[-1]) and f.start.year == 2000 and "days behind" in f.cause
    stamped = sequence_findings([f], dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2000, 2, 1, tzinfo=dt.UTC))
    month = now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    received = sequence_findings([f], month, month + dt.timedelta(days=31))
    assert [x.check for x in stamped + received] == ["wrong_clock", "wrong_clock"]
    assert all(x.severity == "review" for x in stamped + received)


def test_the_processor_does_not_credit_readings_a_clock_finding_covers(tmp_path):
    """ER as if the covered readings were missing; the month needs review with the reason."""
    site = reference_site("mn-solar")
    first, last = dt.date(2026, 10, 10), dt.date(2026, 10, 12)
    start = dt.datetime(2026, 10, 10, 4, tzinfo=dt.UTC)  # noon to noon local: the split across midnight is unknown
    end = start + dt.timedelta(hours=24)
    flagged, missing = SqliteStore(tmp_path / "flagged.db"), SqliteStore(tmp_path / "missing.db")
    for store in (flagged, missing):
        fill_history(store, site, first - dt.timedelta(days=1), last + dt.timedelta(days=1))
    before = PeriodProcessor(site).process(flagged, first, last)
    flagged.record_finding(SequenceFinding("clock", site.site, site.gateway, E1, 100, 131, end, "3 h behind",
                                           start=start, end=end, resolved=end))
    missing._db.execute("DELETE FROM readings WHERE ts >= ? AND ts <= ?", (to_ms(start), to_ms(end)))
    r = PeriodProcessor(site).process(flagged, first, last)
    as_missing = PeriodProcessor(site).process(missing, first, last)
    assert before.status == "verified" and r.status == "needs_review"
    assert any("wrong_clock" in reason and "3 h behind" in reason for reason in r.reasons), r.reasons
    assert r.parameters == as_missing.parameters and r.calc.ER == as_missing.calc.ER
    assert r.parameters != before.parameters
    assert r.input_hash != before.input_hash  # so the ledger gets a new revision


def test_influxdb_keeps_each_readings_millisecond(influxdb):
    """The stamp ranges of findings are compared with stored stamps: a store that moves a reading
    by 1 ms takes it out of the range (InfluxDB's client wrote one reading in eight 1 ms early)."""
    store = open_store(f"influxdb://127.0.0.1:{influxdb.port}?api=v1&db=jcm&timeout=5")
    t0 = dt.datetime(2026, 11, 29, 18, 24, 28, tzinfo=dt.UTC)
    stamps = [t0 + dt.timedelta(milliseconds=ms) for ms in (2, 10, 965)]
    try:
        store.write([Reading.from_json(message(i + 1, ts)[1]) for i, ts in enumerate(stamps)])
        frame = store.read_sources("test-site", t0, t0 + dt.timedelta(seconds=1), ["m1.energy_import"])
    finally:
        store.close()
    assert list(frame["m1.energy_import"]["ts"]) == stamps


def test_a_custody_finding_about_a_periods_reading_makes_it_need_review(tmp_path):
    site = reference_site("mn-solar")
    first, last = dt.date(2026, 10, 10), dt.date(2026, 10, 12)
    store = SqliteStore(tmp_path / "jcm.db")
    fill_history(store, site, first - dt.timedelta(days=1), last + dt.timedelta(days=1))
    key = Ed25519PrivateKey.generate()
    chain, prev = [], GENESIS
    for seq, ts in ((41, dt.datetime(2026, 10, 11, 4, tzinfo=dt.UTC)), (42, dt.datetime(2026, 11, 2, tzinfo=dt.UTC))):
        r = Reading(site=site.site, gateway=site.gateway, device="inv-01", ts=ts, values={"ac_power": 1.0}, seq=seq,
                    epoch=E1)
        raw = sign(r.to_json(), prev, "k1", key)
        chain.append(SignedMessage(r.site, r.gateway, E1, seq, ts, chain_hash(raw), prev, "k1", raw))
        prev = chain_hash(raw)
    store.write([], [], chain)
    before = PeriodProcessor(site).process(store, first, last)
    store.record_custody_finding(CustodyFinding("wrong_prev", site.site, site.gateway, E1, 41, chain[0].ts, T_NOTICED,
                                                "its prev is not the hash of seq 40"))
    store.record_custody_finding(CustodyFinding("conflict", site.site, site.gateway, E1, 42, chain[1].ts, T_NOTICED,
                                                "another month's reading"))
    r = PeriodProcessor(site).process(store, first, last)
    assert before.status == "verified" and r.status == "needs_review"
    [reason] = [x for x in r.reasons if "custody" in x]
    assert "custody_wrong_prev" in reason and "seq 41" in reason and "not the hash of seq 40" in reason
    assert r.input_hash != before.input_hash and r.parameters == before.parameters


@pytest.mark.parametrize("direction", [-1, 1], ids=["falling-behind", "running-ahead"])
def test_a_slowly_drifting_clock_is_flagged_once_past_the_bound(tmp_path, direction):
    """2000 ppm (a bad oscillator) for two days: readings every 10 s, judged with the defaults
    (bound 120 s, window 300 s). Behind is judged after the window, and covers it."""
    store = SqliteStore(tmp_path / "jcm.db")
    watch = ClockWatch(store, bound_s=120, window_s=300)
    t0, step, ppm = dt.datetime(2026, 11, 1, tzinfo=dt.UTC), 10.0, 2000e-6
    readings = []
    for i in range(18_000):
        at = t0 + dt.timedelta(seconds=i * step)
        ts = at + dt.timedelta(seconds=direction * ppm * i * step)
        readings.append((Reading(site="s", gateway="g", device="d", ts=ts, values={"v": 1.0}, seq=i + 1,
                                 epoch=E1), at))
    for i in range(0, len(readings), 500):
        watch.received(readings[i:i + 500])
    [f] = [f for f in store.sequence_findings("s") if f.kind == "clock"]
    crossed = next(i for i, (r, at) in enumerate(readings) if abs((r.ts - at).total_seconds()) > 120)
    assert (f.first, f.last, f.resolved) == (crossed + 1, len(readings), None), (crossed, f)
    assert ("behind" if direction < 0 else "ahead of") in f.cause
