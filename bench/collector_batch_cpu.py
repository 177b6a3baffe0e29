"""The collector's CPU a reading on the backlog's batch form, in one process, without a broker.

The bench's readings (``collector_throughput.messages``: 20 channels, ten meters) packed as a
gateway packs its backlog (``contract/batch.py``, batches of up to 2,000), unsigned or signed
(one chain, as the outbox signs them, the site requiring signatures), each batch handed to a
``Collector``'s checker (``_check``: unpacking, the custody check, validation) and then to its
worker (``_keep``: the store's write, the books, the acknowledgements) into a new SQLite store.
Each stage's thread CPU is timed alone: the figures do not move with the machine's load as the
drain's rates do (``collector_throughput.py --batch``).

    python bench/collector_batch_cpu.py [--readings 40000] [--signed]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from collector.service import Collector, Incoming  # noqa: E402
from collector_throughput import SITE, messages, write_site  # noqa: E402
from contract import batch, topics  # noqa: E402
from contract.config import CollectorConfig  # noqa: E402
from thin_link import _key_entry, signed_chain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=40000)
    ap.add_argument("--batch", type=int, default=2000, help="most readings a batch")
    ap.add_argument("--signed", action="store_true", help="every reading signed, the site requiring it")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sites = write_site(Path(tmp))
        bodies = [body for _, body in messages(a.readings)]
        if a.signed:
            key = Ed25519PrivateKey.generate()
            site = yaml.safe_load((sites / f"{SITE}.yaml").read_text())
            site["custody"] = {"require_signatures": True, "keys": [_key_entry(key)]}
            (sites / f"{SITE}.yaml").write_text(yaml.safe_dump(site))
            bodies = signed_chain(bodies, key)
        payloads, i = [], 0
        while i < len(bodies):
            payload, n = batch.pack(bodies[i:i + a.batch])
            payloads.append(payload)
            i += n
        collector = Collector(CollectorConfig(broker={"url": "mqtt://127.0.0.1:1"}, store=f"sqlite:///{tmp}/s.db",
                                              sites_dir=str(sites), client_id="bench"))
        gc.collect()
        gc.freeze()  # as `jcm collector` does (collector.service.settle_process)
        now = dt.datetime.now(dt.UTC)
        check = keep = 0.0
        for mid, payload in enumerate(payloads, 1):
            incoming = Incoming(0, mid, 1, topics.batch(SITE, "gw-bench"), payload, now)
            t = time.thread_time()
            checked = collector._check([incoming])
            check += time.thread_time() - t
            t = time.thread_time()
            collector._keep(checked)
            keep += time.thread_time() - t
        collector.store.close()
    if collector.stored != a.readings:
        raise SystemExit(f"stored {collector.stored} of {a.readings} readings ({collector.dead} dead letters)")
    print(f"{'signed' if a.signed else 'unsigned'}: {a.readings} readings in {len(payloads)} batches; µs CPU a "
          f"reading: checker {check / a.readings * 1e6:.1f}, worker {keep / a.readings * 1e6:.1f}")


if __name__ == "__main__":
    main()
