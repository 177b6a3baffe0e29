"""Configuration models, validated once at load time."""

from contract.config.collector import CollectorConfig
from contract.config.loader import ConfigError, load_collector, load_profile, load_site
from contract.config.profile import Point, Profile
from contract.config.site import Device, RtuConnection, Site, TcpConnection

__all__ = [
    "CollectorConfig",
    "load_collector",
    "ConfigError",
    "Device",
    "Point",
    "Profile",
    "RtuConnection",
    "Site",
    "TcpConnection",
    "load_profile",
    "load_site",
]
