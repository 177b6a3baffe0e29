"""Collector configuration (``config/collector.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contract.config.profile import Strict
from contract.config.site import Mqtt
from contract.future_limit import MAX_FUTURE_S


class CollectorConfig(Strict):
    broker: Mqtt
    #: MQTT protocol: 5 (session expiry, Receive Maximum) or 3.1.1 (clean_session=False) for brokers without 5
    protocol: Literal["5", "3.1.1"] = "5"
    #: fixed, so that the broker keeps this collector's session (and its unacknowledged messages)
    client_id: str = "jcm-collector-1"
    #: several collectors with one group share the stream (``$share/<group>/...``)
    share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    store: str = "sqlite:///var/jcm.db"
    #: site files: the collector accepts readings of these sites, gateways and devices only
    sites_dir: str = "config/sites"
    batch_size: int = Field(default=500, ge=1, le=100_000)
    #: flush at least this often [s]: the broker sends at most its in-flight window unacknowledged
    batch_timeout: float = Field(default=0.2, gt=0, le=60)
    #: how long the broker keeps the session while the collector is away [s]
    session_expiry: int = Field(default=7 * 86400, ge=0)
    #: MQTT 5 Receive Maximum: unacknowledged messages the broker may send us
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    max_payload_bytes: int = Field(default=65536, ge=256)
    #: readings stamped further than this in the future are rejected [s]
    max_future_s: float = Field(default=MAX_FUTURE_S, ge=0)
