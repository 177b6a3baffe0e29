"""The five shipped sites: their configs load, their simulators serve every device,
and the gateway reads every channel within its valid range."""

import datetime as dt
import glob

import pytest
import yaml

from contract.message import DeviceStatus
from gateway.device_poller import DevicePoller
from gateway.modbus_link import ModbusLink
from simulators.plants import plant_for
from tests.conftest import REPO, free_port, load_site

SITES = sorted(glob.glob(str(REPO / "config" / "sites" / "*.yaml")))


def test_all_five_reference_sites_are_shipped():
    names = {load_site(s).methodology for s in SITES}
    assert names == {"MN_AM003", "MV_AM002", "VN_AM005", "PH_PROV_BIOGAS", "ID_PROV_BIOMASS"}


def relocated(site_file, tmp_path):
    """The site with its endpoints moved to free ports (the demo may hold the real ones)."""
    data = yaml.safe_load(open(site_file))
    new_ports: dict[int, int] = {}
    for d in data["devices"]:
        c = d["connection"]
        if c["type"] == "tcp":
            c["port"] = new_ports.setdefault(c["port"], free_port())
    (tmp_path / "sites").mkdir(exist_ok=True)
    out = tmp_path / "sites" / "site.yaml"
    out.write_text(yaml.safe_dump(data))
    (tmp_path / "profiles").symlink_to(REPO / "config" / "profiles")
    return load_site(out)


@pytest.mark.parametrize("site_file", SITES, ids=lambda s: s.rsplit("/", 1)[-1])
def test_every_device_reads_clean(site_file, tmp_path, simulate):
    site = relocated(site_file, tmp_path)
    simulate(site)
    for device in site.devices:
        r = DevicePoller(site, device, ModbusLink(device.connection)).poll()
        assert r.status is DeviceStatus.ok, (device.id, r.quality)
        assert r.quality == {}, (device.id, r.quality)
        assert set(r.values) == {p.channel for p in device.register_map.points}


@pytest.mark.parametrize("site_file", SITES, ids=lambda s: s.rsplit("/", 1)[-1])
def test_simulated_plant_stays_in_range_all_year(site_file):
    """The test above reads at one wall-clock moment; noon sun, a stopped genset or a
    de-energised transformer must not trip a plausibility range at any other."""
    site = load_site(site_file)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    plant = plant_for(site, start)
    outside = {}
    for step in range(0, 366 * 24 * 60, 53):  # every 53 min: every time of day, every season
        t = start + dt.timedelta(minutes=step)
        for device in site.devices:
            values = plant.values(device, t)
            for p in device.register_map.points:
                v = values.get(p.channel)
                if p.range and isinstance(v, float | int) and not p.range[0] <= v <= p.range[1]:
                    outside.setdefault(f"{device.id}.{p.channel} {list(p.range)}", (t.isoformat(), v))
    assert outside == {}


@pytest.mark.parametrize("site_file", SITES, ids=lambda s: s.rsplit("/", 1)[-1])
def test_monitoring_parameters_are_fed_by_counters_or_signals(site_file):
    """Each monitored methodology parameter maps to channels that exist, and energy or volume
    parameters come from cumulative counters (last minus first per day), not from power."""
    site = load_site(site_file)
    assert site.monitoring, "a site must map its methodology parameters to channels"
    for m in site.monitoring:
        for src in m.sources:
            dev, channel = src.split(".")
            point = site.device(dev).register_map.point(channel)
            assert point.kind.value == "counter" or point.type == "bool" or point.unit == "%", (m.parameter, src)


#: the "monitored, option C" parameters of each methodology (docs/methodologies.md, sections 2-6)
REQUIRED = {
    "MN_AM003": {"EG"},
    "MV_AM002": {"EG_PV", "EC_BESS", "EG_BESS"},
    "VN_AM005": {"OH"},
    "PH_PROV_BIOGAS": {"EG_BG", "HG", "EC_aux", "FC_fossil", "BG_flare", "w_CH4", "flame"},
    "ID_PROV_BIOMASS": {"EG_net", "EC_import", "FC_diesel"},
}


@pytest.mark.parametrize("site_file", SITES, ids=lambda s: s.rsplit("/", 1)[-1])
def test_every_monitored_parameter_has_a_source(site_file):
    site = load_site(site_file)
    assert REQUIRED[site.methodology] <= {m.parameter for m in site.monitoring}
    if site.methodology == "VN_AM005":  # one energised-hours signal per transformer
        oh = [m for m in site.monitoring if m.parameter == "OH"]
        assert len(oh) == len(site.devices) and len({m.unit_id for m in oh}) == len(oh)
