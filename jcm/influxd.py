"""A private InfluxDB 1.x for the tests and the benchmarks: loopback, free ports, quiet."""

from __future__ import annotations

from pathlib import Path

from jcm.broker import free_port


def influxd_config(d: Path) -> tuple[Path, int]:
    """Write ``d/influxdb.conf`` for an ``influxd`` keeping its files under ``d`` and answering
    HTTP on a free loopback port (no reporting, query log, monitor or continuous queries);
    return the file and the HTTP port (``influxd -config FILE``)."""
    port, rpc = free_port(), free_port()
    conf = d / "influxdb.conf"
    conf.write_text(
        f'reporting-disabled = true\nbind-address = "127.0.0.1:{rpc}"\n[meta]\n  dir = "{d}/meta"\n'
        f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  query-log-enabled = false\n'
        f'[http]\n  bind-address = "127.0.0.1:{port}"\n  log-enabled = false\n'
        '[monitor]\n  store-enabled = false\n[continuous_queries]\n  enabled = false\n')
    return conf, port
