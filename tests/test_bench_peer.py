"""bench/peer_comparison.py's verdict of whether a gateway kept up with its poll interval."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
peer = pytest.importorskip("peer_comparison")


def regular(start: float, n: int, interval: float = 1.0, jitter: float = 0.0) -> list[float]:
    return [start + k * interval + (jitter if k % 2 else 0.0) for k in range(n)]


def window(**timing) -> dict:
    base = {"broker_values": 10 * 20 * 30, "wall_s": 30.0, "cpu_s": 0.3, "server_cpu_s": 0.0, "broker_cpu_s": 0.0,
            "harness_cpu_s": 0.0, "busy_s": 0.3, "server_requests": 300}
    return {**base, "timing": timing}


def test_every_device_polled_every_interval_keeps_up():
    starts = {port: regular(port / 1000, 30, jitter=0.05) for port in range(10)}
    t = peer.lateness(starts, 1.0, 30.0)
    assert (t["devices_seen"], t["devices_missed"], t["polls_total"]) == (10, 0, 300)
    assert t["late_max_s"] == pytest.approx(0.05)
    d = peer.derive(window(**t), devices=10, points=20, interval=1.0)
    assert d["keeps_up"] and d["devices_per_core"] == pytest.approx(1000)  # 0.3 CPU-s for 300 device-seconds


def test_a_skipped_poll_a_silent_device_or_lost_readings_fail_the_run():
    starts = {port: regular(0.0, 30) for port in range(10)}
    late = {**starts, 3: starts[3][:10] + [x + 0.6 for x in starts[3][10:]]}  # one gap of 1.6 intervals
    t = peer.lateness(late, 1.0, 30.0)
    assert (t["devices_gapped"], t["devices_missed"]) == (1, 1)
    assert not peer.derive(window(**t), devices=10, points=20, interval=1.0)["keeps_up"]

    silent = {**starts, 7: []}
    t = peer.lateness(silent, 1.0, 30.0)
    assert (t["devices_seen"], t["devices_short"]) == (9, 1)
    assert not peer.derive(window(**t), devices=10, points=20, interval=1.0)["keeps_up"]

    t = peer.lateness(starts, 1.0, 30.0)
    lost = {**window(**t), "broker_values": int(0.9 * 10 * 20 * 30)}  # polled on time, not delivered
    assert not peer.derive(lost, devices=10, points=20, interval=1.0)["keeps_up"]
