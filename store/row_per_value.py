"""The embedded store's layout before the row per message (until 30 Nov 2026), frozen.

A row per (site, device, channel, ts) value, upserted: numbers and booleans as REAL
``value``, texts as ``text_value``, a null value neither. Kept for three users: the store
converts a file of this layout when it opens it (``SqliteStore._rows_per_message``), tests
write files of it to prove that conversion, and bench/store_layout.py measures the store
against it. Do not change it: files of it exist.
"""

from __future__ import annotations

from contract.message import Reading

#: the tables of the layout (``devices`` is the same today)
SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    site TEXT NOT NULL, device TEXT NOT NULL, channel TEXT NOT NULL, ts INTEGER NOT NULL,
    gateway TEXT NOT NULL, value REAL, text_value TEXT, quality TEXT, seq INTEGER,
    PRIMARY KEY (site, device, channel, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    site TEXT NOT NULL, device TEXT NOT NULL, gateway TEXT NOT NULL, last_seen INTEGER NOT NULL,
    status TEXT, PRIMARY KEY (site, device)
);
"""

UPSERT = """
INSERT INTO readings (site, device, channel, ts, gateway, value, text_value, quality, seq)
VALUES (?,?,?,?,?,?,?,?,?)
ON CONFLICT (site, device, channel, ts) DO UPDATE SET
    gateway = excluded.gateway, value = excluded.value, text_value = excluded.text_value,
    quality = excluded.quality, seq = excluded.seq
"""


def value_rows(r: Reading, ms: int) -> list[tuple]:
    """``UPSERT``'s rows of a reading stamped ``ms`` [ms since the epoch]."""
    site, device, gateway, seq, quality = r.site, r.device, r.gateway, r.seq, r.quality
    # a float, the usual value, is taken as it is
    return [(site, device, channel, ms, gateway,
             v if type(v) is float else float(v) if isinstance(v, (int, float, bool)) else None,
             v if isinstance(v, str) else None, quality[channel].value if channel in quality else None, seq)
            for channel, v in r.values.items()]
