"""``jcm``: one command line for every job of the pipeline."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys
import threading
from pathlib import Path

from contract.config import ConfigError, load_profile, load_site
from contract.sqlite_file import UnusableFile
from contract.store import StoreUnavailable
from contract.text import printable

log = logging.getLogger("jcm")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _wait_for_signal(seconds: float | None = None, stop: threading.Event | None = None) -> None:
    """Wait for SIGINT or SIGTERM, ``seconds``, or ``stop`` being set elsewhere."""
    stop = stop or threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait(timeout=seconds)


def cmd_check_config(args) -> int:
    bad = 0
    for f in args.files:
        try:
            is_profile = Path(f).parent.name == "profiles"
            obj = load_profile(f) if is_profile else load_site(f, args.profiles)
            what = f"profile {obj.profile}, {len(obj.points)} points" if is_profile else \
                f"site {obj.site}, {len(obj.devices)} devices, gateway {obj.gateway}"
            print(f"{f}: OK ({what})")
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            bad += 1
    return 1 if bad else 0


def _parse_serial(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        name, sep, pty = pair.partition("=")
        if not sep:
            raise SystemExit(f"--serial expects PORT=PTY, got '{pair}'")
        out[name] = pty
    return out


def cmd_simulate(args) -> int:
    from simulators.control import serve_control
    from simulators.modbus_server import SiteSimulator

    site = load_site(args.site)
    sim = SiteSimulator(site, serial_ports=_parse_serial(args.serial))
    for spec in args.fault or []:
        device, _, rest = spec.partition(":")
        kind, _, seconds = rest.partition(":")
        sim.inject(device, kind, float(seconds) if seconds else None)

    async def main():
        await sim.start()
        if args.control_port:
            serve_control(sim, args.control_port)
            log.info("fault control on http://127.0.0.1:%d/faults", args.control_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.duration:
            loop.call_later(args.duration, stop.set)
        await stop.wait()
        await sim.stop()

    asyncio.run(main())
    return 0


def cmd_gateway(args) -> int:
    from gateway.service import Gateway

    site = load_site(args.site)
    gw = Gateway(site, broker_url=args.broker, outbox_path=args.outbox, new_outbox=args.new_outbox)
    gw.start()
    _wait_for_signal(args.duration)
    gw.stop()
    return 0


def _collector_config(args):
    from contract.config import load_collector

    config = load_collector(args.config)
    update = {}
    if getattr(args, "store", None):
        update["store"] = args.store
    if getattr(args, "broker", None):
        update["broker"] = config.broker.model_copy(update={"url": args.broker})
    if getattr(args, "client_id", None):
        update["client_id"] = args.client_id
    return config.model_copy(update=update) if update else config


def cmd_collector(args) -> int:
    from collector.service import Collector

    collector = Collector(_collector_config(args))
    collector.start()
    _wait_for_signal(args.duration, collector.done)  # done: the worker died
    collector.stop()
    log.info("collector stopped: %d readings stored, %d dead letters", collector.stored, collector.dead)
    if collector.failure is not None:  # non-zero, so that systemd or compose restarts it
        log.critical("collector failed: %s", printable(repr(collector.failure)))
        return 1
    return 0


def cmd_deadletters(args) -> int:
    from store import open_store

    store = open_store(args.store or _collector_config(args).store, create=False)
    letters = store.dead_letters(args.limit)
    for d in letters:
        # what a sender put in a message is shown escaped: it cannot forge lines or drive the terminal
        payload = printable(d.payload[:200].decode("utf-8", "backslashreplace"))
        size = f"\n    size:    {d.size} bytes, sha256 {d.sha256}" if d.size is not None else ""
        print(f"{d.received.isoformat(timespec='seconds')}  {printable(d.topic)}\n    reason:  {printable(d.reason)}\n"
              f"    payload: {payload}{size}")
    print(f"{len(letters)} dead letter(s) shown (newest first)")
    store.close()
    return 0


def cmd_calc(args) -> int:
    import json

    from processing.methodologies import MODULES, InputError, calculate, load_spec
    from processing.methodologies.calc_input import read_yaml, validate_input

    path = Path(args.input)
    try:
        if args.methodology not in MODULES:
            raise InputError(f"jcm calc: unknown methodology '{args.methodology}' (known: {', '.join(MODULES)})")
        spec = load_spec(args.methodology)
        given = validate_input(spec, read_yaml(path), str(path), period_required=True)
        calc = calculate(args.methodology, given.parameters.model_dump(exclude_none=True),
                         [u.model_dump(exclude_none=True) for u in given.units], spec=spec)
    except InputError as exc:
        print(exc, file=sys.stderr)
        return 2
    period = {"start": given.period.start.isoformat(), "end": given.period.end.isoformat()}
    if args.explain:
        print(f"{calc.methodology} Ver{calc.version}" + (" [provisional]" if calc.provisional else ""))
        print(f"period: {period['start']} .. {period['end']}")
        for name, d in calc.defaults_used.items():
            print(f"default {name} = {d['value']} {d['unit']} ({d['status']}; {d['source']})")
        for line in calc.explanation:
            print(line)
        return 0
    print(json.dumps({**calc.to_dict(), "period": period}, indent=2, default=str))
    return 0


def _site_by_id(sites_dir: str, site_id: str):
    path = Path(sites_dir) / f"{site_id}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in Path(sites_dir).glob("*.yaml")))
        raise ConfigError(f"no site '{site_id}' in {sites_dir} (known: {known})")
    return load_site(path)


def cmd_process(args) -> int:
    import json

    from processing.ledger import Ledger
    from processing.monthly import process_month
    from store import open_store

    site = _site_by_id(args.sites, args.site)
    store, ledger = open_store(args.store, create=False), Ledger(args.ledger, create=args.create_ledger)
    result, revision = process_month(site, store, ledger, args.month)
    out = result.summary()
    out["revision"] = revision.revision if revision else None
    out["new_revision"] = bool(revision and revision.new)
    if revision is None:
        out["note"] = "month signed off: this result was not recorded"
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_signoff(args) -> int:
    from processing.ledger import Ledger, SignedOff

    try:
        rev = Ledger(args.ledger, create=False).sign_off(args.site, args.month, args.by, args.revision)
    except (ValueError, SignedOff) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.site} {args.month}: revision {rev} signed off by {args.by}")
    return 0


def cmd_processor(args) -> int:
    import glob

    from processing.ledger import Ledger
    from processing.scheduler import Processor
    from store import open_store

    sites = [load_site(f) for f in sorted(glob.glob(str(Path(args.sites) / "*.yaml")))]
    # the collector makes the store; the processor's first run makes its ledger
    proc = Processor(sites, open_store(args.store, create=False), Ledger(args.ledger, create=True))
    proc.start()
    _wait_for_signal(args.duration)
    proc.stop()
    return 0


def cmd_export(args) -> int:
    import datetime as dt
    import json

    from processing.export import export_period
    from processing.ledger import Ledger
    from store import open_store

    site = _site_by_id(args.sites, args.site)
    first, last = dt.date.fromisoformat(args.date_from), dt.date.fromisoformat(args.date_to)
    if last < first:
        raise ConfigError(f"--to {last} is before --from {first}")
    folder = export_period(site, open_store(args.store, create=False), Ledger(args.ledger, create=False), first, last,
                           Path(args.out), force=args.force)
    for line in json.loads((folder / "manifest.json").read_text())["config_changes"]:
        print(f"warning: {line}", file=sys.stderr)
    print(f"monitoring period {first}..{last} of {site.site} exported to {folder}")
    return 0


#: the Mqtt setting behind each broker option of the live view and ``jcm watch``
BROKER_OPTIONS = {"url": "--broker", "username_env": "--username-env", "password_env": "--password-env",
                  "ca_file": "--ca-file", "cert_file": "--cert-file", "key_file": "--key-file"}


def _broker_arguments(s) -> None:
    s.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                   help="mqtt://host[:1883] plaintext, or mqtts://host[:8883] TLS; no credentials in the URL")
    s.add_argument("--username-env", help="environment variable holding the MQTT username")
    s.add_argument("--password-env", help="environment variable holding the MQTT password")
    s.add_argument("--ca-file", help="CA certificate that signed the broker's (mqtts://; default: the system's CAs)")
    s.add_argument("--cert-file", help="client certificate (mqtts://)")
    s.add_argument("--key-file", help="key of the client certificate")


def _broker_settings(args):
    """The broker options as the same settings model a site file's ``mqtt:`` block gives."""
    from contract.config.site import Mqtt
    from contract.mqtt_connection import checked

    return checked(Mqtt.model_construct(**{key: getattr(args, option[2:].replace("-", "_"))
                                           for key, option in BROKER_OPTIONS.items()}), "--broker", BROKER_OPTIONS)


def cmd_watch(args) -> int:
    from jcm.watch import watch

    return watch(_broker_settings(args), args.topic, args.count, args.duration, names=BROKER_OPTIONS)


def cmd_demo(args) -> int:
    from jcm.demo import run_demo

    only = args.sites.split(",") if args.sites else None
    return run_demo(Path(args.config), args.duration, Path(args.workdir), only, args.port, args.control_port,
                    args.broker)


def cmd_dashboard(args) -> int:
    import glob
    import os

    import uvicorn

    from liveview.app import LiveView, create_app
    from processing.ledger import Ledger
    from store import open_store

    sites = [load_site(f) for f in sorted(glob.glob(str(Path(args.sites) / "*.yaml")))]
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise ConfigError(f"--token-env: environment variable {args.token_env} is not set")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("the live view is exposed on %s without a token (use --token-env)", args.host)
    view = LiveView(sites, _broker_settings(args), open_store(args.store, create=False), args.alarms,
                    ledger=Ledger(args.ledger, create=False), token=token,
                    simulated=args.simulated, allowed_hosts=[args.host, *(args.allow_host or [])],
                    broker_names=BROKER_OPTIONS)
    uvicorn.run(create_app(view), host=args.host, port=args.port, log_level="warning")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jcm", description="JCM remote monitoring and MRV pipeline")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("check-config", help="validate site and profile files without running anything")
    s.add_argument("files", nargs="+")
    s.add_argument("--profiles", help="profiles directory (default: ../profiles beside the site file)")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("simulate", help="serve a site's devices as Modbus servers with plant physics")
    s.add_argument("--site", required=True)
    s.add_argument("--serial", action="append", metavar="PORT=PTY", help="serve the RTU bus PORT on PTY")
    s.add_argument("--control-port", type=int, help="HTTP port for fault injection")
    s.add_argument("--fault", action="append", metavar="DEVICE:KIND[:SECONDS]", help="inject a fault at start")
    s.add_argument("--duration", type=float, help="stop after this many seconds")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("gateway", help="poll a site's devices and publish readings over MQTT")
    s.add_argument("--site", required=True)
    s.add_argument("--broker", help="override the site's MQTT URL, e.g. mqtt://127.0.0.1:1883")
    s.add_argument("--outbox", help="override the outbox file")
    s.add_argument("--new-outbox", action="store_true",
                   help="once, for an outbox that cannot be used: move it aside to <name>.corrupt-<UTC time> "
                        "(never deleted) and start a new outbox, whose sequence starts again at 1 under a new "
                        "epoch")
    s.add_argument("--duration", type=float, help="stop after this many seconds")
    s.set_defaults(func=cmd_gateway)

    s = sub.add_parser("collector", help="subscribe to every site's readings and write them to the store")
    s.add_argument("--config", default="config/collector.yaml")
    s.add_argument("--store", help="override the store URL, e.g. sqlite:///var/jcm.db")
    s.add_argument("--broker", help="override the broker URL")
    s.add_argument("--client-id", help="override the MQTT client id (one per collector of a share group)")
    s.add_argument("--duration", type=float, help="stop after this many seconds")
    s.set_defaults(func=cmd_collector)

    s = sub.add_parser("deadletters", help="list the messages the collector kept aside, with why")
    s.add_argument("--config", default="config/collector.yaml")
    s.add_argument("--store", help="store URL (default: the collector config's)")
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(func=cmd_deadletters)

    s = sub.add_parser("calc", help="compute one monitoring period from given monitored values (JSON)")
    s.add_argument("methodology", help="e.g. MN_AM003")
    s.add_argument("--input", required=True, help="YAML with period, units and parameters")
    s.add_argument("--explain", action="store_true", help="print each equation with the numbers substituted")
    s.set_defaults(func=cmd_calc)

    def processing_args(s):
        s.add_argument("--sites", default="config/sites", help="site config directory")
        s.add_argument("--store", default="sqlite:///var/jcm.db")
        s.add_argument("--ledger", default="var/ledger.sqlite")

    s = sub.add_parser("process", help="compute one month of one site now and record it in the ledger")
    s.add_argument("--site", required=True)
    s.add_argument("--month", required=True, help="YYYY-MM")
    processing_args(s)
    s.add_argument("--create-ledger", action="store_true",
                   help="create the ledger if it does not exist (else a missing ledger is an error)")
    s.set_defaults(func=cmd_process)

    s = sub.add_parser("signoff", help="sign off a month: no later revision will change it")
    s.add_argument("--site", required=True)
    s.add_argument("--month", required=True)
    s.add_argument("--by", required=True, help="name of the MRV staff member")
    s.add_argument("--revision", type=int, help="default: the latest")
    s.add_argument("--ledger", default="var/ledger.sqlite")
    s.set_defaults(func=cmd_signoff)

    s = sub.add_parser("export", help="write a monitoring period's workbook, CSVs, charts, summary and manifest")
    s.add_argument("--site", required=True)
    s.add_argument("--from", dest="date_from", required=True, help="first day, YYYY-MM-DD (site local)")
    s.add_argument("--to", dest="date_to", required=True, help="last day, inclusive")
    s.add_argument("--out", required=True, help="folder to write the export into")
    s.add_argument("--force", action="store_true", help="replace an existing export of the same period")
    processing_args(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("processor", help="run the monthly processing on its schedule (with start-up catch-up)")
    processing_args(s)
    s.add_argument("--duration", type=float, help="stop after this many seconds")
    s.set_defaults(func=cmd_processor)

    s = sub.add_parser("watch", help="print the readings arriving at a broker")
    _broker_arguments(s)
    s.add_argument("--topic", default="jcm/v1/#")
    s.add_argument("--count", type=int, help="exit after this many messages")
    s.add_argument("--duration", type=float, help="exit after this many seconds")
    s.set_defaults(func=cmd_watch)

    s = sub.add_parser("demo", help="run the five reference sites end to end on this machine")
    s.add_argument("--config", default="config", help="config directory (sites/ and profiles/)")
    s.add_argument("--duration", type=float, help="run for this many seconds, then exit 0 if readings flowed")
    s.add_argument("--workdir", default="var/demo")
    s.add_argument("--sites", help="comma-separated site ids (default: all)")
    s.add_argument("--port", type=int, default=8080, help="live view port (a free one if taken)")
    s.add_argument("--control-port", type=int, default=8502, help="first simulator fault-control port")
    s.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                   help="auto: Mosquitto if installed, else the embedded Python broker")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("dashboard", help="the operators' live view (FastAPI)")
    s.add_argument("--sites", default="config/sites")
    _broker_arguments(s)
    s.add_argument("--store", default="sqlite:///var/jcm.db")
    s.add_argument("--ledger", default="var/ledger.sqlite")
    s.add_argument("--alarms", default="var/alarms.sqlite", help="where alarm transitions are kept")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--token-env", help="environment variable holding the access token")
    s.add_argument("--allow-host", action="append", metavar="NAME",
                   help="a host name the pages are reached by without a token, besides --host and loopback")
    s.add_argument("--simulated", action="store_true", help="label every page as simulated data")
    s.set_defaults(func=cmd_dashboard)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except UnusableFile as exc:  # names the file and what to do; nothing was changed
        print(f"jcm {args.command}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad arguments (a month, a period, a URL) explained by the code that refused them
        print(f"jcm {args.command}: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"jcm {args.command}: the store cannot be used now: {exc}", file=sys.stderr)
        return 1
    except sqlite3.OperationalError as exc:  # a full disk, a lock, an I/O error: may pass, so a restart may help
        print(f"jcm {args.command}: SQLite cannot write or read now: {exc} (in the store, ledger or outbox it uses)",
              file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as exc:  # damage found past the checks made when the file was opened
        print(f"jcm {args.command}: SQLite error: {exc} (in the store, ledger or outbox it uses; a file said to be "
              "malformed must be restored from a backup)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
