"""The wall clock of a running gateway stepped back and forward, as NTP steps an edge box
that booted without a real-time clock: the gateway process runs under libfaketime, whose
offset file the test rewrites (the monotonic clock is left alone, as a real step leaves it)."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, load_site, tcp_device, write_site

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


@pytest.mark.parametrize("step,by", [("-1h", dt.timedelta(hours=-1)), ("+30d", dt.timedelta(days=30))])
def test_a_wall_clock_stepped_back_or_forward_does_not_stop_polling(tmp_path, mosquitto, subscriber, simulate,
                                                                      step, by):
    """The polls were scheduled on the wall clock (APScheduler): set back an hour, the gateway
    polled nothing for an hour; set forward 30 days, it walked the 5 million polls missed one by
    one (half a minute of CPU and 270 MB here, per device) before polling again."""
    assert LIBFAKETIME.exists(), "libfaketime is not installed (apt-get install -y faketime)"
    path = write_site(tmp_path, [tcp_device("m", "power_meter_3ph", free_port(), interval=0.5)],
                      outbox={"path": str(tmp_path / "outbox.sqlite"), "confirmed_by": "broker"})
    simulate(load_site(path))
    clock = tmp_path / "clock-offset"
    clock.write_text("+0\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), LD_PRELOAD=str(LIBFAKETIME), FAKETIME_TIMESTAMP_FILE=str(clock),
               FAKETIME_CACHE_DURATION="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
    gw = subprocess.Popen([sys.executable, "-m", "jcm.cli", "-q", "gateway", "--site", str(path),
                           "--broker", mosquitto.url], env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        assert subscriber.wait_for(lambda: len(subscriber.seqs("gw-test")) >= 2, 60)
        clock.write_text(f"{step}\n")
        stepped = len(subscriber.seqs("gw-test"))
        # 0.5 s polls: 6 readings take 3 s (the step is read within 1 s)
        assert subscriber.wait_for(lambda: len(subscriber.seqs("gw-test")) >= stepped + 6, 20), \
            f"{len(subscriber.seqs('gw-test')) - stepped} reading(s) in 20 s after the clock was stepped {step}"
        with subscriber.lock:
            last = max(subscriber.readings, key=lambda r: r.seq).ts
        assert abs(last - (dt.datetime.now(dt.UTC) + by)) < dt.timedelta(minutes=1)  # stamped by the stepped clock
    finally:
        gw.terminate()
        gw.wait(30)
