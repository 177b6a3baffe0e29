"""Fuzz target for ``jcm check-config``: the reference site files and their profiles with
random keys deleted, values replaced by random YAML scalars and trees, and lines of text
deleted, repeated or garbled. Whatever the file, the answer is OK (exit 0) or errors that
each name the file (exit 1): never a traceback, never exit 2.

Short by default; ``JCM_FUZZ_EXAMPLES=5000`` runs it longer."""

import datetime as dt
import math
import shutil
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.config import ConfigError, load_site
from jcm.cli import main
from tests.conftest import REPO, fuzz_examples

SITES = sorted((REPO / "config" / "sites").glob("*.yaml"))
EDGES = [0, -1, 1, 65535, 65536, 2**31, 2**64, 10**400, 1e-6, 1e300, -1e300, math.nan, math.inf, -math.inf, "",
         "0x10", "1e-6", ".nan", "../../etc/passwd", "mqtt://u:p@h", "\x1b[31m", "\u202e", dt.date(1, 1, 1)]
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.dates()
           | st.sampled_from(EDGES))
trees = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)


def slots(node, out=None) -> list[tuple]:
    """Every (container, key) of a YAML tree, depth first."""
    out = [] if out is None else out
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        out.append((node, key))
        slots(value, out)
    return out


@st.composite
def mutated(draw, data: dict):
    tree = yaml.safe_load(yaml.safe_dump(data))
    for _ in range(draw(st.integers(1, 4))):
        places = slots(tree)
        container, key = places[draw(st.integers(0, len(places) - 1))]
        if draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(trees)
    return tree


@st.composite
def garbled(draw, text: str) -> str:
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["delete", "repeat", "garble"]))
        if how == "delete":
            del lines[i]
        elif how == "repeat":
            lines.insert(i, lines[i])
        else:
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.text(max_size=4)) + lines[i][at:]
        if not lines:
            break
    return "\n".join(lines) + "\n"


@st.composite
def broken_config(draw):
    """(site file name, which file is broken: 'site' or a profile name, its new text)."""
    site = draw(st.sampled_from(SITES))
    data = yaml.safe_load(site.read_text())
    profiles = sorted({d["profile"] for d in data["devices"]})
    target = draw(st.sampled_from(["site", "site", *profiles]))
    original = site if target == "site" else REPO / "config" / "profiles" / f"{target}.yaml"
    if draw(st.booleans()):
        text = yaml.safe_dump(draw(mutated(yaml.safe_load(original.read_text()))), allow_unicode=True)
    else:
        text = draw(garbled(original.read_text()))
    return site.name, target, text


@pytest.fixture(scope="module")
def config_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("config")
    shutil.copytree(REPO / "config" / "sites", root / "sites")
    shutil.copytree(REPO / "config" / "profiles", root / "profiles")
    return root


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(50), deadline=None, suppress_health_check=list(HealthCheck))
@given(case=broken_config())
def test_check_config_never_gives_a_traceback(case, config_copy, capsys):
    name, target, text = case
    root = config_copy
    broken = root / "sites" / name if target == "site" else root / "profiles" / f"{target}.yaml"
    original = broken.read_bytes()
    broken.write_text(text, encoding="utf-8", errors="surrogatepass")
    path = root / "sites" / name
    try:
        try:
            load_site(path)
            valid = True
        except ConfigError as exc:
            valid = False
            lines = str(exc).splitlines()
            assert lines, "an empty error"
            for line in lines:
                assert line.startswith((f"{path}: ", f"{root / 'profiles'}/")), line
        capsys.readouterr()
        assert main(["check-config", str(path)]) == (0 if valid else 1)
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
    finally:
        broken.write_bytes(original)


def test_check_config_command_on_hostile_files_exits_1_naming_each(tmp_path):
    sites = tmp_path / "sites"
    sites.mkdir()
    (tmp_path / "profiles").symlink_to(REPO / "config" / "profiles")
    good = yaml.safe_load((REPO / "config" / "sites" / "mn-solar.yaml").read_text())
    files = {
        "deep.yaml": b"[" * 20000,
        "latin1.yaml": "site: caf\xe9\n".encode("latin-1"),
        "control.yaml": b"site: a\x1b[2J\n",
        "devices-int.yaml": yaml.safe_dump(dict(good, devices=5)).encode(),
        "overrides-list.yaml": yaml.safe_dump(dict(good, devices=[dict(good["devices"][0], overrides=["x"])])).encode(),
        "forged-line.yaml": yaml.safe_dump(dict(good, **{"x\nOK (site forged": 1})).encode(),
    }
    for name, content in files.items():
        (sites / name).write_bytes(content)
    res = subprocess.run([sys.executable, "-m", "jcm.cli", "check-config", *sorted(str(sites / n) for n in files)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert all(line.startswith(str(sites) + "/") for line in lines), lines
    assert {line.split(":")[0] for line in lines} == {str(sites / n) for n in files}
