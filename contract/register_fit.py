"""Whether a reading's values fit its device's register map: the rule every stage applies.

A reading may carry only channels of its device's register map (the profile with its
overrides), and each value must be of its point's type: text for a ``string`` point, a
number (or null) for any other. The collector refuses a reading that does not fit (InfluxDB
types a field by the first value written to each shard, for every site at once: one text
value of a number channel would have all later numbers of that channel refused); the live
view ignores it, so that it never shows or alarms on what the store will not hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from contract.config.site import Device


@dataclass(frozen=True)
class DeviceFit:
    """What a device's readings may carry."""

    #: the channels of its register map
    channels: frozenset[str]
    #: those of them whose points are text (type ``string``)
    text: frozenset[str]

    @classmethod
    def of(cls, device: Device) -> DeviceFit:
        points = device.register_map.points
        return cls(frozenset(p.channel for p in points), frozenset(p.channel for p in points if p.type == "string"))

    def misfit(self, values: Mapping[str, object], device: str) -> str | None:
        """Why ``values`` (channel -> value) do not fit the register map, or None when they do;
        ``device``: how the reason names the device."""
        if not self.channels.issuperset(values):
            return f"{device} has no channel(s) {', '.join(sorted(set(values) - self.channels))} in its register map"
        if self.text or str in set(map(type, values.values())):  # else all numbers (or nulls) of number channels
            for channel, v in values.items():
                if v is not None and isinstance(v, str) != (channel in self.text):
                    return (f"value of '{channel}' is {'text' if isinstance(v, str) else 'a number'}, but its "
                            f"register map point is {'text' if channel in self.text else 'a number'}")
        return None
