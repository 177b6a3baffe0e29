"""Site configuration: one YAML file per JCM site under ``config/sites/``.

A site has one gateway, one MQTT broker and its devices. Secrets never live in the
file: it names the environment variables that hold them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from contract.config.profile import Profile, Strict
from contract.message import ID_PATTERN

Identifier = Annotated[str, Field(pattern=ID_PATTERN)]


class TcpConnection(Strict):
    type: Literal["tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout: float = Field(default=1.0, gt=0, le=60, description="[s] per request")

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class RtuConnection(Strict):
    """A device on an RS-485 bus; several devices may share one port."""

    type: Literal["rtu"]
    port: str
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(default=1, ge=1, le=247)
    timeout: float = Field(default=1.0, gt=0, le=60, description="[s] per request")

    @property
    def endpoint(self) -> str:
        return f"rtu://{self.port}"


Connection = Annotated[TcpConnection | RtuConnection, Field(discriminator="type")]


class Calibration(Strict):
    """One calibration of a meter, as the certificate states it."""

    date: dt.date
    next_due: dt.date
    #: error found by this calibration, before adjustment [%]
    error_found_pct: float = 0.0
    #: maximum permissible error of the meter's accuracy class [%]
    mpe_pct: float = Field(gt=0)
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
    #: name of a profile in ``config/profiles/``
    profile: str
    #: per-channel field overrides of the profile, e.g. ``{ac_energy: {gain: 0.1}}``
    overrides: dict[str, dict] = Field(default_factory=dict)
    calibrations: list[Calibration] = Field(default_factory=list)
    #: the resolved register map (profile with overrides applied), filled by the loader
    register_map: Profile


class Mqtt(Strict):
    url: str
    #: names of the environment variables holding the credentials (never the values)
    username_env: str | None = None
    password_env: str | None = None
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
        _ = parts.port  # raises ValueError on a bad port
        return v

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
    #: rows kept while the broker is unreachable; beyond it the oldest are dropped, loudly
    max_rows: int = Field(default=5_000_000, ge=100)
    #: backlog delivered at most this fast [messages/s], beside live readings
    backlog_rate: float = Field(default=200.0, gt=0)


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


class FixedParameter(Strict):
    """A value fixed ex ante for this site (e.g. a transformer's factory-tested no-load
    loss), or a site's own choice among a methodology's default values."""

    parameter: str
    unit_id: str | None = None
    value: float
    unit: str
    source: str
    status: Literal["confirmed", "unconfirmed"] = "confirmed"


class Quality(Strict):
    """Thresholds of the monthly quality checks."""

    #: month-to-date or monthly completeness below this needs review [fraction]
    completeness_review: float = Field(default=0.95, gt=0, le=1)
    #: below this there is not enough data for a conservative claim [fraction]
    completeness_fail: float = Field(default=0.5, ge=0, le=1)
    #: main and check meter may disagree by this much [fraction]
    check_meter_tolerance: float = Field(default=0.02, gt=0)
    #: counters and their integrated power may disagree by this much per day [fraction]
    power_integration_tolerance: float = Field(default=0.05, gt=0)
    #: the monitoring plan's recording interval: completeness counts these slots [s]
    recording_interval_s: float = Field(default=900.0, gt=0)


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
    devices: list[Device] = Field(min_length=1)
    monitoring: list[MonitoringPoint] = Field(default_factory=list)
    fixed_parameters: list[FixedParameter] = Field(default_factory=list)
    quality: Quality = Quality()

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
        ids = [d.id for d in self.devices]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"device ids must be unique: {', '.join(dupes)} repeated")
        addresses: dict[tuple, str] = {}
        buses: dict[str, RtuConnection] = {}
        for d in self.devices:
            c = d.connection
            key = (c.endpoint, c.unit_id)
            if key in addresses:
                raise ValueError(f"devices '{addresses[key]}' and '{d.id}' share {c.endpoint} unit {c.unit_id}")
            addresses[key] = d.id
            if isinstance(c, RtuConnection):
                first = buses.setdefault(c.port, c)
                line = ("baudrate", "parity", "stopbits", "bytesize")
                if any(getattr(first, k) != getattr(c, k) for k in line):
                    raise ValueError(f"devices on serial port {c.port} disagree on its line settings (baudrate/parity/stopbits/bytesize)")
        for m in self.monitoring:
            for src in m.sources + ([m.power_source] if m.power_source else []):
                dev_id, _, channel = src.partition(".")
                dev = next((d for d in self.devices if d.id == dev_id), None)
                if dev is None:
                    raise ValueError(f"monitoring {m.parameter}: source '{src}' names no device of this site")
                if channel not in {p.channel for p in dev.register_map.points}:
                    raise ValueError(f"monitoring {m.parameter}: device '{dev_id}' has no channel '{channel}'")
        return self

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
