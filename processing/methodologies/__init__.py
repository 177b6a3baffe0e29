"""One module per JCM methodology of the reference sites, and the calculator that
feeds them: parameter resolution against the methodology's spec (defaults,
overrides, unknown and missing names), then RE, PE, ER and the rounding rule."""

from __future__ import annotations

from types import ModuleType

from contract.config import ConfigError
from processing.methodologies import id_prov_biomass, mn_am003, mv_am002, ph_prov_biogas, vn_am005
from processing.methodologies.common import Calculation, emission_reductions, round_period_er
from processing.methodologies.spec import MethodologySpec, load_spec

MODULES: dict[str, ModuleType] = {m.METHODOLOGY: m for m in (mn_am003, mv_am002, vn_am005, ph_prov_biogas, id_prov_biomass)}


class InputError(ValueError):
    """A calculation input names an unknown parameter or lacks a required one."""


def calculate(methodology: str, period: dict, units: list[dict] | None = None, version: str | None = None,
              spec: MethodologySpec | None = None) -> Calculation:
    """Compute one monitoring period from its monitored values.

    ``period`` holds period-level parameters, ``units`` one dict per unit i (with ``id``)
    for the parameters the methodology sums over units. Default values of the
    methodology version fill what the inputs do not give; a given value overrides one.
    """
    if methodology not in MODULES:
        raise InputError(f"unknown methodology '{methodology}' (known: {', '.join(MODULES)})")
    spec = spec or load_spec(methodology)
    if version is not None and version != spec.version:
        raise ConfigError(f"{methodology}: inputs are for version {version}, the configured defaults are version {spec.version}")
    units = [dict(u) for u in units or []]
    period = dict(period)
    per_unit = {n for n, p in spec.parameters.items() if p.per_unit}
    per_period = set(spec.parameters) - per_unit
    for name in period:
        if name not in spec.parameters:
            raise InputError(f"parameters.{name}: {methodology} has no parameter '{name}' (known: {', '.join(spec.parameters)})")
        if name in per_unit:
            raise InputError(f"parameters.{name}: '{name}' is given per unit in {methodology} (under units)")
    for i, u in enumerate(units):
        for name in u:
            if name != "id" and name not in per_unit:
                raise InputError(f"units.{i}.{name}: {methodology} has no per-unit parameter '{name}'"
                                 + (f" ({name} is a period parameter)" if name in per_period else ""))
    if per_unit and not units:
        raise InputError(f"units: {methodology} sums over units; give at least one unit with {', '.join(sorted(per_unit))}")
    used_defaults: dict[str, dict] = {}

    def fill(values: dict, names: set[str], where: str) -> None:
        """Take the methodology version's default for every parameter the inputs do not give."""
        for name in sorted(names - set(values)):
            if name not in spec.defaults:
                raise InputError(f"{where}{name}: missing, and {methodology} {spec.version} has no default value for it")
            values[name] = spec.defaults[name].value
            used_defaults[name] = spec.defaults[name].model_dump()

    fill(period, per_period, "parameters.")
    for i, u in enumerate(units):
        u.setdefault("id", f"unit-{i + 1}")
        fill(u, per_unit, f"units.{i}.")
    unconfirmed = any(d["status"] != "confirmed" for d in used_defaults.values())
    RE, PE, lines = MODULES[methodology].compute(period, units)
    ER_unrounded = float(emission_reductions(RE, PE))
    ER = round_period_er(ER_unrounded, spec.rounding)
    lines.append(f"ER = RE − PE = {RE} − {PE} = {ER_unrounded}")
    lines.append(f"ER (period, rounded {spec.rounding} to whole tCO2) = {ER}")
    return Calculation(
        methodology=methodology, version=spec.version, RE=float(RE), PE=float(PE), ER_unrounded=ER_unrounded, ER=ER,
        provisional=spec.provisional or unconfirmed, parameters=period, units=units,
        defaults_used=used_defaults, explanation=lines,
    )


__all__ = ["MODULES", "Calculation", "InputError", "calculate", "load_spec"]
