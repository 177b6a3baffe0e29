"""The fixed (ex-ante) values a calculation uses, and where each came from.

Each fixed parameter of the methodology takes the site's own value (site file
``fixed_parameters``, converted to the methodology's unit) or else the default value of
the methodology version. Every one is recorded in the month's ledger revision with its
origin, source and status, so that an export of the month computes with exactly these
values, and a configuration that changed since is reported instead of applied (a new
figure needs a new revision). An unconfirmed value makes the figure provisional.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from contract.config.site import Site
from contract.units import convert
from processing.methodologies.spec import MethodologySpec

SITE, DEFAULT = "site configuration", "methodology default"


@dataclass(frozen=True)
class FixedValue:
    parameter: str
    unit_id: str | None
    value: float  # [unit]
    unit: str  # the methodology's unit for the parameter
    origin: str  # SITE or DEFAULT
    source: str
    status: str  # confirmed | unconfirmed
    configured: str  # the value as written in the configuration, with its unit

    @property
    def key(self) -> str:
        return self.parameter if self.unit_id is None else f"{self.parameter}[{self.unit_id}]"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.value:g} {self.unit} ({self.origin}, {self.status})"


def from_config(site: Site, spec: MethodologySpec) -> list[FixedValue]:
    """The fixed values today's configuration gives ``site``, sorted by key."""
    def unit_of(name: str, unit_id: str | None) -> str | None:
        return (unit_id or "unit-1") if spec.parameters[name].per_unit else None

    own = {(p.parameter, unit_of(p.parameter, p.unit_id)): p for p in site.fixed_parameters}
    unit_ids = sorted({unit_of(m.parameter, m.unit_id) for m in site.monitoring
                       if m.parameter in spec.parameters and spec.parameters[m.parameter].per_unit}
                      | {uid for (name, uid) in own if uid is not None})
    out = []
    for name, p in spec.parameters.items():
        if p.kind != "fixed":
            continue
        for uid in unit_ids if p.per_unit else [None]:
            if (name, uid) in own:
                f = own[(name, uid)]
                out.append(FixedValue(name, uid, convert(f.value, f.unit, p.unit), p.unit, SITE, f.source, f.status,
                                      f"{f.value:g} {f.unit}"))
            elif name in spec.defaults:
                d = spec.defaults[name]
                out.append(FixedValue(name, uid, convert(d.value, d.unit, p.unit), p.unit, DEFAULT,
                                      f"{spec.methodology} Ver{spec.version}: {d.source}", d.status,
                                      f"{d.value:g} {d.unit}"))
    return sorted(out, key=lambda f: f.key)


def from_record(rows: list[dict]) -> list[FixedValue]:
    return sorted((FixedValue(**r) for r in rows), key=lambda f: f.key)


def from_calculation(calculation: dict, spec: MethodologySpec, current: list[FixedValue]) -> list[FixedValue]:
    """The fixed values of a revision recorded before they were recorded with their
    origin: the values its calculation used, described as today's configuration
    describes them where the value is the same, else marked unconfirmed."""
    now = {f.key: f for f in current}
    found = [(name, None, v) for name, v in calculation["parameters"].items()]
    found += [(name, u["id"], v) for u in calculation["units"] for name, v in u.items() if name != "id"]
    out = []
    for name, uid, value in found:
        p = spec.parameters.get(name)
        if p is None or p.kind != "fixed":
            continue
        f = now.get(name if uid is None else f"{name}[{uid}]")
        if f is not None and f.value == value:
            out.append(f)
        else:
            out.append(FixedValue(name, uid, float(value), p.unit, "recorded value", "not recorded in the revision",
                                  "unconfirmed", f"{value:g} {p.unit}"))
    return sorted(out, key=lambda f: f.key)


def changes(used: list[FixedValue], current: list[FixedValue]) -> list[str]:
    """How today's configuration differs from the fixed values ``used``, one line each."""
    a, b = {f.key: f for f in used}, {f.key: f for f in current}
    lines = []
    for key in sorted(set(a) | set(b)):
        was, now = a.get(key), b.get(key)
        if was is None:
            lines.append(f"{key}: not used by the revisions; the configuration now gives {now.describe()}")
        elif now is None:
            lines.append(f"{key}: the revisions used {was.describe()}; the configuration now gives none")
        elif (was.value, was.unit, was.status, was.origin) != (now.value, now.unit, now.status, now.origin):
            lines.append(f"{key}: the revisions used {was.describe()}; the configuration now gives {now.describe()}")
    return lines
