"""What a collector meeting a gateway costs: its first reading of a gateway whose epoch holds
N blocks of stored seqs in SQLite (``SequenceGaps.stored``, which reads the store's
bookkeeping and runs the first check). Reported: wall time, the peak of Python allocations
(tracemalloc) and the runs it then holds.

``--history``: ``full`` (every seq stored), ``holey`` (each block misses one seq that no
finding judged, so every block is a hole to look at), ``marked`` (full, and the epoch judged
up to near its top: a restarted collector of a version with marks).

    python bench/meet_gateway.py [--blocks 16384] [--history full|holey|marked]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.sequence_gaps import SequenceGaps  # noqa: E402
from contract import store as contract_store  # noqa: E402
from contract.message import Reading  # noqa: E402
from contract.store import BLOCK_SEQS, WORDS, SeqBlock  # noqa: E402
from store.sqlite_store import SqliteStore  # noqa: E402

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=16384)
    ap.add_argument("--history", choices=("full", "holey", "marked"), default="full")
    args = ap.parse_args()
    n, history = args.blocks, args.history
    store = SqliteStore(Path(tempfile.mkdtemp()) / "jcm.db")
    full = (1 << BLOCK_SEQS) - 1
    times = (int(T0.timestamp() * 1000),) * (2 * WORDS)
    for i in range(0, n, 1000):
        store.record_seq_blocks([
            SeqBlock("s", "gw", "e1", b, full & ~1 if b == 0 else full & ~(1 << 100) if history == "holey" else full,
                     times, "bench") for b in range(i, min(n, i + 1000))])
    top = n * BLOCK_SEQS - 1
    if history == "marked":  # a version before marks has none to write: it runs as "full"
        mark = getattr(contract_store, "SeqMark", None)
        if mark is not None:
            store.record_seq_marks([mark("s", "gw", "e1", top - 100, "bench")])
    gaps = SequenceGaps(store, grace_s=600, clock=lambda: 0.0)
    tracemalloc.start()
    t = time.perf_counter()
    gaps.stored([Reading("s", "gw", "d", T0, {"x": 1.0}, seq=top + 1, epoch="e1")])
    wall = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    runs = len(gaps._gateways[("s", "gw")]["e1"].runs)
    print(f"{n} blocks, {history}: {wall * 1000:,.0f} ms, peak {peak / 1e6:.1f} MB, {runs:,} runs held")
    store.close()


if __name__ == "__main__":
    main()
