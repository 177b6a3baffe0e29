"""Load and validate configuration files, once, with errors that name file and key.

Every problem in a file is reported in one ``ConfigError`` whose message reads
``<file>: <key.path>: <what is wrong>``, one line per problem. Items of a list are named
by their id where they have one (``devices[inv-01].poll_interval``), else by position.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from contract.config.collector import CollectorConfig
from contract.config.problems import KeyProblems
from contract.text import printable
from contract.config.profile import Profile
from contract.config.site import Site
from contract.units import factor

#: each methodology version's parameters (with their units) and default values
METHODOLOGIES_DIR = Path(__file__).resolve().parents[2] / "processing" / "methodologies" / "defaults"

_SECRET_KEYS = {"password", "username", "token", "secret"}
#: per list, the keys whose values (joined) name its items in errors; an item without the
#: first of them, or whose name is not unique, is named by its position
_ITEM_NAMES = {"devices": ("id",), "points": ("channel",), "monitoring": ("parameter", "unit_id"),
               "fixed_parameters": ("parameter", "unit_id"), "calibrations": ("date",), "keys": ("id",)}
_PROFILE_NAME = re.compile(r"[a-z][a-z0-9_]*")
_POINT_PREFIX = re.compile(r"^points\[([^]]+)\]")
#: discriminator tags pydantic puts in the location of a tagged union's member
_UNION_TAGS = ("tcp", "rtu")
#: size of a configuration file [bytes]: a hundred times the largest shipped, and the
#: worst YAML of this size loads in seconds (4 MB took 86 s and 1.8 GB; /dev/zero, forever)
MAX_FILE_BYTES = 2**19
#: the register-map profiles installed with the package, found whatever the working directory
SHIPPED_PROFILES = Path(__file__).resolve().parents[1] / "profiles"


class ConfigError(ValueError):
    """A configuration file is unreadable or invalid."""


def _fail(lines: list[str]) -> ConfigError:
    return ConfigError("\n".join(printable(line) for line in lines))


def _item_label(list_key: str | int | None, items: list, index: int) -> str:
    """``inv-01`` for ``devices[1]`` if that id is unique in the list, else ``1``."""
    keys = _ITEM_NAMES.get(list_key, ())

    def name(item: Any) -> str:
        if not isinstance(item, dict) or not keys or item.get(keys[0]) is None:
            return ""
        parts = [item[k] for k in keys if item.get(k) is not None]
        if not all(isinstance(p, str | int | float | dt.date) for p in parts):
            return ""
        return ", ".join(str(p) for p in parts)

    label = name(items[index])
    if label and label.isprintable() and sum(name(other) == label for other in items) == 1:
        return label
    return str(index)


def _key_path(loc: tuple, data: Any) -> str:
    """Dotted key path of ``loc`` in ``data``, list items by name: ``devices[inv-01].connection.port``."""
    out, node, parent_key = "", data, None
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            out += f"[{_item_label(parent_key, node, part)}]"
            node = node[part]
        elif isinstance(part, int):
            out += f"[{part}]"
            node = None
        else:
            out += f"{'.' if out else ''}{part}"
            node = node.get(part) if isinstance(node, dict) else None
        parent_key = part
    return out or "(top level)"


def _errors(source: Path | str, exc: ValidationError, data: Any) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p not in _UNION_TAGS)
        problem = (err.get("ctx") or {}).get("error")
        if isinstance(problem, KeyProblems):
            lines += [f"{source}: {_key_path(loc + sub, data)}: {msg}" for sub, msg in problem.problems]
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
            if str(loc[-1]) in _SECRET_KEYS:
                msg += " (secrets are never stored in a file: name an environment variable in username_env/password_env)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{source}: {_key_path(loc, data)}: {msg}")
    return lines


def _duplicate_keys(root: yaml.Node) -> list[tuple[tuple, str, int, int]]:
    """Keys given twice in one mapping (YAML would keep the last one silently):
    (location, key, first line, second line)."""
    found, seen, stack = [], set(), [(root, ())]
    while stack:
        node, loc = stack.pop()
        if id(node) in seen:  # an alias: its anchor was walked already
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and name != "<<":
                    if name in first_line:
                        found.append((loc + (name,), name, first_line[name], key.start_mark.line + 1))
                    first_line.setdefault(name, key.start_mark.line + 1)
                stack.append((value, loc + (name,)))
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, loc + (i,)) for i, item in enumerate(node.value)]
    return sorted(found, key=lambda f: f[3])


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:  # at most the limit: /dev/zero or a log named by mistake must not fill memory
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise _fail([f"{path}: more than {MAX_FILE_BYTES // 2**10} KiB: not a configuration file "
                         "(the largest site file shipped is a few KiB)"])
        text = raw.decode("utf-8")
    except OSError as exc:
        raise _fail([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise _fail([f"{path}: byte {exc.start}: not UTF-8 text"]) from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        duplicates = _duplicate_keys(node) if node is not None else []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        why = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
        raise _fail([f"{path}: {where}not valid YAML: {why}"]) from None
    except RecursionError:
        raise _fail([f"{path}: (top level): nested too deeply to be a configuration file"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if duplicates:
        raise _fail([f"{path}: {_key_path(loc, data)}: key '{key}' is given twice (lines {a} and {b})"
                     for loc, key, a, b in duplicates])
    if not isinstance(data, dict):
        raise _fail([f"{path}: (top level): expected a mapping of keys, got {type(data).__name__}"])
    return data


def _validate(model, data: dict, path: Path):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _fail(_errors(path, exc, data)) from None
    except RecursionError:
        raise _fail([f"{path}: (top level): nested too deeply to be a configuration file"]) from None


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


def profile_dirs(path: Path, data: dict, profiles_dir: Path | str | None = None) -> list[Path]:
    """Where the profiles of the site file ``path`` are looked up, first match first: the
    directory given on the command line, the site's ``profiles_dir`` (relative to its file),
    ``profiles/`` beside the site's directory, and the profiles shipped with the package.
    A site adds or overrides profiles by putting them in one of the first three."""
    named = data.get("profiles_dir")
    candidates = [Path(profiles_dir) if profiles_dir else None,
                  path.parent / named if isinstance(named, str) and named else None,
                  path.parent.parent / "profiles", SHIPPED_PROFILES]
    dirs: list[Path] = []
    for d in candidates:  # one place once, however it is reached (config/profiles is a link to the shipped ones)
        # realpath, not Path.resolve: a symlink loop is a directory that is not there, not a crash
        if d is not None and all(os.path.realpath(d) != os.path.realpath(seen) for seen in dirs):
            dirs.append(d)
    return dirs


def _find_profile(name: str, dirs: list[Path]) -> Path | None:
    return next((d / f"{name}.yaml" for d in dirs if (d / f"{name}.yaml").is_file()), None)


def _resolve_profiles(path: Path, data: dict, dirs: list[Path]) -> list[str]:
    """Give each device its ``register_map`` (profile + overrides); a problem of a profile
    is reported once, in the profile's file, however many devices use it."""
    problems: list[str] = []
    devices = data.get("devices")
    if not isinstance(devices, list):
        return problems  # the model reports it
    raw_profiles: dict[str, dict | None] = {}  # None: missing or invalid, reported
    missing: set[str] = set()
    users: dict[str, list[str]] = {}
    for i, device in enumerate(devices):
        if not isinstance(device, dict) or not isinstance(device.get("profile"), str) \
                or not _PROFILE_NAME.fullmatch(device["profile"]):
            continue  # the model reports it
        where = _key_path(("devices", i), data)
        if "register_map" in device:
            problems.append(f"{path}: {where}.register_map: unknown key 'register_map' (it comes from the profile: "
                            "change single points with overrides)")
            continue
        name = device["profile"]
        users.setdefault(name, []).append(where)
        if name not in raw_profiles:
            raw_profiles[name] = None
            ppath = _find_profile(name, dirs)
            if ppath is None:
                missing.add(name)
                continue
            try:
                raw = _read_yaml(ppath)
                Profile.model_validate(raw)
                raw_profiles[name] = raw
            except ConfigError as exc:
                problems.extend(str(exc).splitlines())
            except ValidationError as exc:
                problems.extend(_errors(ppath, exc, raw))
        if raw_profiles[name] is None:
            continue
        overrides = device.get("overrides") or {}
        if not isinstance(overrides, dict):
            continue  # the model reports it
        try:
            merged = _apply_overrides(raw_profiles[name], overrides)
            device["register_map"] = Profile.model_validate(merged)
        except KeyError as exc:
            problems.append(f"{path}: {where}.overrides.{exc.args[0]}: profile '{name}' has no such channel")
        except TypeError as exc:
            problems.append(f"{path}: {where}.overrides.{exc.args[0]}: expected a mapping of point fields")
        except ValidationError as exc:
            # named by the channel the override touched: devices[m1].overrides.frequency.type
            for line in _errors(path, exc, merged):
                rest = _POINT_PREFIX.sub(r"\1", line.removeprefix(f"{path}: ").removeprefix("(top level)"))
                problems.append(f"{path}: {where}.overrides{'' if rest.startswith(':') else '.'}{rest}")
    for name in sorted(missing, key=lambda n: users[n][0]):
        where = users[name]
        also = f" (also used by {', '.join(where[1:])})" if len(where) > 1 else ""
        looked = ", ".join(f"{d}" + ("" if d.is_dir() else " (no such directory)") for d in dirs)
        problems.append(f"{path}: {where[0]}.profile: no profile '{name}'{also}; looked for {name}.yaml in {looked} "
                        "(a site's own profiles go in a directory named by --profiles or profiles_dir)")
    return problems


def load_site(path: Path | str, profiles_dir: Path | str | None = None) -> Site:
    """Load a site file and resolve each device's profile (where: ``profile_dirs``)."""
    path = Path(path)
    data = _read_yaml(path)
    problems = _resolve_profiles(path, data, profile_dirs(path, data, profiles_dir))
    if problems:
        raise _fail(problems)
    site = _validate(Site, data, path)
    problems = _fixed_parameter_problems(site, path, data)
    if problems:
        raise _fail(problems)
    return site


def _fixed_parameter_problems(site: Site, path: Path, data: dict) -> list[str]:
    """Each fixed value names a parameter of the site's methodology in a unit that converts
    to the methodology's (797 kgCO2/MWh is 0.797 tCO2/MWh; kg is no emission factor)."""
    spec_path = METHODOLOGIES_DIR / f"{site.methodology}.yaml"
    if not spec_path.exists():  # an unknown methodology, or a gateway installed without them: processing refuses it
        return []
    parameters = _read_yaml(spec_path).get("parameters") or {}
    problems = []
    for i, p in enumerate(site.fixed_parameters):
        where = f"{path}: {_key_path(('fixed_parameters', i), data)}"
        if p.parameter not in parameters:
            problems.append(f"{where}.parameter: {site.methodology} has no parameter '{p.parameter}' "
                            f"(known: {', '.join(parameters)})")
            continue
        unit = parameters[p.parameter]["unit"]
        try:
            factor(p.unit, unit)
        except ValueError as exc:
            problems.append(f"{where}.unit: {exc}; {site.methodology} gives {p.parameter} in {unit}")
    return problems


def load_collector(path: Path | str) -> CollectorConfig:
    return _validate(CollectorConfig, _read_yaml(Path(path)), Path(path))
