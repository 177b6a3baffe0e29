"""A sign-off is final on disk: no statement through any connection removes or replaces it,
also in a ledger created before the guards existed."""

import sqlite3

import pytest

from processing.ledger import Ledger


def signed_ledger(path) -> Ledger:
    ledger = Ledger(path)
    ledger._db.execute(
        "INSERT INTO revisions (site, month, revision, created, fingerprint, input_hash, methodology, "
        "methodology_version, defaults_hash, config_hash, code_version, status, result_json) "
        "VALUES ('mn-solar', '2026-10', 1, '2026-11-01', 'f', 'h', 'MN_AM003', '1', 'd', 'c', 'v', 'verified', '{}')")
    ledger.sign_off("mn-solar", "2026-10", "A. Verifier")
    return ledger


TAMPERING = [
    "DELETE FROM signoffs",
    "DELETE FROM signoffs WHERE site = 'mn-solar'",
    "UPDATE signoffs SET signed_by = 'someone else'",
    "INSERT OR REPLACE INTO signoffs VALUES ('mn-solar', '2026-10', 1, 'someone else', '2026-11-02')",
    "REPLACE INTO signoffs VALUES ('mn-solar', '2026-10', 1, 'someone else', '2026-11-02')",
]


@pytest.mark.parametrize("statement", TAMPERING)
def test_a_sign_off_cannot_be_deleted_or_replaced(tmp_path, statement):
    path = tmp_path / "ledger.sqlite"
    signed_ledger(path)
    other = sqlite3.connect(path, isolation_level=None)  # as anyone with the file would
    with pytest.raises(sqlite3.IntegrityError, match="a sign-off is final"):
        other.execute(statement)
    assert other.execute("SELECT signed_by FROM signoffs").fetchall() == [("A. Verifier",)]
    assert Ledger(path).signoff("mn-solar", "2026-10")[1] == "A. Verifier"


def test_a_ledger_made_before_the_guards_gets_them_when_opened(tmp_path):
    path = tmp_path / "ledger.sqlite"
    signed_ledger(path)._db.executescript("DROP TRIGGER signoffs_no_delete; DROP TRIGGER signoffs_no_replace;")
    Ledger(path)
    with pytest.raises(sqlite3.IntegrityError, match="a sign-off is final"):
        sqlite3.connect(path, isolation_level=None).execute("DELETE FROM signoffs")
