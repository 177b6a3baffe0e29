"""A methodology's parameters and default values, as data (``defaults/``, installed with the package).

Default values are fixed ex ante by each methodology version; they live in config,
each with its unit, source and status (confirmed / unconfirmed), never in code; so do
the physical range of every parameter.

References
----------
docs/methodologies.md, sections 1.5 (default values) and 1.6 (physical ranges).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.config import ConfigError
from contract.config.loader import METHODOLOGIES_DIR

SPEC_DIR = METHODOLOGIES_DIR


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParameterSpec(_Strict):
    unit: str
    kind: Literal["monitored", "fixed"]
    option: Literal["A", "B", "C"] | None = None
    #: one value per unit i of a Σ_i term (else one per period)
    per_unit: bool = False
    #: whether a larger value raises or lowers the emission reductions (drives conservative treatment)
    effect: Literal["raises", "lowers"]
    description: str = ""
    #: the physical range of a value in ``unit``, bounds included: what any real plant,
    #: meter or published factor can give. A value outside it is a unit or typing mistake
    #: (an emission factor of 797 is kgCO2/MWh, not tCO2/MWh) and is refused, never used.
    min: float
    max: float | None = None
    #: for period totals bounded by the period's length (hours energised): at most this much per hour
    max_per_hour: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> "ParameterSpec":
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max {self.max:g} is below min {self.min:g}")
        return self

    def range_problem(self, value: float, period_hours: float | None = None) -> str | None:
        """Why ``value`` [unit] cannot be this parameter, or None if it is within the physical range.

        Parameters
        ----------
        value : float
            The value given [unit].
        period_hours : float, optional
            Length of the monitoring period [h], for parameters bounded per hour.

        Returns
        -------
        str or None
            The problem, naming the value, the range and the unit.
        """
        def q(v: float) -> str:
            return f"{v:.15g}" + ("" if self.unit == "-" else f" {self.unit}")

        if value < self.min or (self.max is not None and value > self.max):
            span = f"{q(self.min)} to {q(self.max)}" if self.max is not None else f"at least {q(self.min)}"
            problem = f"{q(value)} is outside the physical range ({span})"
            if self.max is not None and value > self.max and self.min <= value / 1000 <= self.max:
                problem += (f"; {value / 1000:.15g} would be in range: is it in a unit 1000 times smaller "
                            "(kg for t, kWh for MWh)?")
            return problem
        if self.max_per_hour is not None and period_hours is not None and value > self.max_per_hour * period_hours:
            return (f"{q(value)} is more than the period allows "
                    f"({q(self.max_per_hour)} per hour of its {period_hours:g} h)")
        return None


class DefaultValue(_Strict):
    value: float
    unit: str
    status: Literal["confirmed", "unconfirmed"]
    source: str
    note: str = ""


class Constant(_Strict):
    value: float
    unit: str
    source: str


class MethodologySpec(_Strict):
    methodology: str
    version: str
    title: str
    status: Literal["confirmed", "provisional"]
    rounding: Literal["down", "nearest"] = "down"
    source: str
    parameters: dict[str, ParameterSpec]
    defaults: dict[str, DefaultValue] = Field(default_factory=dict)
    constants: dict[str, Constant] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _defaults_fit(self) -> "MethodologySpec":
        for name, d in self.defaults.items():
            p = self.parameters.get(name)
            if p is None:
                raise ValueError(f"defaults.{name}: not a parameter of {self.methodology}")
            if d.unit != p.unit:
                raise ValueError(f"defaults.{name}: unit {d.unit} differs from the parameter's {p.unit}")
            if problem := p.range_problem(d.value):
                raise ValueError(f"defaults.{name}: {problem}")
        return self

    @property
    def provisional(self) -> bool:
        return self.status == "provisional"


#: the specs read, by file, with the file's modification time [ns] and size when read: each month
#: processed asked for its site's, and parsing the YAML again cost 1 - 5 ms
_read: dict[Path, tuple[int, int, MethodologySpec]] = {}


def load_spec(methodology: str, spec_dir: Path = SPEC_DIR) -> MethodologySpec:
    """The methodology's spec, read from its file again whenever the file changed."""
    path = spec_dir / f"{methodology}.yaml"
    try:
        stat = path.stat()
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in spec_dir.glob("*.yaml")))
        raise ConfigError(f"unknown methodology '{methodology}' (known: {known})") from None
    mtime, size, spec = _read.get(path, (None, None, None))
    if (mtime, size) == (stat.st_mtime_ns, stat.st_size):
        return spec
    try:
        spec = MethodologySpec.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise ConfigError("\n".join(lines)) from None
    _read[path] = (stat.st_mtime_ns, stat.st_size, spec)
    return spec
