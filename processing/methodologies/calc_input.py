"""The input of one period's calculation, validated once by one typed model per methodology.

The same model checks a ``jcm calc`` file and the period totals the processor hands to
``calculate``: the keys a methodology knows, numbers that are numbers (finite, not
booleans, not text), each value inside its parameter's physical range as
``config/methodologies/`` defines it, unit ids unique, a period whose end is not
before its start, and hours that fit in it. Every problem is one line naming the key
path (``units.1.EF_RE``) and what is wrong; a file's lines also name the file.

References
----------
docs/methodologies.md, section 8 (``jcm calc`` input and output).
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, Strict, ValidationError,
                      create_model, field_validator, model_validator)

from processing.methodologies.spec import MethodologySpec, ParameterSpec


class InputError(ValueError):
    """A calculation input is not one the methodology can compute: every problem, one line each."""


class _YamlLoader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``1e3`` (no dot) is a string; YAML 1.2 and every
    reader of the file take it for the number 1000, and so does this loader. Dates stay
    text for the model to read, so a bad one (2021-02-30) is reported at its key."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(path: Path) -> Any:
    """The YAML document of ``path``; an unreadable or malformed file is an ``InputError`` naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InputError(f"{path}: {where}not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # an integer of 5000 digits, nesting 1000 deep
        raise InputError(f"{path}: not valid YAML: {exc}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Period(_Strict):
    """A monitoring period: whole local days, both ends included."""

    start: dt.date
    end: dt.date

    @field_validator("start", "end", mode="before")
    @classmethod
    def _a_day(cls, v: Any) -> Any:
        if not isinstance(v, (dt.date, str)):  # pydantic would read a number as seconds since 1970
            raise ValueError(f"expected a date (YYYY-MM-DD), got {_got(v)}")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> "Period":
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    @property
    def hours(self) -> float:
        """Length [h] of the period's days, 24 h each."""
        return ((self.end - self.start).days + 1) * 24.0


_NUMBER_WITH_UNIT = re.compile(r"^\s*[-+]?(\d[\d_,]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*\S+")


def _value_of(p: ParameterSpec):
    """The check of one parameter's value: a finite number (an int, a float, or a Decimal
    from exact period totals; never a boolean or text), inside the physical range."""

    def check(v: Any) -> float | Decimal:
        if isinstance(v, bool):
            raise ValueError(f"expected a number in {p.unit}, got a boolean ({str(v).lower()}: YAML reads "
                             "yes/no/on/off/true/false as booleans)")
        if isinstance(v, str):
            hint = f": give the number alone, in {p.unit}" if _NUMBER_WITH_UNIT.match(v) else ""
            raise ValueError(f"expected a number in {p.unit}, got the text {v!r}{hint}")
        if not isinstance(v, (numbers.Real, Decimal)):
            raise ValueError(f"expected a number in {p.unit}, got {_got(v)}")
        try:
            as_float = float(v)
        except OverflowError:
            raise ValueError(f"{len(str(abs(int(v))))}-digit integer is too large for a number in {p.unit}") from None
        if not math.isfinite(as_float):
            raise ValueError(f"expected a finite number, got {v}")
        if problem := p.range_problem(as_float):
            raise ValueError(problem)
        return v if isinstance(v, Decimal) else as_float

    return check


def _version_text(v: Any) -> Any:
    # an unquoted version (2.0) is a float to YAML; the version it means is its text
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


#: the models made, by spec object (held, so that its id names no other while it is here) and
#: ``period_required``: building one cost ~2 ms, once per month processed (``load_spec`` gives the
#: same spec object until its file changes)
_models: dict[tuple[int, bool], tuple[MethodologySpec, type[BaseModel]]] = {}
_MODELS_KEPT = 32


def input_model(spec: MethodologySpec, period_required: bool = False) -> type[BaseModel]:
    """The typed model of a calculation's input under ``spec``, made once per spec object.

    Parameters
    ----------
    spec : MethodologySpec
        The methodology version: its parameters, ranges and default values.
    period_required : bool
        Whether the input must state its monitoring period (a ``jcm calc`` file must).

    Returns
    -------
    type[BaseModel]
        A model with ``methodology``, ``version``, ``period``, ``units`` and ``parameters``.
    """
    key = (id(spec), period_required)
    held, model = _models.get(key, (None, None))
    if held is not spec:
        if len(_models) >= _MODELS_KEPT:
            _models.clear()
        model = _input_model(spec, period_required)
        _models[key] = (spec, model)
    return model


def _input_model(spec: MethodologySpec, period_required: bool) -> type[BaseModel]:
    per_unit = {n: p for n, p in spec.parameters.items() if p.per_unit}
    per_period = {n: p for n, p in spec.parameters.items() if not p.per_unit}

    def fields(params: dict) -> dict:
        # a parameter with a default may be left out (None until the default fills it); null is not a value
        return {name: (Annotated[float | Decimal, PlainValidator(_value_of(p))],
                       ... if name not in spec.defaults else None) for name, p in params.items()}

    unit_model = create_model(f"{spec.methodology}Unit", __base__=_Strict, id=(Annotated[str, Strict()] | None, None),
                              **fields(per_unit))
    parameters_model = create_model(f"{spec.methodology}Parameters", __base__=_Strict, **fields(per_period))
    units_field = Field(min_length=1) if per_unit else Field(max_length=0)

    class CalcInput(_Strict):
        methodology: Literal[spec.methodology] | None = None  # type: ignore[valid-type]
        version: Annotated[str, BeforeValidator(_version_text)] | None = None
        period: Period | None = None
        # validated when absent too: a methodology that needs units or parameters says which
        units: Annotated[list[unit_model], units_field] = Field(  # type: ignore[valid-type]
            default_factory=list, validate_default=True)
        parameters: parameters_model = Field(default_factory=dict, validate_default=True)  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _consistent(self) -> "CalcInput":
            problems = []
            if period_required and self.period is None:
                problems.append("period: required key is missing: the period's first and last day, "
                                "{start: YYYY-MM-DD, end: YYYY-MM-DD}")
            if self.version is not None and self.version != spec.version:
                problems.append(f"version: the input is for version {self.version}, "
                                f"config/methodologies/{spec.methodology}.yaml has version {spec.version}")
            seen: dict[str, int] = {}
            for i, u in enumerate(self.units):
                u.id = u.id if u.id is not None else f"unit-{i + 1}"
                if u.id in seen:
                    problems.append(f"units.{i}.id: {u.id!r} is already the id of units.{seen[u.id]}")
                seen.setdefault(u.id, i)
            # totals bounded by the period's length (hours energised)
            groups = [(f"units.{i}", u, per_unit) for i, u in enumerate(self.units)] + [
                ("parameters", self.parameters, per_period)]
            for where, values, params in groups if self.period is not None else []:
                for name, p in params.items():
                    v = getattr(values, name)
                    if v is not None and (problem := p.range_problem(v, self.period.hours)):
                        problems.append(f"{where}.{name}: {problem}; period {self.period.start} to {self.period.end}")
            if problems:
                raise ValueError("\n".join(problems))
            return self

    CalcInput.__name__ = f"{spec.methodology}Input"
    return CalcInput


def validate_input(spec: MethodologySpec, data: Any, source: str = "", period_required: bool = False) -> BaseModel:
    """``data`` checked against ``input_model(spec)``.

    Parameters
    ----------
    spec : MethodologySpec
        The methodology version.
    data : Any
        The input: a mapping with ``units``, ``parameters`` and optionally ``methodology``,
        ``version`` and ``period``.
    source : str
        What to name at the start of every problem (the file), or nothing.
    period_required : bool
        See ``input_model``.

    Returns
    -------
    BaseModel
        The validated input; each unit has its id (``unit-<n>`` where none was given).

    Raises
    ------
    InputError
        With one line per problem: ``<source>: <key.path>: <what is wrong>``.
    """
    prefix = f"{source}: " if source else ""
    if not isinstance(data, dict):
        what = "nothing (an empty file)" if data is None else _got(data)
        raise InputError(f"{prefix}(top level): expected a mapping with period, units and parameters, got {what}")
    try:
        return input_model(spec, period_required).model_validate(data)
    except ValidationError as exc:
        raise InputError("\n".join(prefix + line for e in exc.errors(include_url=False)
                                   for line in _explain(spec, e).split("\n"))) from None


def _got(v: Any) -> str:
    """What a YAML value is, in the words of an error message."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    return {dict: "a mapping", list: "a list", str: "text"}.get(type(v), f"a {type(v).__name__}")


def _key(part: Any) -> str:
    """A key path component as written, or quoted where it would not read as one."""
    text = str(part)
    return text if isinstance(part, int) or re.fullmatch(r"[\w-]+", text) else repr(part)


def _explain(spec: MethodologySpec, err: dict) -> str:
    """One pydantic error as ``key.path: problem`` in the terms of the methodology."""
    m, loc, kind, value = spec.methodology, tuple(err["loc"]), err["type"], err.get("input")
    path = ".".join(map(_key, loc))
    name = str(loc[-1]) if loc else ""
    param = spec.parameters.get(name) if len(loc) >= 2 and loc[0] in ("units", "parameters") else None
    per_unit = sorted(n for n, p in spec.parameters.items() if p.per_unit)
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # the model's own consistency checks: lines that already name their key path
        return msg
    if kind.startswith("date_") and loc[0] == "period":
        msg = f"expected a date YYYY-MM-DD, got {value!r} ({msg.split(', ', 1)[-1]})"
    elif kind == "missing" and param is not None:
        msg = f"missing, and {m} {spec.version} has no default value for it"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "extra_forbidden" and loc[0] == "parameters" and len(loc) == 2:
        msg = (f"'{name}' is given per unit in {m} (under units)" if name in per_unit else
               f"{m} has no parameter {name!r} (known: {', '.join(spec.parameters)})")
    elif kind == "extra_forbidden" and loc[0] == "units" and len(loc) == 3:
        msg = f"{m} has no per-unit parameter {name!r}"
        msg += f" ({name} is a period parameter)" if name in spec.parameters else ""
    elif kind == "extra_forbidden":
        msg = f"unknown key {name!r}"
        msg += " (known: methodology, version, period, units, parameters)" if len(loc) == 1 else ""
    elif kind == "too_short" and loc == ("units",):
        msg = f"{m} sums over units; give at least one unit with {', '.join(per_unit)}"
    elif kind == "too_long" and loc == ("units",):
        msg = f"{m} has no per-unit parameters: give its values under parameters"
    elif kind == "list_type" and loc == ("units",):
        msg = f"expected a list of units (- {{id: ..., {', '.join(per_unit) or '...'}: ...}}), got {_got(value)}"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        msg = f"expected a mapping of keys, got {_got(value)}"
    elif kind == "literal_error" and loc == ("methodology",):
        msg = f"the input is for {value!r}, the command computes {m}"
    elif kind == "string_type":
        msg = f"expected text, got {_got(value)}"
    return f"{path}: {msg}"
