"""Collector configuration (``config/collector.yaml``)."""

from __future__ import annotations

from typing import Literal

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from contract.config.profile import Strict
from contract.config.site import CollectorId, Mqtt
from contract.future_limit import MAX_FUTURE_S


class CollectorConfig(Strict):
    broker: Mqtt
    #: MQTT protocol: 5 (session expiry, Receive Maximum) or 3.1.1 (clean_session=False) for brokers without 5
    protocol: Literal["5", "3.1.1"] = "5"
    #: fixed, so that the broker keeps this collector's session (and its unacknowledged messages);
    #: a gateway's ``outbox.acknowledged_by`` names collectors by it
    client_id: CollectorId = "jcm-collector-1"
    #: several collectors with one group share the stream (``$share/<group>/...``)
    share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    store: str = "sqlite:///var/jcm.db"
    #: site files: the collector accepts readings of these sites, gateways and devices only
    sites_dir: str = "config/sites"
    batch_size: int = Field(default=500, ge=1, le=100_000)
    #: flush at least this often [s]: the broker sends at most its in-flight window unacknowledged
    batch_timeout: float = Field(default=0.2, ge=0.01, le=60)
    #: how long the broker keeps the session while the collector is away [s]
    session_expiry: int = Field(default=7 * 86400, ge=0, le=0xFFFFFFFF)  # MQTT 5: four bytes
    #: MQTT 5 Receive Maximum: unacknowledged messages the broker may send us
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    max_payload_bytes: int = Field(default=65536, ge=256, le=268_435_455)  # MQTT's largest
    #: readings stamped further than this in the future are rejected [s]
    max_future_s: float = Field(default=MAX_FUTURE_S, ge=0, le=86400)
    #: a missing seq is a gap once missing this long [s]: longer than the gateway's backlog
    #: lane may lag behind its live lane, or the backlog shows as false gaps
    gap_grace_s: float = Field(default=600, ge=0, le=30 * 86400)
    #: dead letters kept whole per site in each window; the rest are counted in one summary
    #: letter, so that a site sending garbage cannot fill the store's disk
    dead_letters_per_window: int = Field(default=120, ge=1, le=1_000_000)
    dead_letter_window_s: float = Field(default=60, ge=1, le=86400)
    #: a gateway whose clock is further than this from the collector's stamps readings that are
    #: flagged (a clock finding): their stamps may not be when they were taken [s]
    clock_offset_max_s: float = Field(default=120, gt=0, le=86400)
    #: how long a clock must look that far behind before it is judged wrong rather than its readings
    #: late (a backlog drains: its offsets rise) [s]
    clock_window_s: float = Field(default=300, ge=0, le=86400)

    @field_validator("store")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        if urlsplit(v).username is not None:
            # never echo the URL: it may hold the secret
            raise ValueError("the store URL holds credentials: name environment variables in token_env "
                             "or username_env/password_env instead")
        return v
