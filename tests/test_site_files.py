"""Where a site's files are found: a site file anywhere (as in /etc/jcm/sites/) with the
profiles shipped in the package, a site's own profiles, an installed (not editable)
package, and one way to name a site in every command: an id or a path."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml

from contract.config import load_site
from contract.config.loader import SHIPPED_PROFILES
from jcm.broker import free_port
from tests.conftest import REPO, tcp_device, write_site

JCM = [sys.executable, "-m", "jcm.cli"]


def jcm(*args, cwd, env=None, timeout=60):
    return subprocess.run(JCM + [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def etc_sites(tmp_path, name="mn-solar"):
    """A reference site file copied where a site keeps it, with no profiles beside it."""
    sites = tmp_path / "etc" / "jcm" / "sites"
    sites.mkdir(parents=True)
    shutil.copy(REPO / "config" / "sites" / f"{name}.yaml", sites)
    return sites / f"{name}.yaml"


def test_a_site_file_copied_out_of_the_repository_finds_the_shipped_profiles(tmp_path):
    site = etc_sites(tmp_path)
    res = jcm("check-config", site, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "OK (site mn-solar, 5 devices" in res.stdout


def own_profile(directory, name="power_meter_3ph", gain=None):
    """A copy of a shipped profile in ``directory`` (the energy register's gain changed, to tell them apart)."""
    directory.mkdir(parents=True, exist_ok=True)
    profile = yaml.safe_load((SHIPPED_PROFILES / "power_meter_3ph.yaml").read_text())
    profile["profile"] = name
    if gain is not None:
        next(p for p in profile["points"] if p["channel"] == "frequency")["gain"] = gain
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))


def frequency_gain(site):
    meter = next(d for d in site.devices if d.id == "poc-meter")
    return next(p.gain for p in meter.register_map.points if p.channel == "frequency")


def test_a_site_adds_and_overrides_profiles_in_a_directory_it_names(tmp_path):
    site_file = etc_sites(tmp_path)
    shipped = frequency_gain(load_site(site_file))
    own_profile(tmp_path / "etc" / "jcm" / "my-profiles", gain=shipped * 10)
    data = yaml.safe_load(site_file.read_text())
    data["profiles_dir"] = "../my-profiles"  # relative to the site file
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    assert frequency_gain(load_site(site_file)) == shipped * 10
    # --profiles comes first
    own_profile(tmp_path / "cli-profiles", gain=shipped * 100)
    assert frequency_gain(load_site(site_file, tmp_path / "cli-profiles")) == shipped * 100
    # a profile the package does not ship
    own_profile(tmp_path / "etc" / "jcm" / "my-profiles", name="site_meter")
    data["devices"][-1]["profile"] = "site_meter"
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    res = jcm("check-config", site_file, cwd=tmp_path)
    assert res.returncode == 0, res.stderr


def test_a_missing_profile_names_every_place_looked(tmp_path):
    site_file = etc_sites(tmp_path)
    data = yaml.safe_load(site_file.read_text())
    data["profiles_dir"] = "own"
    data["devices"][-1]["profile"] = "no_such_meter"
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    res = jcm("check-config", site_file, "--profiles", tmp_path / "cli", cwd=tmp_path)
    assert res.returncode == 1
    line, = res.stderr.splitlines()
    assert line.startswith(f"{site_file}: devices[poc-meter].profile: no profile 'no_such_meter'; looked for "
                           "no_such_meter.yaml in ")
    places = [tmp_path / "cli", site_file.parent / "own", tmp_path / "etc" / "jcm" / "profiles", SHIPPED_PROFILES]
    looked = line.split(" in ", 1)[1]
    assert [looked.find(str(p)) >= 0 for p in places] == [True] * 4, line
    assert sorted(places, key=lambda p: looked.find(str(p))) == places  # in the order searched


def test_a_profiles_dir_that_is_a_symlink_loop_is_a_missing_directory_not_a_crash(tmp_path):
    site_file = etc_sites(tmp_path)
    loop = site_file.parent / "loop"
    (site_file.parent / "loop2").symlink_to("loop")
    loop.symlink_to("loop2")
    data = yaml.safe_load(site_file.read_text())
    data["profiles_dir"] = "loop"
    data["devices"][-1]["profile"] = "no_such_meter"
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    res = jcm("check-config", site_file, "--profiles", loop, cwd=tmp_path)
    assert res.returncode == 1
    line, = res.stderr.splitlines()
    assert f"{loop} (no such directory)" in line and "Traceback" not in res.stderr
    data["devices"][-1]["profile"] = "power_meter_3ph"  # found among the shipped ones
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    assert jcm("check-config", site_file, "--profiles", loop, cwd=tmp_path).returncode == 0


@pytest.mark.slow
def test_an_installed_package_finds_its_profiles_and_methodology_defaults(tmp_path):
    """A wheel (what `pip install .` installs), used from a directory without config/."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    for package in ("contract", "gateway", "collector", "processing", "store", "simulators", "liveview", "jcm"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel, = tmp_path.glob("jcm_telemetry-*.whl")
    installed = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(installed)
    env = dict(os.environ, PYTHONPATH=str(installed))  # before the editable install of the repository
    work = tmp_path / "elsewhere"
    work.mkdir()
    site = etc_sites(work)
    where = subprocess.run([sys.executable, "-c", "import contract; print(contract.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert where.stdout.startswith(str(installed)), where
    res = jcm("check-config", site, cwd=work, env=env)
    assert res.returncode == 0, res.stderr
    calc = work / "period.yaml"
    calc.write_text("methodology: MN_AM003\nperiod: {start: 2021-01-01, end: 2021-12-31}\nunits: [{id: MN006, EG: 23134.0}]\n")
    res = jcm("calc", "MN_AM003", "--input", calc, cwd=work, env=env)
    assert res.returncode == 0, res.stderr
    assert '"ER": 18437' in res.stdout


def small_site(tmp_path):
    """A one-device site with a free port, in ``tmp_path/sites``."""
    return write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", free_port())])


def test_every_command_takes_a_site_id_or_a_site_file(tmp_path):
    path = small_site(tmp_path)
    sites = path.parent
    missing_store = f"sqlite:///{tmp_path / 'none.db'}"
    for site in ("test-site", path):
        # simulate wanted a path, process and export an id
        res = jcm("simulate", "--site", site, "--sites-dir", sites, "--duration", "0.2", cwd=tmp_path)
        assert res.returncode == 0, (site, res.stderr)
        for command in (["process", "--month", "2025-01"],
                        ["export", "--from", "2025-01-01", "--to", "2025-01-31", "--out", tmp_path / "x"]):
            res = jcm(*command, "--site", site, "--sites-dir", sites, "--store", missing_store, cwd=tmp_path)
            assert res.returncode == 2
            assert f"store {tmp_path / 'none.db'} does not exist" in res.stderr, (site, res.stderr)
        res = jcm("signoff", "--site", site, "--sites-dir", sites, "--month", "2025-01", "--by", "me",
                  "--ledger", tmp_path / "none.sqlite", cwd=tmp_path)
        assert res.returncode == 2 and "ledger" in res.stderr and "does not exist" in res.stderr, res.stderr
    res = jcm("gateway", "--site", "no-such-site", "--sites-dir", sites, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"--site no-such-site: no site 'no-such-site' in {sites} (no file no-such-site.yaml; "
                                  "site ids there: test-site): give a site id of --sites-dir or the path of a site file")
