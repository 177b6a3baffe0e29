"""``jcm``: one command line for every job of the pipeline."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

from contract.config import ConfigError, load_profile, load_site
from contract.sqlite_file import UnusableFile
from contract.store import StoreUnavailable
from contract.text import printable
from liveview.limits import MAX_STREAMS, MAX_STREAMS_PER_ADDRESS

log = logging.getLogger("jcm")


#: libraries that log routine work (APScheduler: two lines per poll) at INFO: quiet unless -v
_CHATTY_LIBRARIES = ("apscheduler", "amqtt", "transitions", "uvicorn.error")


def _setup_logging(verbose: int, quiet: bool) -> None:
    """Default: our INFO lines (start, stop, changes of state), nothing per poll. ``-q``:
    warnings and errors only. ``-v``: our DEBUG and the libraries' INFO. ``-vv``: everything."""
    ours = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=ours, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    libraries = logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(libraries, ours))
    # pymodbus logs every failed read itself; the poller reports them once, with the device
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)


def _wait_for_signal(seconds: float | None = None, stop: threading.Event | None = None) -> None:
    """Wait for SIGINT or SIGTERM, ``seconds``, or ``stop`` being set elsewhere."""
    stop = stop or threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # wake at least once a second: a handler runs only when this thread runs, and an untimed
    # wait is not always interrupted by the signal (a gateway under a stepped clock ignored
    # SIGTERM: tests/test_gateway_clock_jump.py)
    end = None if seconds is None else time.monotonic() + seconds
    while not stop.is_set():
        left = 1.0 if end is None else min(1.0, end - time.monotonic())
        if left <= 0:
            break
        stop.wait(left)


def cmd_check_config(args) -> int:
    bad = 0
    for f in args.files:
        try:
            is_profile = Path(f).parent.name == "profiles"
            obj = load_profile(f) if is_profile else load_site(site_file(f, args.sites_dir), args.profiles)
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

    site = _load_site(args)
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

    site = _load_site(args)
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
    from collector.service import Collector, settle_process

    collector = Collector(_collector_config(args))
    settle_process()
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


def _is_site_path(site: str) -> bool:
    return Path(site).suffix in (".yaml", ".yml") or "/" in site or os.sep in site


def site_file(site: str, sites_dir: str) -> Path:
    """The file of ``--site``: a path to a site file as given, or a site id looked up in ``sites_dir``."""
    if _is_site_path(site):
        return Path(site)
    path = Path(sites_dir) / f"{site}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in Path(sites_dir).glob("*.yaml"))) or "none"
        raise ConfigError(f"--site {site}: no site '{site}' in {sites_dir} (no file {path.name}; site ids there: "
                          f"{known}): give a site id of --sites-dir or the path of a site file")
    return path


def _load_site(args):
    return load_site(site_file(args.site, args.sites_dir), args.profiles)


def _load_sites(args) -> list:
    import glob

    return [load_site(f, args.profiles) for f in sorted(glob.glob(str(Path(args.sites_dir) / "*.yaml")))]


def months(spec: str) -> list[str]:
    """``2026-03`` or an inclusive range ``2026-01..2026-06``, as a list of months."""
    import datetime as dt

    ends = spec.split("..")
    try:
        first, last = (dt.datetime.strptime(e.strip(), "%Y-%m").date() for e in (ends[0], ends[-1]))
    except ValueError:
        raise ValueError(f"--month '{spec}': expected YYYY-MM or YYYY-MM..YYYY-MM") from None
    if len(ends) > 2 or last < first:
        raise ValueError(f"--month '{spec}': expected YYYY-MM or a range FIRST..LAST with LAST not before FIRST")
    out = []
    while first <= last:
        out.append(first.strftime("%Y-%m"))
        first = (first + dt.timedelta(days=32)).replace(day=1)
    return out


def cmd_process(args) -> int:
    import json

    from jcm.progress import Progress
    from processing.ledger import Ledger
    from processing.monthly import process_month
    from store import open_store

    site = _load_site(args)
    wanted = months(args.month)
    store, ledger = open_store(args.store, create=False), Ledger(args.ledger, create=args.create_ledger)
    results = []
    with Progress(f"process {site.site}", unit="month") as progress:
        for done, month in enumerate(wanted, 1):
            result, revision = process_month(site, store, ledger, month)
            out = {"site": site.site, "month": month, **result.summary()}
            out["revision"] = revision.revision if revision else None
            out["new_revision"] = bool(revision and revision.new)
            if revision is None:
                out["note"] = "month signed off: this result was not recorded"
            results.append(out)
            if len(wanted) > 1:
                progress(done, len(wanted), month)
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2, default=str))
    return 0


def cmd_signoff(args) -> int:
    from processing.ledger import Ledger, SignedOff

    # the ledger knows sites by id: a site file is read only to learn it
    site = _load_site(args).site if _is_site_path(args.site) else args.site
    try:
        rev = Ledger(args.ledger, create=False).sign_off(site, args.month, args.by, args.revision)
    except (ValueError, SignedOff) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{site} {args.month}: revision {rev} signed off by {args.by}")
    return 0


def cmd_processor(args) -> int:
    from jcm.progress import Progress
    from processing.ledger import Ledger
    from processing.scheduler import Processor
    from store import open_store

    sites = _load_sites(args)
    # the collector makes the store; the processor's first run makes its ledger
    catch_up = Progress("processor catch-up", unit="month")
    proc = Processor(sites, open_store(args.store, create=False), Ledger(args.ledger, create=True), progress=catch_up)
    proc.start()
    catch_up.close()
    _wait_for_signal(args.duration)
    proc.stop()
    return 0


def _at_least_one(text: str) -> int:
    """A count of 1 or more (an argparse type)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def _date(option: str, text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: '{text}' is not a date YYYY-MM-DD ({exc})") from None


def cmd_export(args) -> int:
    import json

    from jcm.progress import Progress
    from processing.export import export_period
    from processing.ledger import Ledger
    from store import open_store

    site = _load_site(args)
    first, last = _date("--from", args.date_from), _date("--to", args.date_to)
    if last < first:
        raise ConfigError(f"--to {last} is before --from {first}")
    try:
        with Progress(f"export {site.site} {first}..{last}", unit="step") as progress:
            folder = export_period(site, open_store(args.store, create=False), Ledger(args.ledger, create=False),
                                   first, last, Path(args.out), force=args.force, progress=progress)
    except OSError as exc:  # a full disk, say, here or in a process beside: the export leaves nothing half-written
        print(f"jcm export: cannot write the export in {args.out}: {exc}: nothing was exported", file=sys.stderr)
        return 1
    manifest = json.loads((folder / "manifest.json").read_text())
    for line in manifest["config_changes"]:
        print(f"warning: {line}", file=sys.stderr)
    signed = manifest["custody"]["signed_messages"]
    if not signed:
        print("warning: the period's readings are not signed: the export has no custody folder, so a verifier "
              "cannot trace them to the meters (jcm verify says: not signed)", file=sys.stderr)
    for end in manifest["custody"].get("witnesses", {}).get("not_witnessed", []):
        print(f"warning: the {end['end']} of chain {end['gateway']}/{end['epoch']} (seq {end['seq']}, {end['ts']}) is "
              f"not witnessed: {end['why']} (jcm verify says: NOT WITNESSED; export again once the store has the "
              "gateway's messages beyond the reading window)", file=sys.stderr)
    print(f"monitoring period {first}..{last} of {site.site} exported to {folder}"
          + (f" with {signed} signed messages (check: jcm verify {folder})" if signed else ""))
    return 0


def cmd_keygen(args) -> int:
    from jcm.keygen import keygen

    print(keygen(args.site, Path(args.out)))
    return 0


#: most processes ``jcm verify --jobs`` starts (a typo should not start thousands)
MAX_JOBS = 256


def _cores() -> int:
    """The cores this process may run on (its affinity, where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cmd_verify(args) -> int:
    from concurrent.futures.process import BrokenProcessPool

    from jcm.verify import verify_export

    jobs = args.jobs
    if not (jobs.isascii() and jobs.isdigit()) or not 1 <= int(jobs) <= MAX_JOBS:
        raise ValueError(f"--jobs {jobs!r}: not a number of processes from 1 to {MAX_JOBS}")
    try:
        code, report = verify_export(Path(args.folder), int(jobs), Path(args.ledger) if args.ledger else None)
    except BrokenProcessPool:  # one killed from outside (the OOM killer, say): its chunk's verdicts are gone
        raise ValueError(f"a process checking signatures ended before its work was done (killed, or out of "
                         f"memory?): nothing was verified; run again, or with --jobs 1 (was {jobs})") from None
    print("\n".join(report))
    return code


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


def cmd_doctor(args) -> int:
    from jcm.doctor import FIX, Check, print_table, run_checks

    try:
        path = site_file(args.site, args.sites_dir)
        site = load_site(path, args.profiles)
    except ConfigError as exc:  # nothing else can be checked without the site
        lines = str(exc).splitlines()
        return print_table([Check("config", FIX, line) for line in lines])
    return print_table(run_checks(site, path, broker_url=args.broker, outbox_path=args.outbox, timeout=args.timeout))


def cmd_watch(args) -> int:
    from jcm.watch import watch

    return watch(_broker_settings(args), args.topic, args.count, args.duration, names=BROKER_OPTIONS)


def cmd_demo(args) -> int:
    from jcm.demo import run_demo

    only = args.sites.split(",") if args.sites else None
    return run_demo(Path(args.config), args.duration, Path(args.workdir), only, args.port, args.control_port,
                    args.broker)


def cmd_dashboard(args) -> int:
    import uvicorn

    from liveview.app import SHUTDOWN_GRACE_S, LiveView, create_app
    from processing.ledger import Ledger
    from store import open_store

    sites = _load_sites(args)
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise ConfigError(f"--token-env: environment variable {args.token_env} is not set")
    if token and not all("!" <= c <= "~" for c in token):  # it travels in a header and a cookie: Latin-1 at most
        raise ConfigError(f"--token-env: the token in {args.token_env} must be visible ASCII characters only "
                          "(no spaces, no other letters): a browser could not send it")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("the live view is exposed on %s without a token (use --token-env)", args.host)
    view = LiveView(sites, _broker_settings(args), open_store(args.store, create=False), args.alarms,
                    ledger=Ledger(args.ledger, create=False), token=token,
                    simulated=args.simulated, allowed_hosts=[args.host, *(args.allow_host or [])],
                    broker_names=BROKER_OPTIONS, max_streams=args.max_streams,
                    max_streams_per_address=args.max_streams_per_address)
    uvicorn.run(create_app(view), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, where it has one; descriptions keep their lines."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text \
                and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


EXPORT_HELP = """\
From a site to the files a verifier receives (site: an id in --sites-dir or a site file):

  1. process the months:  jcm process --site mn-solar --month 2026-09..2026-10
       each month becomes a revision in the ledger (--ledger); its status, ER and the
       reasons for any status but verified are printed (JSON). Months the processor
       caught up are there already.
  2. review them: the printed findings, the live view's monthly results, or a draft
       export (step 4) whose workbook lists the QA findings and adjustments.
  3. sign off each month:  jcm signoff --site mn-solar --month 2026-09 --by "A. Tanaka"
       recorded in the ledger; no later revision changes a signed-off month.
  4. export the period:   jcm export --site mn-solar --from 2026-09-01 --to 2026-10-31 --out exports/
       writes exports/mn-solar_2026-09-01_2026-10-31/: monitoring_<same>.xlsx (the JCM
       monitoring spreadsheet with live formulas), daily_values.csv, completeness.csv,
       raw_readings.csv.gz, daily_values.png, completeness.png, summary.html and manifest.json (SHA-256 of
       every file, ledger revisions used, who signed off).
  5. hand over that folder unchanged (e.g. zipped); the verifier checks it against
       manifest.json. The same inputs give byte-identical files.
"""


def build_parser() -> argparse.ArgumentParser:
    # -v/-q are accepted before or after the command; after it they must not reset what came before
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                           help="more detail: -v our debug lines and the libraries' routine lines (e.g. every poll), "
                                "-vv everything (default: start, stop and changes of state only)")
    verbosity.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                           help="warnings and errors only")
    p = argparse.ArgumentParser(
        prog="jcm", parents=[verbosity], formatter_class=_HelpFormatter,
        description="JCM remote monitoring and MRV pipeline: site gateway, collector, processor, exports, live view.",
        epilog="A SITE is a site id (its file is <--sites-dir>/<id>.yaml) or the path of a site file.\n"
               "'jcm COMMAND --help' describes each command and its options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help, parents=[verbosity],
                              formatter_class=_HelpFormatter)

    def site_args(s, site: bool = True):
        if site:
            s.add_argument("--site", required=True, metavar="SITE",
                           help="site id (looked up in --sites-dir) or path of a site file")
        s.add_argument("--sites-dir", "--sites", dest="sites_dir", default="config/sites",
                       help="directory of site files <id>.yaml")
        s.add_argument("--profiles", metavar="DIR",
                       help="directory of register-map profiles searched first (then the site's profiles_dir, "
                            "../profiles beside the site's directory, the profiles shipped with jcm)")

    s = command("check-config", "validate site and profile files without running anything")
    s.add_argument("files", nargs="+", metavar="FILE", help="site files (or site ids) and profile files")
    site_args(s, site=False)
    s.set_defaults(func=cmd_check_config)

    s = command("doctor", "check a site on site: config, every device, broker login and TLS, outbox, clock",
                "Check what a gateway needs, as the gateway would do it: the site file, one Modbus read of "
                "every device, a login to the broker with the site's credentials (and TLS), the outbox's disk "
                "space and writability, and the clock. Prints a table of what is fine and what to fix; exits 1 "
                "if anything must be fixed.")
    site_args(s)
    s.add_argument("--broker", help="broker URL to check instead of the site's mqtt.url")
    s.add_argument("--outbox", help="outbox file to check instead of the site's outbox.path")
    s.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker [s]")
    s.set_defaults(func=cmd_doctor)

    s = command("simulate", "serve a site's devices as Modbus servers with plant physics")
    site_args(s)
    s.add_argument("--serial", action="append", metavar="PORT=PTY", help="serve the RTU bus PORT on PTY (repeatable)")
    s.add_argument("--control-port", type=int, help="HTTP port for fault injection (default: none)")
    s.add_argument("--fault", action="append", metavar="DEVICE:KIND[:SECONDS]",
                   help="inject a fault at start (repeatable)")
    s.add_argument("--duration", type=float, help="stop after this many seconds (default: run until stopped)")
    s.set_defaults(func=cmd_simulate)

    s = command("gateway", "poll a site's devices and publish readings over MQTT")
    site_args(s)
    s.add_argument("--broker", help="override the site's MQTT URL, e.g. mqtt://127.0.0.1:1883")
    s.add_argument("--outbox", help="override the site's outbox file (outbox.path)")
    s.add_argument("--new-outbox", action="store_true",
                   help="once, for an outbox that cannot be used: move it aside to <name>.corrupt-<UTC time> "
                        "(never deleted) and start a new outbox, whose sequence starts again at 1 under a new "
                        "epoch")
    s.add_argument("--duration", type=float, help="stop after this many seconds (default: run until stopped)")
    s.set_defaults(func=cmd_gateway)

    s = command("collector", "subscribe to every site's readings and write them to the store")
    s.add_argument("--config", default="config/collector.yaml", help="collector config file")
    s.add_argument("--store", help="override the store URL, e.g. sqlite:///var/jcm.db")
    s.add_argument("--broker", help="override the broker URL")
    s.add_argument("--client-id", help="override the MQTT client id (one per collector of a share group)")
    s.add_argument("--duration", type=float, help="stop after this many seconds (default: run until stopped)")
    s.set_defaults(func=cmd_collector)

    s = command("deadletters", "list the messages the collector kept aside, with why")
    s.add_argument("--config", default="config/collector.yaml", help="collector config file (for its store)")
    s.add_argument("--store", help="store URL (default: the collector config's)")
    s.add_argument("--limit", type=int, default=50, help="show at most this many, newest first")
    s.set_defaults(func=cmd_deadletters)

    s = command("calc", "compute one monitoring period from given monitored values (YAML file)")
    s.add_argument("methodology", help="methodology id, e.g. MN_AM003")
    s.add_argument("--input", required=True, metavar="FILE.yaml",
                   help="YAML with methodology, version, period, units and parameters")
    s.add_argument("--explain", action="store_true", help="print each equation with the numbers substituted")
    s.set_defaults(func=cmd_calc)

    def processing_args(s, site: bool = True):
        site_args(s, site)
        s.add_argument("--store", default="sqlite:///var/jcm.db", help="store URL")
        s.add_argument("--ledger", default="var/ledger.sqlite", help="ledger file (monthly revisions, sign-offs)")

    s = command("process", "compute months of one site now and record them in the ledger")
    processing_args(s)
    s.add_argument("--month", required=True, metavar="YYYY-MM[..YYYY-MM]",
                   help="a month, or an inclusive range of months (with progress and time left)")
    s.add_argument("--create-ledger", action="store_true",
                   help="create the ledger if it does not exist (else a missing ledger is an error)")
    s.set_defaults(func=cmd_process)

    s = command("signoff", "sign off a month: no later revision will change it")
    site_args(s)
    s.add_argument("--month", required=True, metavar="YYYY-MM", help="the month to sign off")
    s.add_argument("--by", required=True, help="name of the MRV staff member")
    s.add_argument("--revision", type=int, help="revision to sign off (default: the latest)")
    s.add_argument("--ledger", default="var/ledger.sqlite", help="ledger file")
    s.set_defaults(func=cmd_signoff)

    s = command("export", "write a monitoring period's workbook, CSVs, charts, summary and manifest",
                "Write one folder with what a JCM verifier receives for a monitoring period.\n\n" + EXPORT_HELP)
    s.add_argument("--force", action="store_true", help="replace an existing export of the same period")
    processing_args(s)
    s.add_argument("--from", dest="date_from", required=True, metavar="YYYY-MM-DD",
                   help="first day of the period (site local)")
    s.add_argument("--to", dest="date_to", required=True, metavar="YYYY-MM-DD", help="last day, inclusive")
    s.add_argument("--out", required=True, metavar="DIR",
                   help="folder to write the export into: <out>/<site>_<from>_<to>/")
    s.set_defaults(func=cmd_export)

    s = command("processor", "run the monthly processing on its schedule (with start-up catch-up)")
    processing_args(s, site=False)
    s.add_argument("--duration", type=float, help="stop after this many seconds (default: run until stopped)")
    s.set_defaults(func=cmd_processor)

    s = command("keygen", "make a gateway's signing key pair and print the site-file lines for it")
    s.add_argument("--site", required=True, help="site id: names the key files and the key id")
    s.add_argument("--out", default="var/keys", help="folder of the key files")
    s.set_defaults(func=cmd_keygen)

    s = command("verify", "check an export: its files, the signatures and hash chains of its signed messages, "
                          "that no chain was cut short inside the reading window, and its figures recomputed from "
                          "them (exit 0 passed, 1 failed, 3 a chain end not witnessed, 4 not fully checked: no "
                          "pass, made by another version, its pages and workbook not made again, 2 unusable)")
    s.add_argument("folder", metavar="EXPORT_DIR", help="the export folder (nothing else is read, but --ledger)")
    s.add_argument("--ledger", metavar="FILE", help="also say whether each month of the export is this ledger's "
                                                    "signed-off revision of it, else its latest (opened read-only)")
    s.add_argument("--jobs", default=str(_cores()), metavar="N",
                   help="processes checking signatures, the output the same whatever N; the default is the cores "
                        "this process may use")
    s.set_defaults(func=cmd_verify)

    s = command("watch", "print the readings arriving at a broker")
    _broker_arguments(s)
    s.add_argument("--topic", default="jcm/v1/#", help="MQTT topic filter")
    s.add_argument("--count", type=int, help="exit after this many messages")
    s.add_argument("--duration", type=float, help="exit after this many seconds")
    s.set_defaults(func=cmd_watch)

    s = command("demo", "run the five reference sites end to end on this machine")
    s.add_argument("--config", default="config", help="config directory (with sites/)")
    s.add_argument("--duration", type=float, help="run for this many seconds, then exit 0 if readings flowed")
    s.add_argument("--workdir", default="var/demo", help="where the demo's store, ledger, outboxes and exports go")
    s.add_argument("--sites", help="comma-separated site ids (default: all)")
    s.add_argument("--port", type=int, default=8080, help="live view port (a free one if taken)")
    s.add_argument("--control-port", type=int, default=8502, help="first simulator fault-control port")
    s.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                   help="auto: Mosquitto if installed, else the embedded Python broker")
    s.set_defaults(func=cmd_demo)

    s = command("dashboard", "the operators' live view (FastAPI)")
    site_args(s, site=False)
    _broker_arguments(s)
    s.add_argument("--store", default="sqlite:///var/jcm.db", help="store URL (charts, energy)")
    s.add_argument("--ledger", default="var/ledger.sqlite", help="ledger file (monthly results)")
    s.add_argument("--alarms", default="var/alarms.sqlite", help="where alarm transitions are kept")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8080, help="port to listen on")
    s.add_argument("--token-env", help="environment variable holding the access token (default: no token)")
    s.add_argument("--allow-host", action="append", metavar="NAME",
                   help="a host name the pages are reached by without a token, besides --host and loopback")
    s.add_argument("--simulated", action="store_true", help="label every page as simulated data")
    s.add_argument("--max-streams", type=_at_least_one, default=MAX_STREAMS,
                   help="open live streams (one a site page) at most; more are refused with 503")
    s.add_argument("--max-streams-per-address", type=_at_least_one, default=MAX_STREAMS_PER_ADDRESS,
                   help="open live streams from one client address at most (a proxy on this host: the address "
                        "it forwards)")
    s.set_defaults(func=cmd_dashboard)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except UnusableFile as exc:  # names the file and what to do; nothing was changed
        print(f"jcm {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
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
