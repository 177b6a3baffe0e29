"""A methodology's parameters and default values, as data (``defaults/``, installed with the package).

Default values are fixed ex ante by each methodology version; they live in config,
each with its unit, source and status (confirmed / unconfirmed), never in code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.config import ConfigError

SPEC_DIR = Path(__file__).resolve().parent / "defaults"


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

    @property
    def provisional(self) -> bool:
        return self.status == "provisional"


def load_spec(methodology: str, spec_dir: Path = SPEC_DIR) -> MethodologySpec:
    path = spec_dir / f"{methodology}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in spec_dir.glob("*.yaml")))
        raise ConfigError(f"unknown methodology '{methodology}' (known: {known})")
    try:
        return MethodologySpec.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise ConfigError("\n".join(lines)) from None
