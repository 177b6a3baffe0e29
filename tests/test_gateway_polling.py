"""The gateway against simulated devices over real sockets: decoding, planning and
every fault the simulator can inject."""

import datetime as dt
import time

import pytest

from contract.message import DeviceStatus, Quality
from gateway.device_poller import DevicePoller
from gateway.modbus_link import ModbusLink
from tests.conftest import free_port, load_site, tcp_device, write_site


@pytest.fixture
def site(tmp_path):
    path = write_site(tmp_path, [
        tcp_device("inv-01", "sunspec_inverter_3ph", free_port(), kind="inverter"),
        tcp_device("meter", "power_meter_3ph", free_port()),
    ])
    return load_site(path)


def poller(site, device_id):
    d = site.device(device_id)
    return DevicePoller(site, d, ModbusLink(d.connection))


def test_sunspec_inverter_decodes_end_to_end(site, simulate):
    sim = simulate(site)
    p = poller(site, "inv-01")
    r = p.poll()
    assert r.status is DeviceStatus.ok, r.quality
    assert r.values["sunspec_marker"] == "SunS"
    assert r.values["serial_number"] == "SN-inv-01"
    expected = sim.plant.values(site.device("inv-01"), r.ts)
    assert r.values["ac_energy"] == pytest.approx(expected["ac_energy"], abs=2)  # Wh, acc32 with SF 0
    assert r.values["frequency"] == pytest.approx(50.0)
    assert r.ts.tzinfo is not None and r.ts.utcoffset().total_seconds() == 0


def test_scale_factor_changes_at_run_time_are_read_with_their_value(site, simulate):
    sim = simulate(site)
    p = poller(site, "inv-01")
    for watts in (3.21, 1234.5, 2_345_000.0):  # sunrise to noon: the inverter moves W_SF from -2 to +2
        sim.overrides["inv-01"] = {"ac_power": watts}
        r = p.poll()
        assert r.values["ac_power"] == pytest.approx(watts, rel=1e-3), watts


def test_planner_uses_few_requests_and_the_server_sees_exactly_them(site, simulate):
    sim = simulate(site)
    p = poller(site, "inv-01")
    points = len(site.device("inv-01").register_map.points)
    before = sim.devices["inv-01"].requests
    p.poll()
    made = sim.devices["inv-01"].requests - before
    assert made == p.requests_per_poll
    assert made <= 2 < points  # common model + model 103 in at most two reads


def test_revenue_meter_word_swapped_floats_and_int64_counters(site, simulate):
    sim = simulate(site)
    r = poller(site, "meter").poll()
    expected = sim.plant.values(site.device("meter"), r.ts)
    assert r.status is DeviceStatus.ok
    assert r.values["voltage_l1"] == pytest.approx(expected["voltage_l1"], rel=1e-6)
    assert r.values["energy_import"] == pytest.approx(expected["energy_import"], abs=0.002)


def test_timeout_flags_every_point_and_backs_off(site, simulate):
    sim = simulate(site)
    p = poller(site, "meter")
    sim.inject("meter", "timeout")
    t0 = time.monotonic()
    r = p.poll()
    assert r.status is DeviceStatus.offline
    assert set(r.quality.values()) == {Quality.timeout}
    assert all(v is None for v in r.values.values())
    assert time.monotonic() - t0 < 1.5  # one timeout, not one per request
    assert p.poll() is None  # backed off: the immediate retry is skipped
    sim.clear()
    p.retry_at = 0
    assert p.poll().status is DeviceStatus.ok


def test_exception_response_is_a_device_error(site, simulate):
    sim = simulate(site)
    sim.inject("meter", "exception", code=4)
    r = poller(site, "meter").poll()
    assert set(r.quality.values()) == {Quality.device_error}
    assert r.status is DeviceStatus.offline


def test_rejected_point_is_isolated_and_the_split_is_remembered(site, simulate):
    sim = simulate(site)
    sim.inject("inv-01", "illegal_address", channel="dc_voltage")
    p = poller(site, "inv-01")
    r = p.poll()
    assert r.quality == {"dc_voltage": Quality.illegal_address}
    assert r.values["dc_voltage"] is None
    assert r.values["ac_power"] is not None and r.values["serial_number"] == "SN-inv-01"
    assert r.status is DeviceStatus.degraded
    learned = p.requests_per_poll
    before = sim.devices["inv-01"].requests
    r2 = p.poll()
    assert r2.quality == {"dc_voltage": Quality.illegal_address}
    assert sim.devices["inv-01"].requests - before == learned  # no re-splitting on the next cycle


def test_dropped_connection_then_recovery(site, simulate):
    sim = simulate(site)
    p = poller(site, "meter")
    assert p.poll().status is DeviceStatus.ok
    sim.inject("meter", "drop", seconds=0.3)
    r = p.poll()
    assert r.status is DeviceStatus.offline
    assert set(r.quality.values()) <= {Quality.disconnected, Quality.timeout}
    time.sleep(0.4)
    p.retry_at = 0
    assert p.poll().status is DeviceStatus.ok


def test_out_of_range_is_kept_and_flagged(site, simulate):
    sim = simulate(site)
    sim.inject("meter", "out_of_range", channel="frequency")
    r = poller(site, "meter").poll()
    assert r.quality == {"frequency": Quality.out_of_range}
    assert r.values["frequency"] > 65


def test_floats_reading_nan_are_a_fault_not_a_healthy_device(tmp_path, simulate):
    """A dead measuring board behind a live Modbus interface: every float register reads NaN."""
    site = load_site(write_site(tmp_path, [tcp_device("steam", "steam_fuel_meter", free_port()),
                                           tcp_device("meter", "power_meter_3ph", free_port())]))
    sim = simulate(site)
    sim.inject("steam", "nan")  # every point of this meter is a float
    steam = poller(site, "steam")
    r = steam.poll()
    assert all(v is None for v in r.values.values())
    assert set(r.quality.values()) == {Quality.decode_error}
    assert r.status is DeviceStatus.offline
    assert steam.poll() is not None  # it answers: polled on, not backed off like a silent one
    sim.inject("meter", "nan")  # its floats die, its int64 energy counters still count
    r = poller(site, "meter").poll()
    floats = {p.channel for p in site.device("meter").register_map.points if p.type == "float32"}
    assert r.quality == dict.fromkeys(floats, Quality.decode_error)
    assert all(r.values[c] is not None for c in set(r.values) - floats)
    assert r.status is DeviceStatus.degraded


def test_not_implemented_sentinel_is_null(site, simulate):
    sim = simulate(site)
    sim.inject("inv-01", "not_implemented", channel="dc_power")
    r = poller(site, "inv-01").poll()
    assert r.values["dc_power"] is None
    assert r.quality == {"dc_power": Quality.not_implemented}


def test_counter_reset_is_reported_as_read(site, simulate):
    sim = simulate(site)
    p = poller(site, "meter")
    before = p.poll().values["energy_import"]
    sim.inject("meter", "counter_reset")
    after = p.poll().values["energy_import"]
    assert before > 1000 and after < 1  # the gateway reports what the meter says; processing detects resets


def test_dead_device_does_not_stop_its_neighbour(site, simulate):
    sim = simulate(site)
    sim.inject("inv-01", "timeout")
    dead, alive = poller(site, "inv-01"), poller(site, "meter")
    assert dead.poll().status is DeviceStatus.offline
    assert alive.poll().status is DeviceStatus.ok


def test_acc32_energy_wraps_at_2_to_the_32(site, simulate):
    sim = simulate(site)
    p = poller(site, "inv-01")
    point = site.device("inv-01").register_map.point("ac_energy")
    assert point.rollover == 2**32
    sim.plant.last += dt.timedelta(hours=1)  # hold the counters still: at noon 2 MW adds 5 Wh in 9 ms
    sim.plant.counters[("inv-01", "ac_energy")] = 2**32 - 5  # Wh, just below the wrap
    sim.overrides["inv-01"] = {}
    before = p.poll().values["ac_energy"]
    sim.plant.counters[("inv-01", "ac_energy")] = 2**32 + 7
    after = p.poll().values["ac_energy"]
    assert before == pytest.approx(2**32 - 5, abs=1)
    assert after == pytest.approx(7, abs=1)  # the register wrapped; the profile's rollover lets processing add 2**32


def test_fault_injection_over_the_control_port(site, simulate):
    import json
    import urllib.request

    from simulators.control import serve_control

    sim = simulate(site)
    port = free_port()
    server = serve_control(sim, port)
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/faults", method="POST",
                                     data=json.dumps({"device": "meter", "kind": "exception", "code": 6}).encode())
        assert json.load(urllib.request.urlopen(req)) == {"ok": True}
        assert json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/faults"))["meter"] == ["exception"]
        r = poller(site, "meter").poll()
        assert set(r.quality.values()) == {Quality.device_error}
        bad = urllib.request.Request(f"http://127.0.0.1:{port}/faults", method="POST",
                                     data=json.dumps({"device": "meter", "kind": "meltdown"}).encode())
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(bad)
        assert exc.value.code == 400 and "unknown fault 'meltdown'" in exc.value.read().decode()
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/faults", method="DELETE"))
        assert poller(site, "meter").poll().status is DeviceStatus.ok
    finally:
        server.shutdown()


def test_dead_tcp_endpoint_does_not_slow_another_endpoint(tmp_path, simulate, mosquitto):
    from gateway.service import Gateway

    path = write_site(tmp_path, [
        tcp_device("dead", "power_meter_3ph", free_port(), interval=0.2),
        tcp_device("alive", "power_meter_3ph", free_port(), interval=0.2),
    ])
    site = load_site(path)
    sim = simulate(site)
    sim.inject("dead", "timeout")
    gw = Gateway(site, broker_url=mosquitto.url, outbox_path=str(tmp_path / "o.sqlite"))
    gw.start()
    time.sleep(3)
    gw.stop()
    alive = next(p for p in gw.pollers if p.device.id == "alive")
    # 3 s at 0.2 s is 15 polls; the dead endpoint's 0.5 s timeouts run on their own client and thread
    assert sim.devices["alive"].requests >= 12 * alive.requests_per_poll


def test_polls_of_one_interval_are_staggered(tmp_path, mosquitto):
    from gateway.service import Gateway

    path = write_site(tmp_path, [tcp_device(f"m{i}", "power_meter_3ph", free_port(), interval=8.0) for i in range(4)])
    gw = Gateway(load_site(path), broker_url=mosquitto.url, outbox_path=str(tmp_path / "o.sqlite"))
    gw.start()
    try:
        starts = sorted(gw.scheduler.due_in().values())
        offsets = [t - starts[0] for t in starts]
        assert offsets == pytest.approx([0.0, 2.0, 4.0, 6.0], abs=0.05)  # spread over the 8 s interval
    finally:
        gw.stop()
