"""``jcm calc``: every bad input is one message naming the file, the key path and the
problem, exit 2, no traceback; every example file under examples/calc/ computes the
figure worked by hand in its comments."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jcm.cli import main
from processing.methodologies import MODULES, load_spec
from tests.conftest import REPO, fuzz_examples

MN = "period: {start: 2021-01-01, end: 2021-01-31}\n"


def run_calc(capsys, methodology: str, text: str, tmp_path, name: str = "in.yaml") -> tuple[int, str, str]:
    f = tmp_path / name
    f.write_text(text)
    code = main(["calc", methodology, "--input", str(f)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("methodology,text,expected", [
    ("MN_AM003", MN + "units: [{id: PV-1, EG: -5}]\n",
     "units.0.EG: -5 MWh is outside the physical range (at least 0 MWh)"),
    ("MN_AM003", MN + "units: [{id: PV-1, EG: .nan}]\n", "units.0.EG: expected a finite number, got nan"),
    ("MN_AM003", MN + "units: [{id: PV-1, EG: .inf}]\n", "units.0.EG: expected a finite number, got inf"),
    ("MN_AM003", MN + "units: [{id: PV-1, EG: yes}]\n", "units.0.EG: expected a number in MWh, got a boolean"),
    ("MN_AM003", MN + 'units: [{id: PV-1, EG: "11226.5 MWh"}]\n',
     "units.0.EG: expected a number in MWh, got the text '11226.5 MWh': give the number alone, in MWh"),
    ("MN_AM003", MN + "units: [{id: PV-1, EG: abc}]\n", "units.0.EG: expected a number in MWh, got the text 'abc'"),
    ("MN_AM003", MN + 'units: [{id: PV-1, EG: "1e3"}]\n', "units.0.EG: expected a number in MWh, got the text '1e3'"),
    ("VN_AM005", MN + "units: [{id: TX-1, NLL_RE: 0.7, NLL_PJ: 0.2, OH: 745}]\n",
     "units.0.OH: 745 h is more than the period allows (1 h per hour of its 744 h); period 2021-01-01 to 2021-01-31"),
    ("MN_AM003", MN + "units: [{id: PV-1, EG: 1}, {id: PV-1, EG: 2}]\n",
     "units.1.id: 'PV-1' is already the id of units.0"),
    ("MN_AM003", "period: {start: 2021-02-01, end: 2021-01-31}\nunits: [{EG: 1}]\n",
     "period: end 2021-01-31 is before start 2021-02-01"),
    ("MN_AM003", MN + "units: [{id: PV-1, EG: 100, EF_RE: 797}]\n",
     "units.0.EF_RE: 797 tCO2/MWh is outside the physical range (0.3 tCO2/MWh to 1.5 tCO2/MWh); "
     "0.797 would be in range"),
    ("PH_PROV_BIOGAS", MN + "parameters: {EG_BG: 1, HG: 1, EC_aux: 0, FC_fossil: 0, PE_flare: 0, eta_BL: 0}\n",
     "parameters.eta_BL: 0 is outside the physical range (0.5 to 1)"),
    ("MN_AM003", MN + "units:\n  PV-1: {EG: 1}\n", "units: expected a list of units (- {id: ..., EF_RE, EG: ...}), got a mapping"),
    ("MN_AM003", "units: [{EG: 1}]\n", "period: required key is missing"),
    ("MN_AM003", "period: {start: 2021-02-30, end: 2021-03-31}\nunits: [{EG: 1}]\n",
     "period.start: expected a date YYYY-MM-DD, got '2021-02-30'"),
    ("MN_AM003", "", "(top level): expected a mapping with period, units and parameters, got nothing"),
    ("MN_AM003", "units: [\n", "line 2, column 1: not valid YAML"),
    ("MN_AM003", MN + "units: [{EG: 1}]\nparameters: {EG: 3}\n", "parameters.EG: 'EG' is given per unit in MN_AM003"),
    ("MV_AM002", MN + "units: [{EG_PV: 1}]\nparameters: {EG_PV: 1, EC_BESS: 0, EG_BESS: 0}\n",
     "units: MV_AM002 has no per-unit parameters: give its values under parameters"),
    ("MV_AM002", MN + "parameters: {EG_PV: 1, EC_BESS: 0}\n",
     "parameters.EG_BESS: missing, and MV_AM002 1.0 has no default value for it"),
    ("MN_AM003", 'methodology: MV_AM002\nversion: "1.0"\n' + MN + "units: [{EG: 1}]\n",
     "methodology: the input is for 'MV_AM002', the command computes MN_AM003"),
    ("MN_AM003", "version: 3.0\n" + MN + "units: [{EG: 1}]\n",
     "version: the input is for version 3.0, config/methodologies/MN_AM003.yaml has version 2.0"),
    ("MN_AM003", MN + "units: [{EG: 1}]\nperiods: {}\n", "periods: unknown key 'periods'"),
])
def test_bad_input_is_named_and_refused(capsys, tmp_path, methodology, text, expected):
    code, out, err = run_calc(capsys, methodology, text, tmp_path)
    assert code == 2 and out == ""
    assert err.startswith(f"{tmp_path / 'in.yaml'}: ") and expected in err, err


def test_every_problem_of_a_file_is_reported_at_once(capsys, tmp_path):
    code, _, err = run_calc(capsys, "MN_AM003", MN + 'units: [{id: A, EG: yes}, {id: B, EG: "abc", EF_RE: .nan}]\n', tmp_path)
    assert code == 2
    assert [line.split(": ")[1] for line in err.splitlines()] == ["units.0.EG", "units.1.EG", "units.1.EF_RE"]


def test_1e3_is_the_number_1000_as_in_yaml_1_2(capsys, tmp_path):
    """PyYAML (YAML 1.1) reads ``1e3`` as a string; the calc input reads it as 1000 like
    YAML 1.2 does. Quoted, it stays text and is refused (above)."""
    code, out, _ = run_calc(capsys, "MN_AM003", MN + "units: [{id: PV-1, EG: 1e3, EF_RE: 5.33e-1}]\n", tmp_path)
    assert code == 0
    result = json.loads(out)
    assert result["units"][0]["EG"] == 1000.0 and result["ER"] == 533


def test_calc_command_gives_no_traceback_end_to_end(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(MN + "units: [{id: PV-1, EG: 100, EF_RE: 797}]\n")
    run = subprocess.run([sys.executable, "-m", "jcm.cli", "calc", "MN_AM003", "--input", str(f)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr == (f"{f}: units.0.EF_RE: 797 tCO2/MWh is outside the physical range (0.3 tCO2/MWh to 1.5 "
                          "tCO2/MWh); 0.797 would be in range: is it in a unit 1000 times smaller (kg for t, kWh for MWh)?\n")


#: each example's ER (rounded) and exact unrounded ER, worked by hand in the file's comments
#: (MN_AM003: the spec's worked example; the others: the hand calculations of test_methodologies.py)
EXAMPLES = {
    "MN_AM003": (18437, "18437.798"),
    "MV_AM002": (1058, "1058.005"),
    "VN_AM005": (10, "10.954401024"),
    "PH_PROV_BIOGAS": (1554, "1554.11484"),
    "ID_PROV_BIOMASS": (4759, "4759.894672"),
}


@pytest.mark.parametrize("methodology", sorted(MODULES))
def test_example_files_compute_their_hand_worked_figures(capsys, methodology):
    path = REPO / "examples" / "calc" / f"{methodology}.yaml"
    assert main(["calc", methodology, "--input", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    er, exact = EXAMPLES[methodology]
    assert result["ER"] == er and float(result["ER_exact"]) == float(exact)
    assert result["provisional"] == (methodology != "MN_AM003")
    assert main(["calc", methodology, "--input", str(path), "--explain"]) == 0
    assert f"rounded down to whole tCO2) = {er}" in capsys.readouterr().out


# -- fuzz: random YAML trees never give a traceback -------------------------------------------------------

NAMES = ["methodology", "version", "period", "start", "end", "units", "parameters", "id"] + sorted(
    {n for m in MODULES for n in load_spec(m).parameters})
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-10**500, max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.dates(),
    st.sampled_from(["1e3", "yes", "2021-02-30", "11226.5 MWh", "2.0", "MN_AM003", ".nan", "-0"]))
trees = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=6), st.integers()), inner, max_size=5)),
    max_leaves=20)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**20, max_value=10**20),
                    st.sampled_from([0, 0.797, 797, 1e308, -1e-300]), scalars)


@st.composite
def near_valid(draw):
    """Inputs shaped like the real thing, with random values: they reach the equations."""
    m = draw(st.sampled_from(sorted(MODULES)))
    spec = load_spec(m)
    names = {n: p for n, p in spec.parameters.items()}
    unit = st.fixed_dictionaries({}, optional={"id": st.one_of(st.sampled_from(["A", "B"]), scalars),
                                               **{n: numbers for n, p in names.items() if p.per_unit}})
    data = draw(st.fixed_dictionaries({}, optional={
        "methodology": st.sampled_from([m, "MN_AM003", None]), "version": st.sampled_from([spec.version, 2.0, "9"]),
        "period": st.fixed_dictionaries({}, optional={"start": st.one_of(st.dates(), scalars),
                                                      "end": st.one_of(st.dates(), scalars)}),
        "units": st.one_of(st.lists(unit, max_size=3), trees),
        "parameters": st.one_of(st.fixed_dictionaries({}, optional={n: numbers for n, p in names.items()
                                                                    if not p.per_unit}), trees)}))
    return m, data


def _no_traceback(capsys, tmp_path, methodology: str, text: str) -> None:
    code, out, err = run_calc(capsys, methodology, text, tmp_path)
    assert code in (0, 2), (code, text)
    if code == 0:
        result = json.loads(out)
        assert result["ER"] == int(result["ER"]) and err == ""
    else:
        assert out == "" and err and all(line.startswith(f"{tmp_path / 'in.yaml'}: ") for line in err.splitlines()), err


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(150), deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.one_of(near_valid(), st.tuples(st.sampled_from(sorted(MODULES)), trees)))
def test_random_yaml_trees_never_give_a_traceback(capsys, tmp_path, case):
    methodology, data = case
    _no_traceback(capsys, tmp_path, methodology, yaml.safe_dump(data, allow_unicode=True))


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(50), deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(alphabet=st.sampled_from(list("{}[]:-,&*!|>'\"#%@ \n\tabcEeyn01.9+_")), max_size=60))
def test_random_text_never_gives_a_traceback(capsys, tmp_path, text):
    _no_traceback(capsys, tmp_path, "MN_AM003", text)


def test_the_input_model_is_made_once_per_spec():
    """Each month processed validates its input: the model is made once for a spec object, and
    another spec object (its file changed, say) gets its own."""
    from processing.methodologies.calc_input import input_model

    spec = load_spec("MN_AM003")
    assert input_model(spec) is input_model(spec) and input_model(spec, True) is not input_model(spec)
    other = spec.model_copy(update={"version": spec.version + "-x"})
    assert input_model(other) is not input_model(spec) and input_model(other) is input_model(other)
