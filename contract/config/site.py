"""Site configuration: one YAML file per JCM site under ``config/sites/``.

A site has one gateway, one MQTT broker and its devices. Secrets never live in the
file: it names the environment variables that hold them.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, field_validator, model_validator

from contract import topics, units
from contract.config.custody import Custody
from contract.config.nameplate import Nameplate
from contract.config.problems import Loc, raise_problems
from contract.config.profile import Profile, Strict
from contract.message import ID_PATTERN, MAX_AHEAD

Identifier = Annotated[str, Field(pattern=ID_PATTERN)]
#: the name of an environment variable (a value with other characters is likely the secret itself)
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


def _not_a_reading_topic(v: str) -> str:
    if v == topics.NOT_A_COLLECTOR:
        raise ValueError(f"'{v}' cannot name a collector: its acknowledgements' topic would be a reading "
                         "topic, which a site may write, so gateways and collectors ignore them")
    return v


COLLECTOR_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
#: collectors a gateway may list: its status carries the list, and collectors read a status whole
#: only up to 4 KiB
MAX_ACKNOWLEDGED_BY = 8
#: a collector's MQTT client id, the last level of its acknowledgements' topic
CollectorId = Annotated[str, Field(pattern=COLLECTOR_ID_PATTERN), AfterValidator(_not_a_reading_topic)]


class TcpConnection(Strict):
    type: Literal["tcp"]
    #: a host name or an IP address (v6 without brackets): an empty or spaced one was accepted, then never reached
    host: str = Field(pattern=r"^[A-Za-z0-9_.:%-]{1,253}$")
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout: float = Field(default=1.0, ge=0.05, le=60, description="[s] per request")

    @field_validator("host")
    @classmethod
    def _no_port(cls, v: str) -> str:
        if v.count(":") == 1:  # an IPv6 address has two or more
            raise ValueError(f"'{v}': a host with a port; put the port in 'port'")
        return v

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class RtuConnection(Strict):
    """A device on an RS-485 bus; several devices may share one port."""

    type: Literal["rtu"]
    #: a serial device (/dev/ttyUSB0, /dev/serial/by-id/...): an empty or spaced one was accepted, then never opened
    port: str = Field(pattern=r"^\S+$")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(default=1, ge=1, le=247)
    timeout: float = Field(default=1.0, ge=0.05, le=60, description="[s] per request")

    @property
    def endpoint(self) -> str:
        return f"rtu://{self.port}"


Connection = Annotated[TcpConnection | RtuConnection, Field(discriminator="type")]


class Calibration(Strict):
    """One calibration of a meter, as the certificate states it."""

    date: dt.date
    next_due: dt.date
    #: error found by this calibration, before adjustment [%]; signed (negative: the meter read low).
    #: A meter further off than 20 % is failed and replaced, not calibrated: a larger figure is
    #: a typing or unit mistake, and it would cut the readings it corrects by that much.
    error_found_pct: float = Field(default=0.0, ge=-20, le=20)
    #: maximum permissible error of the meter's accuracy class [%]
    mpe_pct: float = Field(gt=0, le=20)
    certificate: str = ""

    @model_validator(mode="after")
    def _due_after_date(self) -> Calibration:
        if self.next_due <= self.date:
            raise ValueError(f"next_due {self.next_due} is not after date {self.date}")
        return self


class Device(Strict):
    id: Identifier
    kind: Literal[
        "power_meter", "inverter", "genset", "steam_meter", "fuel_meter",
        "transformer_monitor", "microgrid_controller", "flow_meter", "gas_analyser",
    ]
    description: str = ""
    connection: Connection
    poll_interval: float = Field(default=10.0, ge=0.1, le=86400, description="[s]")
    #: name of a register-map profile: shipped with the package, or the site's own (``Site.profiles_dir``)
    profile: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    #: per-channel field overrides of the profile, e.g. ``{ac_energy: {gain: 0.1}}``
    overrides: dict[str, dict] = Field(default_factory=dict)
    calibrations: list[Calibration] = Field(default_factory=list)
    #: the resolved register map (profile with overrides applied), filled by the loader
    register_map: Profile

    @field_validator("id")
    @classmethod
    def _not_the_ack_level(cls, v: str) -> str:
        if v == "ack":  # its reading topic .../<gateway>/ack/reading is an acknowledgement topic's shape
            raise ValueError("'ack': a device so named would publish on .../<gateway>/ack/reading, where "
                             "acknowledgements go (contract/acknowledgement.py): name it otherwise")
        return v

    @model_validator(mode="after")
    def _calibrations_distinct(self) -> Device:
        dates = [c.date for c in self.calibrations]
        raise_problems([(("calibrations", i, "date"), f"a second calibration dated {d}")
                        for i, d in enumerate(dates) if d in dates[:i]])
        return self


class Mqtt(Strict):
    url: str
    #: names of the environment variables holding the credentials (never the values)
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"'{v}': the scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"'{v}' names no host")
        if parts.password is not None:
            # never echo the URL: it holds the secret
            raise ValueError("the URL holds a password: remove it and name environment variables in username_env and password_env")
        if parts.username is not None:
            raise ValueError(f"'{v}': the URL holds a user name, which is not used: put it in the variable named by username_env")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"'{v}': a broker URL is scheme://host[:port] only")
        if parts.port == 0:  # urlsplit refuses ports above 65535 itself
            raise ValueError(f"'{v}': port 0 is not a port")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> Mqtt:
        problems: list[tuple[Loc, str]] = []
        if not self.tls:
            problems += [((k,), f"{k} is set but the URL is mqtt://, which does not use TLS: use mqtts://")
                         for k in ("ca_file", "cert_file", "key_file") if getattr(self, k)]
        if bool(self.cert_file) != bool(self.key_file):
            missing = "key_file" if self.cert_file else "cert_file"
            problems.append(((missing,), "a client certificate needs both cert_file and key_file"))
        if self.password_env and not self.username_env:
            problems.append((("username_env",), "password_env is set: name the user name's variable too"))
        raise_problems(problems)
        return self

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


class Outbox(Strict):
    path: str = "var/outbox-{gateway}.sqlite"
    #: rows kept while the broker is unreachable; beyond it the oldest are dropped, loudly; at most
    #: ``MAX_AHEAD``: a live lane further ahead of its backlog is not followed by the collector
    max_rows: int = Field(default=5_000_000, ge=100, le=MAX_AHEAD)
    #: readings held in memory while the disk refuses writes (full); beyond it the oldest are dropped, loudly.
    #: About 1.6 KB each: the most is 1.6 GB; more, and a long full disk ends in the kernel killing the
    #: gateway, every held reading lost instead of the oldest counted
    memory_rows: int = Field(default=10_000, ge=10, le=1_000_000)
    #: backlog delivered at most this fast [messages/s], beside live readings; 2,000 replays a day of
    #: mn-solar (77,760 messages) in 40 s (bench/README.md)
    backlog_rate: float = Field(default=2000.0, ge=1, le=100_000)
    #: who confirms a row before it is deleted: "store" (a collector's acknowledgement, see
    #: contract/acknowledgement.py) or "broker" (its PUBACK: only for collectors that do not
    #: acknowledge yet; a broker crash then loses what it had acknowledged)
    confirmed_by: Literal["store", "broker"] = "store"
    #: a row sent and not confirmed by the store after this long is sent again [s]
    confirm_timeout_s: float = Field(default=60.0, ge=1, le=86_400)
    #: the collectors (client ids) whose store is the one MRV reads: only their acknowledgements
    #: delete rows. Unset, any collector's do, as before the list existed: a staging or test
    #: collector on the production broker then deletes readings only its own store holds
    acknowledged_by: list[CollectorId] | None = Field(default=None, min_length=1, max_length=MAX_ACKNOWLEDGED_BY)

    @field_validator("acknowledged_by")
    @classmethod
    def _once_each(cls, v: list[str] | None) -> list[str] | None:
        twice = sorted({c for c in v or () if v.count(c) > 1})
        if twice:
            raise ValueError(f"listed twice: {', '.join(twice)}")
        return v

    @model_validator(mode="after")
    def _acks_read(self) -> "Outbox":
        if self.acknowledged_by is not None and self.confirmed_by == "broker":
            raise ValueError("acknowledged_by is for confirmed_by: store; with confirmed_by: broker the "
                             "broker's PUBACK deletes rows and no acknowledgement is read")
        return self


class MonitoringPoint(Strict):
    """A methodology parameter and the device channels that feed it.

    A parameter named ``<P>_check`` is the check meter of ``<P>``."""

    parameter: str
    number: str = Field(description="monitoring point number shown in the export")
    #: ``device.channel`` sources, summed
    sources: list[str] = Field(min_length=1)
    #: the Σ_i unit this parameter belongs to, where the methodology sums over units
    unit_id: str | None = None
    #: largest physically possible increase of a counter source per hour, in its own unit
    max_rate_per_h: float | None = Field(default=None, gt=0)
    #: ``device.channel`` of a power whose integral cross-checks the counters (e.g. kW for kWh)
    power_source: str | None = None
    #: sign that turns that power into the counted direction (-1 where export reads negative)
    power_sign: float = 1.0
    description: str = ""

    @field_validator("power_sign")
    @classmethod
    def _sign(cls, v: float) -> float:
        if v not in (1, -1):
            raise ValueError(f"{v:g} is not a sign: use 1 or -1")
        return v


class FixedParameter(Strict):
    """A value fixed ex ante for this site (e.g. a transformer's factory-tested no-load
    loss), or a site's own choice among a methodology's default values."""

    parameter: str
    unit_id: str | None = None
    value: float = Field(allow_inf_nan=False)
    #: converted to the methodology's unit for the parameter where compatible (``contract.units``)
    unit: str
    source: str
    #: an unconfirmed value makes every figure computed with it provisional
    status: Literal["confirmed", "unconfirmed"] = "confirmed"

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, v: str) -> str:
        units.parse(v)
        return v


class Quality(Strict):
    """Thresholds of the monthly quality checks."""

    #: month-to-date or monthly completeness below this needs review [fraction]
    completeness_review: float = Field(default=0.95, gt=0, le=1)
    #: below this there is not enough data for a conservative claim [fraction]
    completeness_fail: float = Field(default=0.5, ge=0, le=1)
    #: main and check meter may disagree by this much [fraction]
    check_meter_tolerance: float = Field(default=0.02, gt=0, le=1)
    #: counters and their integrated power may disagree by this much per day [fraction]
    power_integration_tolerance: float = Field(default=0.05, gt=0, le=1)
    #: the monitoring plan's recording interval: completeness counts these slots [s]
    recording_interval_s: float = Field(default=900.0, ge=1, le=86400)

    @model_validator(mode="after")
    def _ordered(self) -> Quality:
        if self.completeness_fail > self.completeness_review:
            raise_problems([(("completeness_fail",), f"{self.completeness_fail:g} is above completeness_review "
                                                     f"{self.completeness_review:g}: failing must need less data than review")])
        return self


def _repeated_parameters(key: str, items: list[MonitoringPoint] | list[FixedParameter], verb: str) -> list[tuple[Loc, str]]:
    """A parameter (of one unit) given twice: which of them counts would be an accident of order."""
    problems, seen = [], set()
    for i, item in enumerate(items):
        if (item.parameter, item.unit_id) in seen:
            unit = f" of unit {item.unit_id}" if item.unit_id else ""
            problems.append(((key, i, "parameter"), f"{item.parameter}{unit} is {verb} twice"))
        seen.add((item.parameter, item.unit_id))
    return problems


class Site(Strict):
    site: Identifier
    name: str
    country: str
    timezone: str
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    commissioned: dt.date
    jcm_project: str
    methodology: str
    methodology_version: str
    gateway: Identifier
    mqtt: Mqtt
    outbox: Outbox = Outbox()
    #: a directory of the site's own profiles (relative to the site file), searched before the shipped ones
    profiles_dir: str | None = None
    devices: list[Device] = Field(min_length=1)
    monitoring: list[MonitoringPoint] = Field(default_factory=list)
    fixed_parameters: list[FixedParameter] = Field(default_factory=list)
    quality: Quality = Quality()
    nameplate: Nameplate = Nameplate()
    #: signing key (edge) and public keys (server) of the chain of custody
    custody: Custody = Custody()

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{v}' (use an IANA name such as Asia/Manila)") from None
        return v

    @model_validator(mode="after")
    def _coherent(self) -> Site:
        problems: list[tuple[Loc, str]] = []
        first_of: dict[str, int] = {}
        addresses: dict[tuple, str] = {}
        buses: dict[str, tuple[str, RtuConnection]] = {}
        ports: dict[str, tuple[str, str]] = {}  # a serial device as the system resolves it: (its name here, device id)
        for i, d in enumerate(self.devices):
            if d.id in first_of:
                problems.append((("devices", i, "id"), f"device ids must be unique: {d.id} repeated"))
                continue
            first_of[d.id] = i
            c = d.connection
            key = (c.endpoint, c.unit_id)
            if key in addresses:
                problems.append((("devices", i, "connection"),
                                 f"devices '{addresses[key]}' and '{d.id}' share {c.endpoint} unit {c.unit_id}"))
            addresses.setdefault(key, d.id)
            if isinstance(c, RtuConnection):
                # two names of one port (/dev/ttyUSB0 and its /dev/serial/by-id/ link) made two links to
                # it: the one opened second was refused the port, its devices disconnected for good
                named, other_id = ports.setdefault(os.path.realpath(c.port), (c.port, d.id))
                if named != c.port:
                    problems.append((("devices", i, "connection", "port"),
                                     f"{c.port} and {named} (device '{other_id}') are one serial port: "
                                     "name it the same way for every device on it"))
                first_id, first = buses.setdefault(c.port, (d.id, c))
                line = ("baudrate", "parity", "stopbits", "bytesize")
                if first is not None and any(getattr(first, k) != getattr(c, k) for k in line):
                    problems.append((("devices", i, "connection"),
                                     f"devices on serial port {c.port} disagree on its line settings "
                                     f"(baudrate/parity/stopbits/bytesize): '{d.id}' differs from '{first_id}'"))
                    buses[c.port] = (first_id, None)  # one report per port
        problems += _repeated_parameters("monitoring", self.monitoring, "monitored")
        problems += _repeated_parameters("fixed_parameters", self.fixed_parameters, "fixed")
        for i, m in enumerate(self.monitoring):
            for src in m.sources + ([m.power_source] if m.power_source else []):
                dev_id, _, channel = src.partition(".")
                dev = self.devices[first_of[dev_id]] if dev_id in first_of else None
                if dev is None:
                    problems.append((("monitoring", i), f"monitoring {m.parameter}: source '{src}' names no device of this site"))
                elif channel not in {p.channel for p in dev.register_map.points}:
                    problems.append((("monitoring", i), f"monitoring {m.parameter}: device '{dev_id}' has no channel '{channel}'"))
        slow = sorted(d for d in {src.partition(".")[0] for m in self.monitoring for src in m.sources}
                      if d in first_of and self.devices[first_of[d]].poll_interval > self.quality.recording_interval_s)
        if slow:
            problems.append((("quality", "recording_interval_s"),
                             f"{self.quality.recording_interval_s:g} s is shorter than the poll interval of {', '.join(slow)}: "
                             "completeness could never reach 100 %"))
        problems += self._nameplate_problems()
        raise_problems(problems)
        return self

    def _nameplate_problems(self) -> list[tuple[Loc, str]]:
        problems: list[tuple[Loc, str]] = []
        bounded: dict[str, int] = {}
        for i, r in enumerate(self.nameplate.ratings):
            where = ("nameplate", "ratings", i)
            dev = next((d for d in self.devices if d.id == r.device), None)
            if dev is None:
                problems.append((where + ("device",), f"device '{r.device}' is not a device of this site"))
                continue
            counters = {p.channel: p for p in dev.register_map.points if p.kind.value == "counter"}
            for channel in r.channels or []:
                if channel not in counters:
                    problems.append((where + ("channels",), f"device '{r.device}' has no counter channel '{channel}'"))
                elif r.per_hour(counters[channel].unit) is None:
                    problems.append((where + ("unit",), f"a rating in {r.unit} cannot bound '{r.device}.{channel}' "
                                                        f"counted in '{counters[channel].unit}'"))
            channels = r.channels or [c for c, p in counters.items() if r.per_hour(p.unit) is not None]
            if not channels:
                problems.append((where + ("unit",), f"a rating in {r.unit} bounds no counter channel of '{r.device}'"))
            for channel in channels:
                src = f"{r.device}.{channel}"
                if src in bounded:
                    problems.append((where, f"'{src}' is already rated by nameplate.ratings[{bounded[src]}]"))
                bounded.setdefault(src, i)
        return problems

    def rating_per_h(self, source: str) -> float | None:
        """The nameplate bound of counter ``device.channel`` [counter unit/h], without the margin;
        ``None`` when no rating covers it."""
        dev_id, _, channel = source.partition(".")
        unit = self.device(dev_id).register_map.point(channel).unit
        for r in self.nameplate.ratings:
            if r.device == dev_id and (r.channels is None or channel in r.channels):
                rate = r.per_hour(unit)
                if rate is not None:
                    return rate
        return None

    def counter_limit_per_h(self, source: str, max_rate_per_h: float | None = None) -> float | None:
        """The physical bound of an interval of counter ``device.channel`` [counter unit/h]: the
        monitoring point's own ``max_rate_per_h`` or the nameplate rating times its margin,
        the lower; ``None`` when neither is known."""
        rating = self.rating_per_h(source)
        limits = [x for x in (max_rate_per_h, rating * self.nameplate.margin if rating else None) if x]
        return min(limits) if limits else None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def monitoring_sources(self) -> list[str]:
        """Every ``device.channel`` the monitoring plan reads (parameters and cross-checks)."""
        return sorted({src for m in self.monitoring for src in m.sources + ([m.power_source] if m.power_source else [])})

    @property
    def monitoring_devices(self) -> list[str]:
        return sorted({src.split(".")[0] for src in self.monitoring_sources})

    @property
    def monitoring_channels(self) -> list[str]:
        return sorted({src.split(".")[1] for src in self.monitoring_sources})

    def device(self, device_id: str) -> Device:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)
