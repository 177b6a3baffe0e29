"""Data files that are missing, corrupt or unwritable, through the real ``jcm`` command.

A corrupt outbox, store or ledger, a directory where the file should be, a SQLite file of
another kind, or a directory that cannot be written gives one line naming the file and
what to do, a non-zero exit, and no file created or modified. Commands that work on
collected data never create a store or a ledger."""

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.outbox import Outbox
from processing.ledger import Ledger
from store.sqlite_store import SqliteStore
from tests.conftest import REPO, free_port, tcp_device, write_site

SITES = str(REPO / "config" / "sites")


def jcm(*args, cwd=REPO, timeout=60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "jcm.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path) -> dict:
    """Every file and directory under ``root`` with its size, content hash and modification time."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns, digest)
    return out


def one_line_naming(res: subprocess.CompletedProcess, *words: str) -> str:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if " INFO " not in line]
    assert len(errors) == 1, res.stderr
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


# -- commands that work on collected data never create a store or a ledger -----------------------

def test_readme_paths_create_nothing(tmp_path):
    """The README's example commands in a fresh directory: each refuses, naming what is missing."""
    port = free_port()
    runs = {
        "export": ["export", "--site", "mn-solar", "--from", "2026-09-01", "--to", "2026-10-31", "--out", "exports/",
                   "--store", "sqlite:///var/jcm.db", "--ledger", "var/ledger.sqlite"],
        "process": ["process", "--site", "mn-solar", "--month", "2026-10"],
        "deadletters": ["deadletters", "--store", "sqlite:///var/jcm.db"],
        "dashboard": ["dashboard", "--port", port],
        "processor": ["processor", "--duration", 1],
    }
    for name, args in runs.items():
        res = jcm(*args, "--sites", SITES, cwd=tmp_path) if name not in ("deadletters",) else jcm(*args, cwd=tmp_path)
        one_line_naming(res, "var/jcm.db", "does not exist")
        assert list(tmp_path.iterdir()) == [], f"jcm {name} created {list(tmp_path.rglob('*'))}"


def test_a_missing_ledger_is_refused_and_created_only_on_purpose(tmp_path):
    SqliteStore(tmp_path / "jcm.db").close()
    store = ["--store", f"sqlite:///{tmp_path}/jcm.db", "--sites", SITES]
    ledger = tmp_path / "books" / "ledger.sqlite"
    before = snapshot(tmp_path)
    for args in (["process", "--site", "mn-solar", "--month", "2026-10", *store],
                 ["export", "--site", "mn-solar", "--from", "2026-10-01", "--to", "2026-10-31", "--out", tmp_path / "x",
                  *store],
                 ["signoff", "--site", "mn-solar", "--month", "2026-10", "--by", "MRV Staff"]):
        one_line_naming(jcm(*args, "--ledger", ledger), str(ledger), "does not exist")
        assert snapshot(tmp_path) == before
    res = jcm("process", "--site", "mn-solar", "--month", "2026-10", *store, "--ledger", ledger, "--create-ledger")
    assert res.returncode == 0, res.stderr
    assert ledger.exists()


def test_influxdb_database_that_does_not_exist_is_refused(tmp_path, influxdb):
    url = f"influxdb://127.0.0.1:{influxdb.port}?api=v1&db=nosuch"
    Ledger(tmp_path / "ledger.sqlite").close()
    res = jcm("export", "--site", "mn-solar", "--from", "2026-10-01", "--to", "2026-10-31", "--out", tmp_path / "x",
              "--store", url, "--ledger", tmp_path / "ledger.sqlite", "--sites", SITES)
    one_line_naming(res, "database 'nosuch' does not exist")
    assert not (tmp_path / "x").exists()


# -- corrupt files ------------------------------------------------------------------------------

def _store(path: Path) -> None:
    s = SqliteStore(path)
    s._db.execute("INSERT INTO dead_letters (received, topic, payload, reason) VALUES (?,?,?,?)",
                  ("2026-10-01T00:00:00+00:00", "t", os.urandom(60_000), "padding, so that there are pages to lose"))
    s.close()


def _ledger(path: Path) -> None:
    Ledger(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO month_to_date VALUES ('s', '2026-10', 'x', 'x', ?)", ("x" * 60_000,))
    db.close()


def _outbox(path: Path) -> None:
    box = Outbox(path, max_rows=1000)
    for _ in range(30):
        box.append("t", lambda s: f"m{s}" + "x" * 2000)
    box.close()


def garbage(path: Path, make) -> None:
    path.write_bytes(os.urandom(20_000))


def half_truncated(path: Path, make) -> None:
    make(path)
    os.truncate(path, path.stat().st_size // 2 + 100)


def lost_pages(path: Path, make) -> None:
    """Truncated at a page boundary: the cheap size check cannot see it, SQLite's check does."""
    make(path)
    os.truncate(path, path.stat().st_size // 2 // 4096 * 4096)


def directory(path: Path, make) -> None:
    path.mkdir()
    (path / "something").write_text("x")


def foreign(path: Path, make) -> None:
    """A SQLite file of another kind (the wrong path given): not to be written into."""
    other = {_store: _ledger, _ledger: _store, _outbox: _store}[make]
    other(path)


def garbage_after_header(path: Path, make) -> None:
    make(path)
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(8192))


def _cmd(role: str, path: Path, tmp_path: Path) -> list:
    if role == "store":
        return ["process", "--site", "mn-solar", "--month", "2026-10", "--sites", SITES, "--store",
                f"sqlite:///{path}", "--ledger", tmp_path / "ok-ledger.sqlite"]
    if role == "ledger":
        return ["export", "--site", "mn-solar", "--from", "2026-10-01", "--to", "2026-10-31", "--out",
                tmp_path / "out", "--sites", SITES, "--store", f"sqlite:///{tmp_path}/ok.db", "--ledger", path]
    site = write_site(tmp_path / "cfg", [tcp_device("m1", "power_meter_3ph", free_port())])
    return ["gateway", "--site", site, "--outbox", path, "--broker", f"mqtt://127.0.0.1:{free_port()}", "--duration", 1]


MAKERS = {"store": _store, "ledger": _ledger, "outbox": _outbox}
CASES = [("store", garbage), ("store", half_truncated), ("store", directory), ("store", foreign),
         ("ledger", lost_pages), ("ledger", garbage_after_header), ("ledger", foreign), ("ledger", directory),
         ("outbox", garbage), ("outbox", half_truncated), ("outbox", lost_pages), ("outbox", directory)]


@pytest.mark.parametrize("role,damage", CASES, ids=[f"{r}-{d.__name__}" for r, d in CASES])
def test_corrupt_file_gives_one_line_and_touches_nothing(tmp_path, role, damage):
    data = tmp_path / "data"
    data.mkdir()
    SqliteStore(tmp_path / "ok.db").close()
    Ledger(tmp_path / "ok-ledger.sqlite").close()
    path = data / {"store": "jcm.db", "ledger": "ledger.sqlite", "outbox": "outbox.sqlite"}[role]
    damage(path, MAKERS[role])
    args = _cmd(role, path, tmp_path)
    before = snapshot(tmp_path)
    line = one_line_naming(jcm(*args), str(path))
    assert snapshot(tmp_path) == before, "a file was created or modified"
    if role == "outbox":
        assert "--new-outbox" in line


def test_new_outbox_moves_a_corrupt_outbox_aside_and_starts_afresh(tmp_path):
    site = write_site(tmp_path / "cfg", [tcp_device("m1", "power_meter_3ph", free_port())])
    path = tmp_path / "outbox.sqlite"
    half_truncated(path, _outbox)
    Path(f"{path}-wal").write_bytes(b"wal of the old file")
    kept = path.read_bytes()
    args = ["gateway", "--site", site, "--outbox", path, "--broker", f"mqtt://127.0.0.1:{free_port()}", "--duration", 1]
    assert jcm(*args).returncode == 2
    res = jcm(*args, "--new-outbox")
    assert res.returncode == 0, res.stderr
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("outbox.sqlite.corrupt-")]
    main = [p for p in aside if not p.name.endswith("-wal")]
    assert len(main) == 1 and main[0].read_bytes() == kept  # kept whole, never deleted
    assert Path(f"{main[0]}-wal").read_bytes() == b"wal of the old file"  # with its WAL
    assert "sequence starts again at 1" in res.stderr and main[0].name in res.stderr
    assert Outbox(path, max_rows=1000).last_seq() >= 0  # a new, healthy outbox


# -- unwritable directories ---------------------------------------------------------------------

@contextlib.contextmanager
def read_only_dir(where: Path):
    """A directory this process cannot write: a read-only mount for root (who ignores modes), else mode 0555."""
    if os.geteuid() == 0:
        where.mkdir()
        subprocess.run(["mount", "--bind", str(where), str(where)], check=True)
        done = subprocess.run(["mount", "-o", "remount,bind,ro", str(where)], capture_output=True, text=True)
        if done.returncode:
            subprocess.run(["umount", str(where)])
            pytest.skip(f"cannot make a read-only bind mount: {done.stderr.strip()}")
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)
    else:
        where.mkdir()
        where.chmod(0o555)
        try:
            yield where
        finally:
            where.chmod(0o755)


def test_unwritable_directories_give_one_line(tmp_path):
    seeded = tmp_path / "seed"
    seeded.mkdir()
    _outbox(seeded / "outbox.sqlite")
    _store(seeded / "jcm.db")
    site = write_site(tmp_path / "cfg", [tcp_device("m1", "power_meter_3ph", free_port())])
    broker = f"mqtt://127.0.0.1:{free_port()}"
    cfg = tmp_path / "collector.yaml"
    ro = tmp_path / "ro"
    with read_only_dir(ro):
        if os.geteuid() == 0:  # an existing outbox and store on the read-only mount
            subprocess.run(["mount", "-o", "remount,bind,rw", str(ro)], check=True)
            for f in seeded.iterdir():
                (ro / f.name).write_bytes(f.read_bytes())
            subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        before = snapshot(ro)
        new = ro / "sub" / "outbox.sqlite"
        one_line_naming(jcm("gateway", "--site", site, "--outbox", new, "--broker", broker, "--duration", 1),
                        str(new), "not writable")
        for store in (ro / "new.db", ro / "jcm.db") if os.geteuid() == 0 else (ro / "new.db",):
            cfg.write_text(yaml.safe_dump({"broker": {"url": broker}, "store": f"sqlite:///{store}",
                                           "sites_dir": str(tmp_path / "cfg" / "sites")}))
            one_line_naming(jcm("collector", "--config", cfg, "--duration", 1), str(store), "not writable")
        if os.geteuid() == 0:
            one_line_naming(jcm("gateway", "--site", site, "--outbox", ro / "outbox.sqlite", "--broker", broker,
                                "--duration", 1), str(ro / "outbox.sqlite"), "not writable")
        assert snapshot(ro) == before


@pytest.mark.parametrize("kind", ["store", "ledger"])
def test_a_new_file_opened_by_several_at_once_opens_for_each(tmp_path, kind):
    """Two collectors sharing one store (or a processor and a report one ledger), started together
    on a new file: switching it to the write-ahead log made SQLite answer "database is locked" at
    once to one of them (the bench's two collectors: 4 - 9 starts of 30 stopped)."""
    import threading

    opens = {"store": SqliteStore, "ledger": Ledger}[kind]
    failed = []
    for i in range(40):
        path, ready = tmp_path / f"{i}.db", threading.Barrier(3)

        def start():
            ready.wait()
            try:
                opens(path).close()
            except Exception as exc:  # noqa: BLE001 -- any failure counts
                failed.append(repr(exc))

        threads = [threading.Thread(target=start) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failed, failed[:3]


def test_a_foreign_files_table_names_are_shown_escaped_in_its_one_line(tmp_path):
    """A SQLite file of another kind is refused naming its tables: a table named with a newline and a
    terminal escape broke the one-line message in two and coloured the terminal. Shown escaped now."""
    import sqlite3

    path = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(path)
    db.execute('CREATE TABLE "x\n\x1b[31mforged line" (a)')
    db.commit()
    db.close()
    line = one_line_naming(jcm("deadletters", "--store", f"sqlite:///{path}"), str(path), "not a store",
                           "x\\x0a\\x1b[31mforged line")
    assert "\x1b" not in line
