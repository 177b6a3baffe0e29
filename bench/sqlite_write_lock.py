"""How soon one writer of a SQLite store gets the write lock after another lets it go.

Two collectors on a shared subscription into one SQLite store take turns at its write lock:
each holds it through its batch's upsert and commit. Two processes here write the bench's
readings (``collector_throughput.messages``) into one new store through ``SqliteStore.write``,
in batches, with a pause between batches (a sleep: the collector's other work, without
using a core), and note when each asked for the lock, got it and let it go. The handover is
how long after the other let it go a waiting writer got it: the store's own wait, free of
the CPU contention that moves every rate on a shared machine.

    python bench/sqlite_write_lock.py [--batches 25] [--batch 2000] [--pause 0.01]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from collector_throughput import messages  # noqa: E402
from contract.message import Reading  # noqa: E402
from store.sqlite_store import SqliteStore  # noqa: E402


class _Timed:
    """The store's connection, noting when a write transaction began and when it committed."""

    def __init__(self, db, events: list):
        self._db, self._events = db, events

    def execute(self, sql, *args):
        out = self._db.execute(sql, *args)
        if sql in ("BEGIN IMMEDIATE", "COMMIT"):
            self._events.append(("got" if sql == "BEGIN IMMEDIATE" else "free", time.time()))
        return out

    def __getattr__(self, name):
        return getattr(self._db, name)


def _writer(path: str, part: int, batches: int, size: int, pause: float, out: mp.Queue, go) -> None:
    store = SqliteStore(path)
    events: list = []
    store._db = _Timed(store._db, events)
    readings = [Reading.from_json(body) for _, body in messages(2 * batches * size)][part::2]
    go.wait()
    for i in range(batches):
        events.append(("want", time.time()))
        store.write(readings[i * size:(i + 1) * size])
        time.sleep(pause)
    store.close()
    out.put((part, events))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=25, help="batches each writer writes")
    ap.add_argument("--batch", type=int, default=2000, help="readings a batch")
    ap.add_argument("--pause", type=float, default=0.01, help="seconds between a writer's batches")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/store.db"
        SqliteStore(path).close()
        out, go = mp.Queue(), mp.Event()
        procs = [mp.Process(target=_writer, args=(path, i, a.batches, a.batch, a.pause, out, go)) for i in range(2)]
        for p in procs:
            p.start()
        time.sleep(1 + a.batches * a.batch * 4e-5)  # the readings made
        go.set()
        events = dict(out.get(timeout=600) for _ in procs)
        for p in procs:
            p.join()
    handovers, waits = [], []
    for me, other in ((0, 1), (1, 0)):
        frees = [t for kind, t in events[other] if kind == "free"]
        asked = 0.0
        for kind, t in events[me]:
            if kind == "want":
                asked = t
            elif kind == "got":
                waits.append(t - asked)
                let_go = [f for f in frees if asked < f < t]  # the other let it go while this one waited
                if let_go:
                    handovers.append(t - let_go[-1])
    handovers.sort()
    if not handovers:
        print("the writers never waited for each other: raise --batches or lower --pause")
        return
    print(f"{len(handovers)} handovers: median {statistics.median(handovers) * 1e3:.1f} ms, "
          f"mean {statistics.mean(handovers) * 1e3:.1f}, p90 {handovers[int(len(handovers) * 0.9)] * 1e3:.1f}, "
          f"max {handovers[-1] * 1e3:.1f}; mean wait for the lock {statistics.mean(waits) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
