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


REVISION = ("'mn-solar', '2026-10', 1, '2026-11-09', 'f2', 'h2', 'MN_AM003', '1', 'd', 'c', 'v', 'verified', 0, 0, "
            "99999, 99999, 0, '{}'")
REVISION_TAMPERING = [
    f"INSERT OR REPLACE INTO revisions VALUES (1, {REVISION})",  # same id
    f"REPLACE INTO revisions VALUES (7, {REVISION})",  # same (site, month, revision) under a new id
    f"INSERT OR REPLACE INTO revisions VALUES (NULL, {REVISION})",
]


@pytest.mark.parametrize("statement", REVISION_TAMPERING)
def test_a_revision_cannot_be_replaced(tmp_path, statement):
    """Before: INSERT OR REPLACE deleted the recorded revision (no delete trigger fires) and put
    ER 99,999 in its place."""
    path = tmp_path / "ledger.sqlite"
    signed_ledger(path)
    other = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        other.execute(statement)
    assert other.execute("SELECT id, revision, input_hash, ER FROM revisions").fetchall() == [(1, 1, "h", None)]
    assert [r.input_hash for r in Ledger(path).revisions("mn-solar", "2026-10")] == ["h"]


def test_a_new_revision_still_goes_in(tmp_path):
    ledger = signed_ledger(tmp_path / "ledger.sqlite")
    ledger._db.execute(f"INSERT INTO revisions VALUES (NULL, {REVISION.replace(', 1, ', ', 2, ', 1)})")
    assert [r.revision for r in ledger.revisions("mn-solar", "2026-10")] == [1, 2]
