"""Load and validate configuration files, once, with errors that name file and key.

Every problem in a file is reported in one ``ConfigError`` whose message reads
``<file>: <key.path>: <what is wrong>``, one line per problem.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from contract.config.collector import CollectorConfig
from contract.config.profile import Profile
from contract.config.site import Site
from contract.units import factor

#: each methodology version's parameters (with their units) and default values
METHODOLOGIES_DIR = Path(__file__).resolve().parents[2] / "config" / "methodologies"

_SECRET_KEYS = {"password", "username", "token", "secret"}


class ConfigError(ValueError):
    """A configuration file is unreadable or invalid."""


def _key_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _errors(source: Path | str, exc: ValidationError, prefix: tuple = ()) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(p for p in err["loc"] if p not in ("tcp", "rtu"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
            if str(loc[-1]) in _SECRET_KEYS:
                msg += " (secrets are never stored in a file: name an environment variable in username_env/password_env)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{source}: {_key_path(loc)}: {msg}")
    return lines


def _override_errors(path: Path, exc: ValidationError, device_index: int, merged: dict) -> list[str]:
    """Errors of an overridden profile, named by the channel the override touched."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        if len(loc) >= 2 and loc[0] == "points" and isinstance(loc[1], int):
            loc = [merged["points"][loc[1]].get("channel", loc[1])] + loc[2:]
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {_key_path(('devices', device_index, 'overrides', *loc))}: {msg}")
    return lines


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping of keys, got {type(data).__name__}")
    return data


def _validate(model, data: dict, path: Path):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_errors(path, exc))) from None


def load_profile(path: Path | str) -> Profile:
    return _validate(Profile, _read_yaml(Path(path)), Path(path))


def _apply_overrides(profile: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(profile)
    by_channel = {p.get("channel"): p for p in merged.get("points", [])}
    for channel, fields in overrides.items():
        if channel not in by_channel:
            raise KeyError(channel)
        if not isinstance(fields, dict):
            raise TypeError(channel)
        by_channel[channel].update(fields)
    return merged


def load_site(path: Path | str, profiles_dir: Path | str | None = None) -> Site:
    """Load a site file and resolve each device's profile (default: ``../profiles``)."""
    path = Path(path)
    data = _read_yaml(path)
    profiles_dir = Path(profiles_dir) if profiles_dir else path.parent.parent / "profiles"
    problems: list[str] = []
    raw_profiles: dict[str, dict] = {}
    for i, device in enumerate(data.get("devices") or []):
        if not isinstance(device, dict) or not isinstance(device.get("profile"), str):
            continue  # the model reports it
        name = device["profile"]
        if name not in raw_profiles:
            ppath = profiles_dir / f"{name}.yaml"
            if not ppath.exists():
                problems.append(f"{path}: devices.{i}.profile: no profile '{name}' in {profiles_dir}")
                continue
            raw_profiles[name] = _read_yaml(ppath)
            try:
                Profile.model_validate(raw_profiles[name])
            except ValidationError as exc:
                problems.extend(_errors(ppath, exc))
                continue
        try:
            merged = _apply_overrides(raw_profiles[name], device.get("overrides") or {})
            device["register_map"] = Profile.model_validate(merged)
        except KeyError as exc:
            problems.append(f"{path}: devices.{i}.overrides.{exc.args[0]}: profile '{name}' has no such channel")
        except TypeError as exc:
            problems.append(f"{path}: devices.{i}.overrides.{exc.args[0]}: expected a mapping of point fields")
        except ValidationError as exc:
            problems.extend(_override_errors(path, exc, i, merged))
    if problems:
        raise ConfigError("\n".join(problems))
    site = _validate(Site, data, path)
    problems = _fixed_parameter_problems(site, path)
    if problems:
        raise ConfigError("\n".join(problems))
    return site


def _fixed_parameter_problems(site: Site, path: Path) -> list[str]:
    """Each fixed value names a parameter of the site's methodology, once, in a unit that
    converts to the methodology's (797 kgCO2/MWh is 0.797 tCO2/MWh; kg is no emission factor)."""
    spec_path = METHODOLOGIES_DIR / f"{site.methodology}.yaml"
    if not spec_path.exists():  # an unknown methodology, or a gateway installed without them: processing refuses it
        return []
    parameters = _read_yaml(spec_path).get("parameters") or {}
    problems, seen = [], set()
    for i, p in enumerate(site.fixed_parameters):
        where = f"{path}: fixed_parameters.{i}"
        if p.parameter not in parameters:
            problems.append(f"{where}.parameter: {site.methodology} has no parameter '{p.parameter}' "
                            f"(known: {', '.join(parameters)})")
            continue
        if (p.parameter, p.unit_id) in seen:
            problems.append(f"{where}: {p.parameter}{f'[{p.unit_id}]' if p.unit_id else ''} is given twice")
        seen.add((p.parameter, p.unit_id))
        unit = parameters[p.parameter]["unit"]
        try:
            factor(p.unit, unit)
        except ValueError as exc:
            problems.append(f"{where}.unit: {exc}; {site.methodology} gives {p.parameter} in {unit}")
    return problems


def load_collector(path: Path | str) -> CollectorConfig:
    return _validate(CollectorConfig, _read_yaml(Path(path)), Path(path))
