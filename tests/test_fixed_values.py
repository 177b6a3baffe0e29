"""Site fixed values: units converted to the methodology's or refused at load, an
unconfirmed value makes the month provisional, and an export of recorded months computes
with the values the revisions recorded, reporting a configuration that changed since."""

import datetime as dt
import json

import pytest
import yaml

from contract.config import ConfigError, load_site
from contract.units import convert, factor
from jcm.cli import main
from processing.export import export_period
from processing.ledger import Ledger
from processing.monthly import process_month
from processing.period import PeriodProcessor
from store.sqlite_store import SqliteStore
from tests.conftest import PROFILES, REPO, fill_history, store_copy

DAYS = (dt.date(2026, 10, 1), dt.date(2026, 10, 3))
SEPT = (dt.date(2026, 9, 1), dt.date(2026, 9, 30))


def mn_solar(tmp_path, fixed: list[dict] | None = None, name: str = "mn-solar"):
    """A copy of the mn-solar site file with ``fixed_parameters``; returns its path."""
    data = yaml.safe_load((REPO / "config" / "sites" / "mn-solar.yaml").read_text())
    if fixed is not None:
        data["fixed_parameters"] = fixed
    (tmp_path / "sites").mkdir(parents=True, exist_ok=True)
    if not (tmp_path / "profiles").exists():
        (tmp_path / "profiles").symlink_to(PROFILES)
    path = tmp_path / "sites" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


EF_KG = {"parameter": "EF_RE", "unit_id": "PV-1", "value": 797, "unit": "kgCO2/MWh", "source": "grid study"}


@pytest.fixture(scope="module")
def mn_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("mn") / "jcm.db"
    store = SqliteStore(path)
    site = load_site(REPO / "config" / "sites" / "mn-solar.yaml")
    fill_history(store, site, dt.date(2026, 8, 31), dt.date(2026, 10, 4))
    store.close()
    return path


@pytest.fixture
def store(mn_db, tmp_path):
    s = store_copy(mn_db, tmp_path)
    yield s
    s.close()


def test_units_convert_within_a_quantity_and_refuse_across():
    assert convert(797, "kgCO2/MWh", "tCO2/MWh") == 0.797
    assert convert(0.000797, "tCO2/kWh", "tCO2/MWh") == 0.797
    assert convert(230, "W", "kW") == 0.23 and factor("kWh", "MWh") == 1e-3
    assert convert(43.0, "TJ/Gg", "GJ/t") == 43.0 and convert(74.8, "tCO2/TJ", "tCO2/GJ") == 0.0748
    with pytest.raises(ValueError, match="'kg' cannot be converted to 'tCO2/MWh'"):
        factor("kg", "tCO2/MWh")


def test_a_compatible_unit_is_converted(store, tmp_path):
    """Before: EF_RE 797 kgCO2/MWh was used as 797 tCO2/MWh (ER 1000x too large, verified)."""
    default = PeriodProcessor(load_site(mn_solar(tmp_path / "a"))).process(store, *DAYS)
    kg = PeriodProcessor(load_site(mn_solar(tmp_path / "b", [EF_KG]))).process(store, *DAYS)
    assert default.calc.ER > 0 and kg.calc.ER == default.calc.ER
    assert kg.calc.units[0]["EF_RE"] == 0.797
    assert kg.status == default.status == "verified"
    assert [f.configured for f in kg.fixed] == ["797 kgCO2/MWh"]


def test_an_unconfirmed_value_makes_the_result_provisional(store, tmp_path):
    s = load_site(mn_solar(tmp_path, [{**EF_KG, "value": 0.797, "unit": "tCO2/MWh", "status": "unconfirmed"}]))
    r = PeriodProcessor(s).process(store, *DAYS)
    assert r.status == "provisional" and r.calc.provisional
    assert any("EF_RE[PV-1] (site configuration)" in reason for reason in r.reasons), r.reasons


@pytest.mark.parametrize("entry, message", [
    ({**EF_KG, "unit": "kg"}, "fixed_parameters[EF_RE, PV-1].unit: 'kg' cannot be converted to 'tCO2/MWh'"),
    ({**EF_KG, "unit": "kgCO2/MWhh"}, "fixed_parameters[EF_RE, PV-1].unit: unknown unit 'kgCO2/MWhh'"),
    ({**EF_KG, "parameter": "EF_grid"}, "fixed_parameters[EF_grid, PV-1].parameter: MN_AM003 has no parameter 'EF_grid'"),
    ({**EF_KG, "value": float("nan")}, "fixed_parameters[EF_RE, PV-1].value: Input should be a finite number"),
])
def test_an_incompatible_or_unknown_unit_is_refused_at_load(tmp_path, entry, message, capsys):
    path = mn_solar(tmp_path, [entry])
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    assert f"{path}: {message}" in str(exc.value)
    assert main(["check-config", str(path)]) == 1
    assert message in capsys.readouterr().err


def test_export_of_a_signed_off_month_keeps_its_recorded_values_and_reports_the_change(store, tmp_path, capsys):
    """Before: signed off at ER x with EF_RE 0.797, EF_RE changed to 0.533, the export said
    ER 2/3 x with no warning while its Monthly sheet still said x."""
    from tests.test_export import evaluate

    ledger = Ledger(tmp_path / "ledger.sqlite")
    _, revision = process_month(load_site(mn_solar(tmp_path / "then")), store, ledger, "2026-09")
    assert revision.result["fixed_parameters"][0]["value"] == 0.797  # recorded with the revision
    ledger.sign_off("mn-solar", "2026-09", "A. Verifier")
    path = mn_solar(tmp_path / "now", [{**EF_KG, "value": 0.533, "unit": "tCO2/MWh"}])

    assert main(["export", "--site", "mn-solar", "--from", "2026-09-01", "--to", "2026-09-30",
                 "--out", str(tmp_path / "out"), "--sites", str(path.parent), "--store", f"sqlite:///{store.path}",
                 "--ledger", str(tmp_path / "ledger.sqlite")]) == 0
    err = capsys.readouterr().err
    assert "warning: fixed value EF_RE[PV-1]: the revisions used 0.797 tCO2/MWh" in err and "now gives 0.533" in err
    folder = tmp_path / "out" / "mn-solar_2026-09-01_2026-09-30"
    m = json.loads((folder / "manifest.json").read_text())
    assert m["figures"]["ER"] == m["revisions"][0]["ER"] == revision.ER > 0
    assert [f["value"] for f in m["fixed_parameters"]] == [0.797]
    assert any("EF_RE[PV-1]" in line for line in m["config_changes"])
    assert "Configuration changed since the revisions used" in (folder / "summary.html").read_text()
    assert evaluate(folder / f"monitoring_{folder.name}.xlsx")["ER"] == revision.ER
    assert len(ledger.revisions("mn-solar", "2026-09")) == 1  # a new figure needs a new revision


def test_a_period_over_months_computed_with_different_fixed_values_is_refused(store, tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    process_month(load_site(mn_solar(tmp_path / "then")), store, ledger, "2026-09")
    s = load_site(mn_solar(tmp_path / "now", [{**EF_KG, "value": 0.533, "unit": "tCO2/MWh"}]))
    with pytest.raises(ValueError, match=r"2026-10 \(revision 1\) and 2026-09 \(revision 1\) were computed with "
                                         r"different fixed values \(EF_RE\[PV-1\]\)"):
        export_period(s, store, ledger, dt.date(2026, 9, 1), dt.date(2026, 10, 3), tmp_path / "out")
    assert not (tmp_path / "out" / "mn-solar_2026-09-01_2026-10-03").exists()


def test_a_revision_recorded_before_fixed_values_were_recorded_keeps_its_values(store, tmp_path):
    """A revision with only its calculation's values: those values are used; one that
    today's configuration does not describe counts as unconfirmed."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    s = load_site(mn_solar(tmp_path / "then", [{**EF_KG, "value": 0.6, "unit": "tCO2/MWh"}]))
    result, revision = process_month(s, store, ledger, "2026-09")
    old = Ledger(tmp_path / "old.sqlite")
    details = {k: v for k, v in revision.result.items() if k not in ("summary", "fixed_parameters")}
    old.record("mn-solar", "2026-09", revision.result["summary"], details,
               {"defaults_hash": "d", "config_hash": "c", "code_version": "t"})
    folder = export_period(load_site(mn_solar(tmp_path / "now")), store, old, *SEPT, tmp_path / "out")
    m = json.loads((folder / "manifest.json").read_text())
    assert m["figures"]["ER"] == revision.ER and m["fixed_parameters"][0]["value"] == 0.6
    assert m["status"] == "provisional" and m["figures"]["provisional"]
    assert any("EF_RE[PV-1]" in line and "0.797" in line for line in m["config_changes"])


@pytest.mark.parametrize("site_file", sorted((REPO / "config" / "sites").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_defaults_source_names_its_methodology_once(site_file):
    """The source shown beside a default (workbook, summary pages) is prefixed with its
    methodology and version by the code; a defaults file repeating that prefix showed it twice."""
    from processing.fixed_values import from_config
    from processing.methodologies import load_spec
    site = load_site(site_file)
    spec = load_spec(site.methodology)
    prefix = f"{spec.methodology} Ver{spec.version}:"
    for f in from_config(site, spec):
        assert f.source.count(prefix) <= 1, f"{site_file.name}: {f.name}: {f.source!r}"
