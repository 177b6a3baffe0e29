"""Methodology equations against the spec's worked example and hand calculations."""

import subprocess
import sys

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processing.methodologies import InputError, calculate, load_spec
from processing.methodologies.common import round_period_er
from processing.methodologies.ph_prov_biogas import flare_emissions
from tests.conftest import REPO, fuzz_examples


def test_mn_am003_worked_example():
    calc = calculate("MN_AM003", {}, [{"id": "MN006", "EG": 23134.0}])
    assert calc.RE == pytest.approx(18437.798, abs=1e-9)
    assert calc.ER == 18437  # ROUNDDOWN
    assert round_period_er(calc.ER_unrounded, "nearest") == 18438  # the ex-ante page's figure
    assert calc.defaults_used["EF_RE"]["value"] == 0.797 and not calc.provisional


def test_rounding_happens_once_on_the_period_not_per_month():
    months = [calculate("MN_AM003", {}, [{"EG": eg}]) for eg in (1000.9, 1000.9, 1000.9)]
    period = calculate("MN_AM003", {}, [{"EG": 1000.9 * 3}])
    assert sum(m.ER for m in months) == 3 * 797  # 797.7173 each, rounded down per month: loses a tonne
    assert period.ER == 2393  # 2393.1519 from the period's summed EG


def test_mv_am002_battery_losses_are_deducted_and_it_is_provisional():
    calc = calculate("MV_AM002", {"EG_PV": 2000.0, "EC_BESS": 150.0, "EG_BESS": 135.0})
    assert calc.RE == pytest.approx((2000.0 - 15.0) * 0.533)
    assert calc.ER == 1058  # 1058.005
    assert calc.provisional
    more_out_than_in = calculate("MV_AM002", {"EG_PV": 2000.0, "EC_BESS": 100.0, "EG_BESS": 120.0})
    assert more_out_than_in.RE == pytest.approx(2000.0 * 0.533)  # max(0, ·): no credit for a battery gain


def test_vn_am005_only_no_load_losses_count():
    units = [{"id": "TX-01", "NLL_RE": 0.75, "NLL_PJ": 0.21, "OH": 720.0},
             {"id": "TX-02", "NLL_RE": 0.53, "NLL_PJ": 0.16, "OH": 700.0}]
    calc = calculate("VN_AM005", {"EF_grid": 0.6592}, units)
    assert calc.RE == pytest.approx((0.75 * 720 + 0.53 * 700) * 1e-3 * 0.6592)
    assert calc.PE == pytest.approx((0.21 * 720 + 0.16 * 700) * 1e-3 * 0.6592)
    assert calc.ER == 0  # 0.427 t: a month of two transformers is well under a tonne


def test_ph_biogas_reference_and_project_emissions():
    p = {"EG_BG": 1800.0, "HG": 3000.0, "EC_aux": 100.0, "FC_fossil": 2.0, "PE_flare": 12.5}
    calc = calculate("PH_PROV_BIOGAS", p)
    re = 1800 * 0.7921 + 3000 / 1.0 * 0.0755
    pe = 100 * 0.7921 + 2.0 * 41.7 * 0.0774 + 12.5
    assert (calc.RE, calc.PE) == (pytest.approx(re), pytest.approx(pe))
    assert calc.ER == int(re - pe) and calc.provisional


def test_flare_efficiency_counts_only_while_the_flame_burns():
    burning = flare_emissions(1000.0, 0.6, True, 28)
    out = flare_emissions(1000.0, 0.6, False, 28)
    assert out == pytest.approx(1000 * 0.6 * 0.716 * 28e-3)
    assert burning == pytest.approx(out / 2)


def test_id_biomass():
    calc = calculate("ID_PROV_BIOMASS", {"EG_net": 6000.0, "EC_import": 40.0, "FC_diesel": 3.0})
    assert calc.PE == pytest.approx(3.0 * 36.12 * 0.0748 + 40.0 * 0.80)
    assert calc.RE == pytest.approx(6000 * 0.80)


def test_given_value_overrides_the_default():
    calc = calculate("MN_AM003", {}, [{"EG": 100.0, "EF_RE": 0.533}])
    assert calc.RE == pytest.approx(53.3) and "EF_RE" not in calc.defaults_used


@pytest.mark.parametrize("period,units,message", [
    ({"EG_XX": 1.0}, [{"EG": 1.0}], "parameters.EG_XX: MN_AM003 has no parameter 'EG_XX'"),
    ({}, [{"EG": 1.0, "OH": 3}], "units.0.OH: MN_AM003 has no per-unit parameter 'OH'"),
    ({}, [], "units: MN_AM003 sums over units"),
    ({}, [{"EF_RE": 0.797}], "units.0.EG: missing"),
])
def test_unknown_or_missing_parameters_are_named(period, units, message):
    with pytest.raises(InputError, match=message.replace(".", r"\.").replace("(", r"\(")):
        calculate("MN_AM003", period, units)


def test_calc_command_json_and_explain(tmp_path):
    f = tmp_path / "in.yaml"
    f.write_text('methodology: MN_AM003\nversion: "2.0"\nperiod: {start: 2021-01-01, end: 2021-12-31}\n'
                 "units:\n  - {id: PV-1, EG: 7000.0, EF_RE: 0.797}\n  - {id: PV-2, EG: 4210.25, EF_RE: 0.797}\nparameters: {}\n")
    import json

    out = subprocess.run([sys.executable, "-m", "jcm.cli", "calc", "MN_AM003", "--input", str(f)],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    result = json.loads(out)
    assert result["ER"] == 8934 and result["ER_unrounded"] == pytest.approx(8934.56925) and result["provisional"] is False
    explain = subprocess.run([sys.executable, "-m", "jcm.cli", "calc", "MN_AM003", "--input", str(f), "--explain"],
                             capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "RE_PV-2 = EG × EF_RE = 4210.25 × 0.797 = 3355.56925" in explain
    f.write_text("units: [{EG: 1, FOO: 2}]\n")
    bad = subprocess.run([sys.executable, "-m", "jcm.cli", "calc", "MN_AM003", "--input", str(f)],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "units.0.FOO" in bad.stderr


def test_rounddown_goes_toward_zero_like_excel():
    assert round_period_er(-3.5) == -3
    assert round_period_er(0.97) == 0
    assert round_period_er(-5.0) == -5  # trunc(ER + 1e-9) made it -4
    assert round_period_er(999.9999999995) == 999  # trunc(ER + 1e-9) made it 1000
    assert round_period_er(18437.999999999996) == 18437  # the decimal the report shows is below 18438
    assert round_period_er(Decimal("-0.5")) == 0
    assert (round_period_er(2.5, "nearest"), round_period_er(-2.5, "nearest")) == (3, -3)  # Excel ROUND: halves away from 0


def test_period_figures_are_exact_decimal_arithmetic():
    # ten units of 0.2 MWh × 0.5 tCO2/MWh: 0.1 each, 1 exactly; in binary floats the sum is 0.9999999999999999
    calc = calculate("MN_AM003", {}, [{"id": f"PV-{i}", "EG": 0.2, "EF_RE": 0.5} for i in range(10)])
    assert (calc.ER, Decimal(calc.ER_exact)) == (1, 1)
    # ER exactly -5: 33.75 MWh exported × 0.8 = 27 t of reference emissions, 40 MWh imported × 0.8 = 32 t of project ones
    negative = calculate("ID_PROV_BIOMASS", {"EG_net": 33.75, "EC_import": 40.0, "FC_diesel": 0.0, "EF_grid": 0.8})
    assert Decimal(negative.ER_exact) == Decimal("-5") and negative.ER == -5
    below = calculate("MN_AM003", {}, [{"EG": 1999.999999999, "EF_RE": 0.5}])
    assert below.ER_exact == "999.9999999995" and below.ER == 999
    assert below.ER_unrounded == 999.9999999995  # the float shown beside it is the same decimal
    # period totals summed exactly may come as Decimals: taken as they are
    summed = calculate("MN_AM003", {}, [{"EG": sum([Decimal("0.3")] * 10), "EF_RE": 0.5}])
    assert summed.ER_exact == "1.50" and summed.units[0]["EG"] == 3.0


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(300), deadline=None)
@given(er=st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
                    st.decimals(allow_nan=False, allow_infinity=False, min_value=-10**15, max_value=10**15, places=12),
                    st.integers(min_value=-10**15, max_value=10**15)))
def test_rounddown_semantics(er):
    """ROUNDDOWN on the decimal the report writes: toward zero, whole, and within one tonne."""
    exact = er if isinstance(er, Decimal) else Decimal(repr(er)) if isinstance(er, float) else Decimal(er)
    r = round_period_er(er)
    assert isinstance(r, int)
    assert abs(r) <= abs(exact) < abs(r) + 1
    assert r == 0 or (r > 0) == (exact > 0)


def test_the_processor_entry_refuses_values_outside_the_physical_range_too():
    """``calculate`` is what the processor calls with a site's fixed parameters: EF_RE 797
    (kgCO2/MWh written as tCO2/MWh) is refused there as in ``jcm calc``, not turned into ER."""
    with pytest.raises(InputError, match=r"^units\.0\.EF_RE: 797 tCO2/MWh is outside the physical range"):
        calculate("MN_AM003", {}, [{"id": "unit-1", "EG": 1000.0, "EF_RE": 797.0}])
    with pytest.raises(InputError, match=r"^parameters\.EG_net: expected a finite number, got nan"):
        calculate("ID_PROV_BIOMASS", {"EG_net": float("nan"), "EC_import": 0.0, "FC_diesel": 0.0})


def test_the_spec_in_docs_agrees_with_config_methodologies():
    """docs/methodologies.md states each parameter's unit, effect, range, default value and
    status; config/methodologies/ is what the code uses. They must say the same."""
    import re

    doc = (REPO / "docs" / "methodologies.md").read_text()
    for methodology in ("MN_AM003", "MV_AM002", "VN_AM005", "PH_PROV_BIOGAS", "ID_PROV_BIOMASS"):
        spec = load_spec(methodology)
        section = re.search(rf"\n## \d\. {methodology}.*?(?=\n## )", doc, re.S).group(0)
        for name, p in spec.parameters.items():
            row = re.search(rf"^\| [^|]*\(`{name}`[^|]*\|(.*)$", section, re.M)
            assert row, f"{methodology}: no row for {name}"
            unit, kind, effect, rng, value = (c.strip() for c in row.group(1).split("|")[:5])
            assert unit.replace("–", "-").startswith(p.unit), (name, unit, p.unit)
            assert kind.startswith(p.kind) and effect == p.effect, (name, kind, effect)
            expected = f"≥ {p.min:g}" if p.max is None and p.max_per_hour is None else \
                f"{p.min:g} to {p.max:g}" if p.max is not None else f"{p.min:g} to the period's hours"
            assert rng.startswith(expected), (name, rng, expected)
            if name in spec.defaults:
                d = spec.defaults[name]
                assert d.value in [float(x) for x in re.findall(r"\*\*([\d.]+)\*\*", value)], (name, value)
                assert ("**unconfirmed**" in value) == (d.status == "unconfirmed"), (name, value)


def test_a_spec_is_parsed_once_and_again_when_its_file_changes(tmp_path):
    """Each month processed asks for its methodology's spec: it is read from its file once, and
    read again once the file changes (an edited default, even one of the same length, must not be
    missed)."""
    import os
    import shutil

    from processing.methodologies.spec import SPEC_DIR

    shutil.copy(SPEC_DIR / "MN_AM003.yaml", tmp_path / "MN_AM003.yaml")
    first = load_spec("MN_AM003", tmp_path)
    assert load_spec("MN_AM003", tmp_path) is first
    path = tmp_path / "MN_AM003.yaml"
    text = path.read_text()
    stat = path.stat()
    path.write_text(text.replace(f"title: {first.title}", f"title: {first.title[:-1]}X"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a coarse clock could give the same mtime
    again = load_spec("MN_AM003", tmp_path)
    assert again is not first and again.title == first.title[:-1] + "X"
    path.write_text(text + "\n")
    assert load_spec("MN_AM003", tmp_path).title == first.title
