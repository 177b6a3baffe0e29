"""`jcm --help` and every command's help: each option says what it is and its default,
the top-level help matches the commands, and `jcm export --help` shows MRV staff the
way from a site to the verifier's files."""

import argparse
import re
import subprocess
import sys

from jcm.cli import build_parser
from tests.conftest import REPO


def help_of(*command):
    res = subprocess.run([sys.executable, "-m", "jcm.cli", *command, "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return " ".join(res.stdout.split())  # argparse wraps lines where it likes


def commands():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_option_of_every_command_has_help_and_shows_its_default():
    missing, no_default = [], []
    for name, parser in commands().items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0] if action.option_strings else action.dest
            if not action.help:
                missing.append(f"{name} {flag}")
            if action.default not in (None, False, argparse.SUPPRESS) and \
                    f"(default: {action.default})" not in text:
                no_default.append(f"{name} {flag} (default {action.default})")
    assert missing == [] and no_default == []


def test_top_level_help_lists_every_command_and_says_what_calc_reads():
    text = help_of()
    for name in commands():
        assert re.search(rf"\b{re.escape(name)}\b", text), name
    assert "JSON" not in text.split("calc", 1)[1].split("process", 1)[0]
    assert "(YAML file)" in text
    assert "A SITE is a site id" in text


def test_export_help_walks_from_a_site_to_the_verifiers_files():
    text = help_of("export")
    steps = ["jcm process --site mn-solar --month 2026-09..2026-10", "jcm signoff --site mn-solar --month 2026-09",
             "jcm export --site mn-solar --from 2026-09-01 --to 2026-10-31 --out exports/",
             "exports/mn-solar_2026-09-01_2026-10-31/", "manifest.json", "hand over that folder"]
    positions = [text.find(s) for s in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions) if p < 0]
    assert positions == sorted(positions)


def test_a_bad_date_names_its_option():
    """Before: "month must be in 1..12", without saying which option."""
    res = subprocess.run([sys.executable, "-m", "jcm.cli", "export", "--site", "mn-solar", "--from", "2026-13-01",
                          "--to", "2026-10-31", "--out", "unused"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "--from: '2026-13-01' is not a date YYYY-MM-DD" in res.stderr
    assert "Traceback" not in res.stderr and not (REPO / "unused").exists()
