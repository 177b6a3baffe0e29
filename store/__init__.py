"""Time-series stores behind ``contract.store.ReadingStore``.

``open_store(url)`` picks one by URL:

- ``sqlite:///var/jcm.db`` (relative path) or ``sqlite:////abs/path.db``: embedded, the default
- ``influxdb://host:8086?db=jcm`` or ``influxdbs://...``: InfluxDB; ``api=v2`` (default) writes
  line protocol to ``/api/v2/write`` (InfluxDB 1.8+, 2.x, 3.x) with ``org`` and ``bucket``,
  ``api=v1`` to ``/write`` for InfluxDB 1.x before 1.8; reads are InfluxQL on ``/query``.
  Secrets come from the environment: ``token_env=NAME`` or ``username_env``/``password_env``.

``create`` says whether a store that does not exist may be created (a new SQLite file and
its directories): the collector's, whose first run makes it. Commands that work on
collected readings (``process``, ``export``, ``deadletters``, ``dashboard``, the processor)
pass ``create=False``: a missing SQLite file or InfluxDB database is then an
``UnusableFile`` error naming it, never an empty store that yields empty results.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from contract.store import ReadingStore


def open_store(url: str, *, create: bool = True) -> ReadingStore:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from store.sqlite_store import SqliteStore

        path = url.removeprefix("sqlite:///")
        if not path or path == url:
            raise ValueError(f"store URL '{url}': expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
        return SqliteStore(path, create=create)
    if parts.scheme in ("influxdb", "influxdbs"):
        from store.influx_store import InfluxStore

        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        store = InfluxStore.from_url(parts, query)
        if not create:
            store.check_database()
        return store
    raise ValueError(f"store URL '{url}': unknown scheme '{parts.scheme}' (use sqlite:/// or influxdb://)")
