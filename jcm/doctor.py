"""``jcm doctor``: one command a technician runs on site to see what a gateway needs and
what is missing, each checked the way the gateway itself does it.

- config: the site file and its profiles load (the caller passes the loaded site);
- every device: its serial port is there and usable, then one poll (the gateway's own
  poller: every read of its register map, once);
- the broker: a real login with the site's credentials and TLS settings, under a client
  id of its own so that a running gateway is not disconnected; nothing is published;
- the outbox: its directory can be written and its filesystem has flock (the gateway
  refuses an outbox it cannot lock), the file (if any) is a usable outbox, its sequence
  file's state, and the disk has room for it;
- the signing key (when the site file names one): loaded as the gateway loads it;
- the clock: readings are stamped with this computer's clock, so it must be right. The
  broker does not tell its time over MQTT and a site is often offline, so what is
  measured is the kernel's NTP state (synchronized or not, and its estimated error),
  and whether the outbox holds readings stamped after now (a clock set back).

Each check is ``ok``, ``warn`` (works, but worth a look) or ``FIX`` (the gateway will
not work as it should); the command exits 1 if anything must be fixed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import fcntl
import os
import shutil
import socket
import sqlite3
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from contract import topics
from contract.config import ConfigError
from contract.config.site import Device, RtuConnection, Site
from contract.message import Quality, Reading
from contract.sqlite_file import UnusableFile, beside, open_sqlite
from gateway.outbox import read_sequence_file

OK, WARN, FIX = "ok", "warn", "FIX"
#: SQLite's own cost of an outbox row beyond its topic and payload (row header, index) [bytes]
ROW_OVERHEAD = 64


@dataclass
class Check:
    what: str
    status: str
    detail: str


def check_device(site: Site, device: Device) -> Check:
    """The device's port is there (RTU), then one poll of its whole register map."""
    from gateway.device_poller import DevicePoller
    from gateway.modbus_link import ModbusLink

    c = device.connection
    where = f"{c.endpoint} unit {c.unit_id}"
    if isinstance(c, RtuConnection):
        if not Path(c.port).exists():
            return Check(f"device {device.id}", FIX, f"{where}: serial port {c.port} does not exist (adapter "
                                                      "plugged in? its name under /dev/serial/by-id/ stays the same)")
        if not os.access(c.port, os.R_OK | os.W_OK):
            return Check(f"device {device.id}", FIX, f"{where}: no permission to use {c.port} (the gateway's "
                                                      "user needs the group that owns it, usually dialout)")
    link = ModbusLink(c)
    started = time.monotonic()
    try:
        reading = DevicePoller(site, device, link).poll()
    finally:
        link.close()
    ms = (time.monotonic() - started) * 1000
    failed = {ch: q for ch, q in reading.quality.items() if reading.values.get(ch) is None}
    answered = len(reading.values) - len(failed)
    if reading.status.value == "ok":
        return Check(f"device {device.id}", OK, f"{where}: {answered} channels read in {ms:.0f} ms")
    if answered:
        listed = ", ".join(f"{ch} ({q.value})" for ch, q in sorted(failed.items()))
        return Check(f"device {device.id}", WARN, f"{where}: answers, but not for {listed}")
    kinds = set(failed.values())
    if Quality.disconnected in kinds:
        why = ("the serial port cannot be opened" if isinstance(c, RtuConnection) else
               "cannot connect: is the device on, its host and port right, and the network up?")
    elif Quality.timeout in kinds:
        why = (f"no answer within {c.timeout:g} s: check unit_id {c.unit_id}, the wiring "
               + ("and the bus settings (baud rate, parity)" if isinstance(c, RtuConnection) else "and the gateway "
                  "setting of a Modbus TCP bridge"))
    else:
        why = "the device refuses every read (" + ", ".join(sorted(q.value for q in kinds)) + \
              "): check the profile matches the model"
    return Check(f"device {device.id}", FIX, f"{where}: {why}")


def check_broker(site: Site, broker_url: str | None = None, timeout: float = 5.0) -> Check:
    """A real login with the site's user, password and TLS files; nothing is published."""
    import paho.mqtt.client as mqtt

    from contract.mqtt_connection import credentials, tls_context

    mq = site.mqtt
    if broker_url is not None:
        mq = type(mq).model_validate({**mq.model_dump(), "url": broker_url})
    try:  # the same credentials and TLS context the gateway connects with
        login = credentials(mq, "mqtt")
        context = tls_context(mq, "mqtt") if mq.tls else None
    except ConfigError as exc:
        return Check("broker", FIX, f"{exc} (on a site the variables are in /etc/jcm/{site.site}.env, which systemd reads)")
    user = login[0] if login else None
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, clean_session=True,
                         client_id=f"jcm-doctor-{site.gateway}-{os.getpid()}")
    client.connect_timeout = timeout
    if login:
        client.username_pw_set(*login)
    if context:
        client.tls_set_context(context)
    answer: dict = {}
    done = threading.Event()

    def on_connect(c, userdata, flags, reason_code, properties):
        answer["connack"] = reason_code
        done.set()

    def on_disconnect(c, userdata, flags, reason_code, properties):
        answer.setdefault("closed", reason_code)
        done.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    as_whom = f"user '{user}'" if user is not None else "no user name"
    try:
        client.connect(mq.host, mq.port, keepalive=max(10, int(timeout) * 2))
    except ssl.SSLCertVerificationError as exc:
        return Check("broker", FIX, f"{mq.url}: TLS: the broker's certificate is not trusted "
                                    f"({exc.verify_message}; ca_file {mq.ca_file or 'system CAs'})")
    except ssl.SSLError as exc:
        return Check("broker", FIX, f"{mq.url}: TLS handshake failed: {exc.reason or exc}")
    except (socket.timeout, TimeoutError):
        return Check("broker", FIX, f"{mq.url}: no answer within {timeout:g} s (address, firewall, link?)")
    except OSError as exc:
        return Check("broker", FIX, f"{mq.url}: cannot connect: {exc.strerror or exc} (address, port, firewall?)")
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    rc = answer.get("connack")
    if rc is None and "closed" in answer:
        return Check("broker", FIX, f"{mq.url}: the broker closed the connection before answering the login of "
                                    f"{as_whom}" + (" (a client certificate it does not accept shows this way)"
                                                    if mq.tls else ""))
    if rc is None:
        return Check("broker", FIX, f"{mq.url}: no answer to the login within {timeout:g} s")
    if rc.is_failure:
        hint = f"check the password in {mq.password_env}" if mq.password_env else "the broker wants a user name"
        return Check("broker", FIX, f"{mq.url}: the broker refused the login of {as_whom}: {rc} ({hint}; the "
                                    "broker's password file has one user per site id)")
    if mq.tls:
        return Check("broker", OK, f"{mq.url}: logged in as {as_whom} over TLS (certificate verified)")
    loopback = mq.host in ("localhost", "::1") or mq.host.startswith("127.")
    return Check("broker", OK if loopback else WARN,
                 f"{mq.url}: logged in as {as_whom}" + ("" if loopback else
                                                        ", in plain text across the network: use mqtts:// "
                                                        "with ca_file, cert_file and key_file"))


def reading_size(site: Site) -> int:
    """Bytes an outbox row of the site's largest reading takes, roughly [bytes]."""
    largest = max(site.devices, key=lambda d: len(d.register_map.points))
    points = largest.register_map.points
    sample = Reading(site=site.site, gateway=site.gateway, device=largest.id, ts=dt.datetime.now(dt.UTC),
                     values={p.channel: 123456.789 for p in points}, units={p.channel: p.unit for p in points},
                     seq=10**9)
    return len(sample.to_json()) + len(topics.reading(site.site, site.gateway, largest.id)) + ROW_OVERHEAD


def check_outbox(site: Site, path: str | Path) -> tuple[list[Check], dt.datetime | None]:
    """Writable directory with flock, a usable outbox file if there is one, its sequence file,
    and room on the disk; also the time stamp of the newest reading waiting in it."""
    path = Path(path)
    directory = Path(os.path.realpath(path)).parent  # where the gateway keeps it, its -wal and its sequence file
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    checks = []
    try:
        with tempfile.NamedTemporaryFile(dir=directory if directory.exists() else existing, prefix=".jcm-doctor-") \
                as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
            locked = _can_flock(probe.fileno())
        where = f"{directory} can be written" if directory.exists() else \
            f"{directory} does not exist yet; the gateway will create it in {existing}, which can be written"
        checks.append(Check("outbox directory", OK, where))
        checks.append(Check("outbox lock", OK, f"the filesystem of {existing} has flock (one gateway per outbox)")
                      if locked is None else
                      Check("outbox lock", FIX, f"the filesystem of {existing} does not support flock ({locked}): the "
                                                "gateway refuses an outbox there, since one gateway per outbox cannot "
                                                "be guaranteed; put the outbox on a local filesystem"))
    except OSError as exc:
        checks.append(Check("outbox directory", FIX, f"cannot write in {existing}: {exc.strerror} (the gateway's "
                                                     "user must own it; the systemd unit uses /var/lib/jcm)"))
    newest = None
    state = None  # (epoch, highest seq) of the outbox, when it could be read
    if path.exists():
        try:
            db = open_sqlite(path, "outbox", {"outbox"}, create=False,
                             damaged_hint="run `jcm gateway --site ... --new-outbox` once")
            try:
                depth, payload = db.execute("SELECT COUNT(*), (SELECT payload FROM outbox ORDER BY seq DESC LIMIT 1) "
                                            "FROM outbox").fetchone()
                state = _outbox_sequence(db)
            finally:
                db.close()
            newest = Reading.from_json(payload).ts if payload else None
            checks.append(Check("outbox file", OK, f"{path}: {depth} readings waiting to be sent"))
        except (UnusableFile, ValueError, OSError) as exc:
            checks.append(Check("outbox file", FIX, str(exc)))
    else:
        checks.append(Check("outbox file", OK, f"{path}: none yet; the gateway creates it"))
    checks.append(check_sequence_file(path, state))
    row = reading_size(site)
    per_day = sum(86400 / d.poll_interval for d in site.devices) * row
    full = site.outbox.max_rows * row
    free = shutil.disk_usage(existing).free
    sizes = (f"{_size(free)} free on the disk of {existing}; a day offline needs about {_size(per_day)}, a full "
             f"outbox (outbox.max_rows {site.outbox.max_rows:,}) about {_size(full)} (at {row} B a reading)")
    if free < per_day:
        checks.append(Check("outbox disk space", FIX, sizes + ": free space or lower the poll rate"))
    elif free < full:
        days = free / per_day
        checks.append(Check("outbox disk space", WARN, sizes + f": room for about {days:.0f} days offline"))
    else:
        checks.append(Check("outbox disk space", OK, sizes))
    return checks, newest


def _can_flock(fd: int) -> str | None:
    """None if an exclusive flock can be taken on ``fd`` as the gateway takes one on its outbox, else why not."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:  # ENOLCK, EOPNOTSUPP: some NFS and FUSE mounts
        return exc.strerror
    return None


def _outbox_sequence(db) -> tuple[str | None, int]:
    """(epoch, highest seq assigned) of an open outbox; no epoch in an outbox from before epochs."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
    try:
        epoch = db.execute("SELECT epoch FROM sequence_epoch").fetchone()
    except sqlite3.Error:
        epoch = None
    return (epoch[0] if epoch else None), (row[0] if row else 0)


def check_sequence_file(path: Path, state: tuple[str | None, int] | None) -> Check:
    """The outbox's sequence file in one line: present (epoch, committed, reserved), missing or unreadable,
    and what the gateway's next start makes of it with the outbox (``state``: its epoch and highest seq)."""
    where = beside(path, ".sequence")
    known = read_sequence_file(where)
    if isinstance(known, str):
        if not where.exists() and not where.is_symlink():
            if not path.exists():
                return Check("outbox sequence file", OK, f"{where}: missing, none yet; the gateway writes it")
            return Check("outbox sequence file", WARN, f"{where}: missing; the gateway's next start cannot vouch that "
                                                       "the outbox is not an older copy of itself (said once) and "
                                                       "writes it anew")
        return Check("outbox sequence file", WARN, f"{where}: garbage: {known}")
    epoch, committed, reserved = known[:3]
    said = f"{where}: epoch {epoch}, committed {committed}, reserved {reserved}"
    if state is not None and state[0] is not None and state[0] != epoch:
        return Check("outbox sequence file", WARN, f"{said}: of another epoch than the outbox's ({state[0]}): the "
                                                   "gateway's next start cannot vouch that the outbox is not an older "
                                                   "copy of itself (said once) and writes it anew")
    if state is not None and state[1] < committed:
        return Check("outbox sequence file", WARN, f"{said}: the outbox (seq up to {state[1]}) is behind it, an older "
                                                   "copy of itself (a backup restored?): the gateway's next start "
                                                   "says so in one ERROR and gives new readings seqs after "
                                                   f"{max(committed, reserved)}")
    return Check("outbox sequence file", OK, f"{said}: " + (
        "stopped cleanly" if reserved <= committed else
        f"{reserved - committed} seq(s) reserved beyond the committed: the gateway is running or did not stop cleanly "
        "(after a restart of the machine, its next start leaves them unused)") + (
        f"; seqs {known[5][0]}..{known[5][1]} were held in memory unsaved (the disk refused commits): lost unless the "
        "gateway is running" if known[5] else ""))


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} TB"


class _Timex(ctypes.Structure):
    """Linux ``struct timex`` (adjtimex(2)); read with modes 0, which needs no privilege."""
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
                ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
                ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
                ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
                ("reserved", ctypes.c_int * 11)]


#: adjtimex's answer when the kernel considers the clock unsynchronized
_TIME_ERROR = 5


def kernel_clock() -> tuple[bool, float] | None:
    """(whether NTP keeps the clock synchronized, its estimated error [s]); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    tx = _Timex()
    state = libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        return None
    return state != _TIME_ERROR, tx.esterror / 1e6


def check_clock(newest: dt.datetime | None, now: dt.datetime | None = None) -> Check:
    now = now or dt.datetime.now(dt.UTC)
    if newest is not None and newest > now + dt.timedelta(minutes=1):
        return Check("clock", FIX, f"the outbox holds readings stamped up to {newest:%Y-%m-%d %H:%M:%S} UTC, "
                                   f"{(newest - now).total_seconds():.0f} s after this clock's "
                                   f"{now:%Y-%m-%d %H:%M:%S} UTC: the clock was ahead or has been set back")
    state = kernel_clock()
    how = "(measured: the kernel's NTP state; the broker does not tell its time)"
    if state is None:
        return Check("clock", WARN, f"{now:%Y-%m-%d %H:%M:%S} UTC; cannot tell whether it is synchronized "
                                    "on this system: compare it with a trusted clock")
    synced, error = state
    if synced:
        return Check("clock", OK, f"{now:%Y-%m-%d %H:%M:%S} UTC, synchronized by NTP, estimated error "
                                  f"{error * 1000:.0f} ms {how}")
    return Check("clock", WARN, f"{now:%Y-%m-%d %H:%M:%S} UTC, not synchronized by NTP {how}: readings are "
                                "stamped with this clock; enable systemd-timesyncd or chrony (timedatectl "
                                "set-ntp true) and check it against a trusted clock")


def check_signing_key(site: Site) -> Check:
    from contract.custody import CustodyError
    from gateway.signing_key import signing_key

    try:
        key = signing_key(site.custody)
    except CustodyError as exc:
        return Check("signing key", FIX, str(exc))
    return Check("signing key", OK, f"{site.custody.private_key_file}: signs as '{key.id}'")


def check_acknowledgements(site: Site) -> Check:
    """Whose acknowledgements delete the outbox's readings (README "Whose acknowledgements count")."""
    listed = site.outbox.acknowledged_by
    if listed is None:
        return Check("acknowledgements", WARN, "any collector's acknowledgement deletes readings from the outbox, "
                                               "a staging or test one's too: list yours in outbox.acknowledged_by")
    return Check("acknowledgements", OK, f"readings deleted once the store of {', '.join(listed)} has them")


def run_checks(site: Site, site_file: str | Path, broker_url: str | None = None, outbox_path: str | None = None,
               timeout: float = 5.0) -> list[Check]:
    checks = [Check("config", OK, f"{site_file}: site {site.site}, gateway {site.gateway}, "
                                  f"{len(site.devices)} device(s), profiles found")]
    checks += [check_device(site, d) for d in site.devices]
    checks.append(check_broker(site, broker_url, timeout))
    if site.outbox.confirmed_by == "store":
        checks.append(check_acknowledgements(site))
    if site.custody.private_key_file is not None:
        checks.append(check_signing_key(site))
    outbox, newest = check_outbox(site, outbox_path or site.outbox.path.format(gateway=site.gateway,
                                                                                 site=site.site))
    checks += outbox
    checks.append(check_clock(newest))
    return checks


def print_table(checks: list[Check], out=None) -> int:
    """The table, then a summary line; returns the exit status (1 if anything must be fixed)."""
    out = out or sys.stdout
    width = max(len(c.what) for c in checks)
    print(f"{'CHECK':<{width}}  STATUS  DETAIL", file=out)
    for c in checks:
        print(f"{c.what:<{width}}  {c.status:<6}  {c.detail}", file=out)
    fix = sum(c.status == FIX for c in checks)
    warn = sum(c.status == WARN for c in checks)
    print(f"\n{fix} to fix, {warn} to look at, {len(checks) - fix - warn} fine", file=out)
    return 1 if fix else 0
