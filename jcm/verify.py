"""``jcm verify EXPORT_DIR``: check a monitoring-period export with nothing but the folder,
and print a verdict a verifier can paste into a report.

1. the files: every file of ``manifest.json`` and ``SHA256SUMS`` present with its
   SHA-256, and no file that neither lists; the messages the collector refused in the
   period (``dead_letters.csv.gz``) as many as the manifest says, each row as the export writes
   it, in the period, of the site, in order, its payload's start of its size and SHA-256
   (``_dead_letters``);
2. the custody folder (``contract.custody``): every message's signature (a covered one's
   by the later message that covers it), every chain,
   each gap with its cause (the collector's sequence findings, refused messages), and
   each chain's ends: its last verified message must be stamped at or after the end of
   the reading window (the window of step 3: every reading there may count in the
   figures), and its first before the window's start or begin its chain (``prev``
   GENESIS): the export's witnesses (``processing.export.custody_folder``). Else the
   chain is named with that message's seq and time and how far inside the window it is,
   and the reason the manifest gives (unsigned: it explains, it proves nothing);
3. the figures: the readings of the verified messages stamped in the window the
   recomputation reads (``recompute.reading_window``; witnesses and covering messages
   after it are not readings of the figures) alone, with the site settings
   (``site.json``) and fixed values the export recorded, go through the processor's own
   code (``processing.export.recompute``); each day's values, the period's totals, RE,
   PE and ER (its exact decimal too), and each month's input hash (in the version the
   manifest names for its revision: a hash that is the readings' in another version is named
   as such; the hash and version the workbook's sheet Monthly and the summary pages show must
   be the readings' hash in that version) and status must equal the exported ones, in the
   manifest, ``daily_values.csv``,
   the workbook and the summary pages (RE, PE and ER as they show them, each once), as must
   the period's status (``period_figures.period_status``: its months' worst) in the manifest
   and on the summary pages. Figures that
   cannot be computed (``period_figures.period_calculation``) must be exported as such: status
   failed, none in the manifest nor the workbook, the same reason on the workbook's report and
   the same status and reason on the summary pages (``summary.html`` in each language); the
   manifest's fixed values against ``site.json`` and the defaults (``_fixed_check``);
4. the files made again: the summary pages, the workbook, ``daily_values.csv``, ``completeness.csv``, the raw
   readings' text and the manifest made from the recomputation by the export's own code, compared byte for
   byte (``_remade``),
   so that nothing a reader sees in them escapes; for an export of another exporter or
   processing code, said so: NOT FULLY CHECKED; the charts each a whole PNG of the size the export
   draws it (``_charts``). Files checked by their hash alone are named, and what the export says
   that nothing checks (``_exporters_word``).
With ``--ledger``, each month's revision against the ledger's signed-off one, else its latest (``against_ledger``).

Exit 0 only on PASSED; 1 on any mismatch (FAILED); 4 when everything compared holds but some
files or the fixed values could not be compared (NOT FULLY CHECKED: no pass, and its verdict leads with what
was not compared, so that neither a hurried reader nor a script looking for "PASSED" takes it for one); 3
when everything checked holds but a chain's end is not witnessed (NOT WITNESSED: the readings of the window
after its last message, or before its first, cannot be shown complete; a gateway that stopped, and an
export made before its later messages arrived, cannot help that, and a forger who cut the
chain short cannot avoid it: not a pass, for a verifier to judge with the figures shown);
2 (``ValueError``) when the folder cannot be used at all, naming the file.

The Ed25519 checks, most of the time on a long period, are spread over ``jobs`` processes
(``contract.custody.verify_chained``); the output is the same whatever their number.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import math
import re
import sqlite3
import tempfile
import warnings
import zipfile
import zlib
from collections import Counter
from itertools import chain
from html import escape, unescape
from pathlib import Path

import openpyxl

from contract.config.site import Site
from contract.custody import GENESIS, chain_breaks, is_covered, pem_problems, read_folder, verify_chained
from contract.message import Reading
from contract.sqlite_file import UnusableFile
from contract import topics
from contract.store import KEPT_PAYLOAD, CustodyFinding, DeadLetter, SequenceFinding, SignedMessage
from contract.text import printable
from processing.export import DEAD_LETTERS, REPLACED, file_names
from processing.export.csv_files import (DEAD_LETTER_COLUMNS, SIMULATED_NOTE, dead_letter_row, write_completeness,
                                         write_daily_values, write_raw_readings)
from processing.export.chart_sizes import completeness_inches, daily_values_inches, pixels
from processing.export.custody_folder import FINDINGS, read_findings, span
from processing.export.json_file import number, read_json
from processing.export.manifest import exporter_version, write_manifest
from processing.export.period_figures import (CANNOT_COMPUTE, assemble, ledger_revision, local_bounds, period_status,
                                              recorded_fixed, used_revision)
from processing.export.recompute import SITE_SETTINGS, Recomputed, read_site_settings, reading_window, recompute
from processing.export.summary_html import LANGUAGES, figure_text, messages, render
from processing.export.workbook import write_workbook
from processing.fixed_values import FixedValue, from_config, from_record
from processing.ledger import Ledger, Revision, code_version
from processing.monthly import versions
from processing.period import HASH_VERSIONS, PeriodProcessor
from store.sqlite_store import SqliteStore

#: refusals, breaks per chain and mismatches listed one by one; beyond it they are counted
MAX_LISTED = 50
#: readings written to the recomputation's store at a time
BATCH = 5000
FIGURES = ("RE", "PE", "ER_unrounded", "ER")
#: the verdicts, as exit codes (2: the folder cannot be used, a ``ValueError``)
PASSED, FAILED, NOT_WITNESSED, NOT_FULLY_CHECKED = 0, 1, 3, 4
#: the files ``jcm verify`` makes again from its recomputation and compares byte for byte (``_remade``)
REMADE = (*LANGUAGES.values(), "the workbook", "daily_values.csv", "completeness.csv", "raw_readings.csv.gz",
          "manifest.json")
#: the files of an export that ``jcm verify`` checks by their SHA-256 alone (``_unchecked``)
HASHED_ONLY = {"daily_values.png": "a chart of the daily values: what it shows", "completeness.png":
               "a chart of completeness: what it shows"}
#: the export's charts by their role in ``file_names``, with their size [in] from what the recomputation holds
CHARTS = {"daily_chart": lambda r: daily_values_inches(len(r.totals)),
          "completeness_chart": lambda r: completeness_inches(
              len({s for rec in r.results.values() for s in rec["summary"]["completeness"]}), len(r.results))}
#: what a PNG's IHDR says after its size as matplotlib's Agg writes a chart: 8-bit RGBA, not interlaced
PNG_KIND = bytes([8, 6, 0, 0, 0])


def verify_export(folder: Path, jobs: int = 1, ledger: Path | None = None) -> tuple[int, list[str]]:
    """The verdict (``PASSED``, ``FAILED``, ``NOT_WITNESSED`` or ``NOT_FULLY_CHECKED``) and its lines;
    ``jobs``: the processes that check signatures; ``ledger``: a ledger file to compare each month's
    revision with (``against_ledger``), opened read-only."""
    if not folder.exists() and (aside := sorted(folder.parent.glob(f".{folder.name}.{REPLACED}-*"))):
        raise ValueError(f"{folder} does not exist: {aside[-1].name} beside it is the export a 'jcm export --force' "
                         "killed before it was done was replacing: the next 'jcm export' of the period puts it back")
    manifest = _manifest(folder)
    site = read_site_settings(folder / SITE_SETTINGS)
    opened = open_ledger(ledger) if ledger is not None else None  # a mistyped path is named before the long work
    period = _section(manifest, "period")
    out = [f"export {folder}",
           f"site {manifest.get('site')}, period {period.get('first')}..{period.get('last')}, "
           f"{manifest.get('methodology')} version {manifest.get('version')}, status {manifest.get('status')}"]
    problems: list[str] = []
    files = _file_problems(folder, manifest)
    out.append(f"files: {len(manifest.get('files', {})) + 1} in manifest.json and SHA256SUMS"
               + (", each present with its SHA-256, none unlisted" if not files else ""))
    out += [f"  {p}" for p in files]
    problems += [f"{len(files)} file problem(s)"] if files else []
    if site.site != manifest.get("site"):
        raise ValueError(f"{SITE_SETTINGS}: settings of site {site.site}, the manifest's are of {manifest.get('site')}")
    letters, problem = _dead_letters(folder, manifest, site)
    out += letters
    problems += [problem] if problem else []
    if not (folder / "custody").exists():
        out.append("custody: NOT SIGNED: the export holds no signed messages (custody/ is absent), "
                   "so nothing can be checked back to the meters")
        out.append("VERDICT: FAILED: not signed" + "".join(f", {p}" for p in problems))
        return FAILED, [printable(line) for line in out]
    fixed = _fixed(manifest)
    first, last = _date(period, "first"), _date(period, "last")
    if last < first:
        raise ValueError(f"manifest.json: period.last {last} is before period.first {first}")
    window = reading_window(site, first, last, _read_spans(manifest))
    with tempfile.TemporaryDirectory(prefix="jcm-verify-") as tmp:
        store = SqliteStore(Path(tmp) / "readings.db")
        try:
            custody, lines, readings, unwitnessed, held = check_custody(
                folder, store, window, _witness_claims(manifest), witnessed=True, jobs=jobs)
            out += lines
            problems += custody
            result = recompute(site, store, first, last, fixed)
            remade_lines, remade = _remade(folder, manifest, site, result, fixed,
                                           _custody_entry(manifest, window, held), store)
        finally:
            store.close()
    lines, mismatches = _compare(folder, manifest, site, result)
    out.append(f"recomputed from the {readings} reading(s) of the verified messages with {SITE_SETTINGS} and the "
               f"manifest's {len(fixed)} fixed value(s):")
    out += lines
    problems += [f"{mismatches} difference(s) from the recomputation"] if mismatches else []
    lines, wrong = _fixed_check(manifest, site, fixed)
    out += lines
    problems += [f"{wrong} fixed value(s) not those of {SITE_SETTINGS} and the methodology's defaults"] if wrong else []
    in_part = [] if wrong is not None or ledger is not None else [
        f"the fixed values were not compared with {SITE_SETTINGS} and the methodology's defaults (revisions computed "
        "with other settings): the ledger can show them (--ledger)"]
    out += remade_lines
    problems += [f"{remade} file(s) not as the recomputation makes them"] if remade else []
    lines, wrong_charts = _charts(folder, manifest, result)
    out += lines
    problems += [f"{wrong_charts} chart(s) not as the export draws them"] if wrong_charts else []
    in_part += [] if remade is not None else [
        f"{', '.join(REMADE)} were not made again and compared whole (another version made the export): what they "
        "show beyond the figures, statuses, reasons and input hashes compared is not checked"]
    out += _unchecked(manifest)
    out.append(_exporters_word(ledger is not None))
    if opened is not None:
        lines, differences = against_ledger(manifest, site, fixed, opened)
        out += lines
        problems += [f"{differences} difference(s) from the ledger"] if differences else []
    whole = "files whole, every signature verified, every chain whole"
    # a failed period's export can be whole and right: its verdict says what it is right about
    equal = "figures recomputed equal" + (f": none, the period is failed ({result.cannot})" if result.cannot else "")
    if problems:
        code = FAILED
        out.append("VERDICT: FAILED: " + ", ".join(
            problems + ([f"{len(unwitnessed)} chain end(s) not witnessed"] if unwitnessed else [])))
    elif unwitnessed:
        code = NOT_WITNESSED
        out.append(f"VERDICT: NOT WITNESSED: {'; '.join(unwitnessed)}: the readings of the reading window beyond each "
                   f"cannot be shown complete; otherwise {whole}, {equal}" + "".join(f"; but {p}" for p in in_part))
    elif in_part:
        code = NOT_FULLY_CHECKED
        out.append("VERDICT: NOT FULLY CHECKED: " + "; and ".join(in_part) + f"; what was compared holds: {whole} "
                   f"and witnessed across the reading window, {equal}")
    else:
        code = PASSED
        out.append(f"VERDICT: PASSED: {whole} and witnessed across the reading window, {equal}, "
                   f"{', '.join(REMADE)} made again from it byte for byte")
    return code, [printable(line) for line in out]


def open_ledger(path: Path) -> Ledger:
    """The ledger file ``path`` opened read-only (never created, nothing written); ``ValueError`` naming it
    when it cannot be."""
    try:
        return Ledger(path, read_only=True)
    except (UnusableFile, sqlite3.Error) as exc:
        raise ValueError(f"--ledger: {exc}") from None


def against_ledger(manifest: dict, site: Site, fixed: list[FixedValue], ledger: Ledger) -> tuple[list[str], int]:
    """Whether each month of the export is the ledger's revision of it that an export holds
    (``period_figures.ledger_revision``: the signed-off one, else the latest), as the ledger records it:
    its number, times, input hash, versions, status, figures and sign-off; and whether the manifest's ``fixed`` values are those the revisions recorded. The manifest is
    not signed: its revisions are only the exporter's word until compared with the ledger. The lines and how
    many differences; ``ValueError`` naming a ledger that cannot be read (``open_ledger``); ``ledger`` is
    closed."""
    path = ledger.path
    wrong, out, kept = [], [f"ledger {path}:"], []
    try:
        for i, rev in enumerate(manifest.get("revisions") or []):
            month = rev.get("month") if isinstance(rev, dict) else None
            held, signed = ledger_revision(ledger, site.site, month) if isinstance(month, str) else (None, None)
            if held is None:
                wrong.append(f"  manifest.json revisions[{i}]: month {month!r}: the ledger has no revision of it"
                             f" for site {site.site!r}")
                continue
            kept.append(held)
            if held.result["summary"].get("simulated") and manifest.get("simulated") is not True:
                wrong.append(f"  {month}: the ledger's revision {held.revision} was computed from simulated "
                             f"readings, the manifest says simulated {manifest.get('simulated')!r}")
            recorded = used_revision(held, signed).to_dict()
            recorded["read_span"] = None if recorded["read_span"] is None else list(recorded["read_span"])
            differ = [f"{key} {rev.get(key, 'none')!r}, the ledger's {value!r}" for key, value in recorded.items()
                      if rev.get(key) != value or type(rev.get(key)) is not type(value)]
            which = "signed-off revision" if signed else "latest"
            if differ:
                wrong.append(f"  {month}: the export's revision {rev.get('revision')!r} is not the ledger's {which} "
                             f"(revision {held.revision}) as recorded: " + "; ".join(differ))
            else:
                out.append(f"  {month}: revision {held.revision}, the ledger's {which}, equal in every field")
    except sqlite3.Error as exc:
        raise ValueError(f"--ledger {path}: cannot read: {exc}") from None
    finally:
        ledger.close()
    if kept:
        # an export is marked simulated when any of its months was (``assemble``): real readings marked so are not
        # for verification, and a verifier is told to set them aside, so the mark is compared both ways
        simulated = [f"{r.month} (revision {r.revision})" for r in kept if r.result["summary"].get("simulated")]
        if manifest.get("simulated") is True and not simulated:
            wrong.append("  manifest.json simulated True: no revision of its months in the ledger was computed from "
                         "simulated readings")
        else:
            out.append(f"  simulated {manifest.get('simulated')!r}: as the ledger's revisions"
                       + (f" ({', '.join(simulated)} computed from simulated readings)" if simulated else ""))
        spec = PeriodProcessor(site).spec
        try:
            given = {f.key: f.to_dict() for f in recorded_fixed(kept, spec, from_config(site, spec))}
        except ValueError as exc:  # the revisions disagree: no export of them could be made
            given = {"(the ledger's revisions)": str(exc)}
        exported = {f.key: f.to_dict() for f in fixed}
        differ = [f"  manifest.json fixed_parameters {key}: exported {exported.get(key, 'none')}, the ledger's "
                  f"revisions recorded {given.get(key, 'none')}"
                  for key in sorted(set(given) | set(exported)) if given.get(key) != exported.get(key)]
        wrong += differ
        out += [] if differ else [f"  fixed values: the {len(exported)} of the manifest are those the revisions "
                                  "recorded"]
    return out + wrong[:MAX_LISTED] + ([f"  ... and {len(wrong) - MAX_LISTED} more"] if len(wrong) > MAX_LISTED
                                       else []), len(wrong)


def _fixed_check(manifest: dict, site: Site, fixed: list[FixedValue]) -> tuple[list[str], int | None]:
    """The manifest's fixed values (an emission factor, a default value and its source), which the recomputation
    takes as given, against what ``site.json`` and this code's methodology defaults give, when every revision
    says it was computed with both (its ``config_hash`` and ``defaults_hash``); else they can be checked only
    against the ledger (``--ledger``): said so. The lines and how many differ (``None``: not compared)."""
    now = versions(site)
    revisions = [rev for rev in manifest.get("revisions") or [] if isinstance(rev, dict)]
    other = [str(rev.get("revision")) for rev in revisions
             if (rev.get("config_hash"), rev.get("defaults_hash")) != (now["config_hash"], now["defaults_hash"])]
    if other or not revisions:
        return [f"fixed values: NOT compared with {SITE_SETTINGS} and the methodology's defaults: revision(s) "
                f"{', '.join(other) or 'none'} of the manifest were computed with other settings or defaults; "
                "compare them with the ledger (--ledger)"], None
    given = {f.key: f.to_dict() for f in from_config(site, PeriodProcessor(site).spec)}
    exported = {f.key: f.to_dict() for f in fixed}
    wrong = [f"  manifest.json fixed_parameters {key}: exported {exported.get(key, 'none')}, {SITE_SETTINGS} and "
             f"the methodology's defaults give {given.get(key, 'none')}"
             for key in sorted(set(given) | set(exported)) if given.get(key) != exported.get(key)]
    return [f"fixed values: {len(exported)} in the manifest, compared with what {SITE_SETTINGS} and the "
            "methodology's defaults give" + ("" if wrong else ": all equal")] + wrong[:MAX_LISTED], len(wrong)


def _custody_entry(manifest: dict, window: tuple[dt.datetime, dt.datetime], held: dict) -> dict:
    """The manifest's ``custody`` entry (``custody_folder.write_custody``) as the folder shows it: its
    messages, keys, findings and chains counted by ``check_custody`` (``held``), the reading window; of the
    chain ends not witnessed, the manifest's list (``check_custody`` compares it with those it found)."""
    start, end = (t.isoformat() for t in window)
    witnesses = _section(_section(manifest, "custody"), "witnesses")
    return {"signed_messages": held["signed_messages"], "from": start, "to": end,
            "keys": held["keys"].get(manifest.get("site"), []), "findings": held["findings"],
            "witnesses": {"start": start, "end": end, "chains": held["chains"],
                          "not_witnessed": witnesses.get("not_witnessed", [])}}


def _remade(folder: Path, manifest: dict, site: Site, result: Recomputed, fixed: list, custody: dict,
            store: SqliteStore) -> tuple[list[str], int | None]:
    """The summary pages, the workbook, ``daily_values.csv``, ``completeness.csv``, the raw readings (their text,
    from the verified readings in ``store``) and the manifest made again as the export makes them, from the
    recomputation (``period_figures.assemble`` of its months; of each month's revision only what the manifest
    alone says: its number, creation, the versions it was computed with and its sign-off; the manifest's fixed
    values, configuration changes and simulated flag; ``custody``: the custody entry as the folder shows it),
    compared byte
    for byte: whatever they show beyond what
    ``_compare`` reads (a figure hidden or moved by CSS, a hidden sheet or row, a number format, a comment)
    then differs. The lines, and how many of them differ; ``None`` when they cannot be made again (made by
    another exporter, or a revision by other processing code, as the manifest names them): said so."""
    ours, theirs = exporter_version(), manifest.get("exporter")
    recorded = {rev.get("month"): rev for rev in manifest.get("revisions", []) if isinstance(rev, dict)}
    other = [] if theirs == ours else [f"the export names exporter {theirs!r}, this is {ours!r}"]
    other += [f"{month}: revision {rev.get('revision')} names processing code {rev.get('code_version')!r}, this is "
              f"{code_version()!r}" for month, rev in sorted(recorded.items(), key=str)
              if month in result.results and rev.get("code_version") != code_version()]
    if other:
        return [f"files made again: NOT DONE: {'; '.join(other)}: {', '.join(REMADE)} are compared only in the "
                "figures, statuses, reasons and input hashes above"], None
    try:
        figures = assemble(PeriodProcessor(site), _revisions(site, result, recorded), *_period(manifest), fixed,
                           [str(line) for line in manifest["config_changes"]])
        # simulated readings are marked in the store, not signed (a gateway never sends the mark): the manifest's word
        figures.simulated = manifest.get("simulated") is True
        names = file_names(figures.name)
        made = {name: render(figures, names, custody, lang).encode("utf-8")
                for lang, name in LANGUAGES.items()}
        with tempfile.TemporaryDirectory(prefix="jcm-verify-") as tmp:
            made[names["workbook"]] = write_workbook(figures, Path(tmp) / "w.xlsx").read_bytes()
            made[names["daily_csv"]] = write_daily_values(figures, Path(tmp) / "d.csv").read_bytes()
            made[names["completeness_csv"]] = write_completeness(figures, Path(tmp) / "c.csv").read_bytes()
            # compressed by a library whose release may change its bytes, not its text: the text is compared
            raw = _gzip_difference(names["raw_csv"], folder / names["raw_csv"],
                                   write_raw_readings(figures, store, Path(tmp) / "r.csv.gz"))
            # what only the manifest says (its files and dead letters entries) is checked apart
            made["manifest.json"] = write_manifest(figures, manifest["files"], Path(tmp) / "m.json",
                                                   custody, manifest["dead_letters"]).read_bytes()
    # a manifest edited beyond what an export writes
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
        return [f"files made again: cannot: manifest.json: its revisions, config_changes or custody are not as an "
                f"export writes them ({type(exc).__name__}: {exc})"], 1
    wrong = [f"  {raw}"] if raw else []
    for name, data in made.items():
        try:
            exported = (folder / name).read_bytes()
        except OSError:
            continue  # the files check names it
        if exported != data and not (name == names["workbook"] and (ours := _zip_entries(data)) is not None
                                     and _zip_entries(exported, [entry[12] for entry in ours[1]]) == ours):
            differ = _json_difference("manifest.json", manifest, json.loads(data)) if name == "manifest.json" else None
            wrong.append(f"  {differ or _first_difference(name, exported, data)}")
    return [f"files made again from the recomputation: {', '.join([*made, names['raw_csv'] + ' (its text)'])}"
            + (": each byte for byte as exported (the raw readings: their text; the workbook: its zip's every "
               "byte but its members' compressed streams, their contents compared)" if not wrong else "")
            ] + wrong, len(wrong)


def _revisions(site: Site, result: Recomputed, recorded: dict) -> list[tuple[Revision, tuple | None]]:
    """Each month recomputed as a revision with its sign-off, for ``assemble``: its figures, status and input
    hash (in the manifest's version) recomputed, the rest as the manifest says (the ledger is not in the export)."""
    picked = []
    for month, rec in result.results.items():
        rev = recorded.get(month)
        if rev is None:
            raise ValueError(f"no revision of {month}")
        _ledger_kind(rev)
        version = rev.get("input_hash_version", 1)
        hashes, status = result.months[month]
        s = rec["summary"]
        revision = Revision(0, site.site, month, rev["revision"], rev["created"], status, s["ER"], s["ER_unrounded"],
                            bool(s["provisional"]), hashes.get(version, rev.get("input_hash")), rev["code_version"],
                            rec, False, rev["defaults_hash"], rev["config_hash"], version)
        picked.append((revision, (rev["revision"], rev["signed_by"], rev["signed_at"]) if rev["signed_off"] else None))
    return picked


def _ledger_kind(rev: dict) -> None:
    """``ValueError`` unless the revision's number and times are of the kinds a ledger records (a whole number
    from 1, times in ISO 8601 with their zone): the files are made again with them as the manifest gives them,
    so any text there (markup, which the pages show as it is: a figure hidden, another shown) would be made
    again alike."""
    if type(rev["revision"]) is not int or rev["revision"] < 1:
        raise ValueError(f"the revision of {rev['month']}: revision {rev['revision']!r} is not a revision number")
    for key in ("created", "signed_at") if rev["signed_off"] else ("created",):
        try:
            if dt.datetime.fromisoformat(rev[key]).tzinfo is None:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"the revision of {rev['month']}: {key} {rev[key]!r} is not a time in ISO 8601 with its "
                             "zone") from None


def _period(manifest: dict) -> tuple[dt.date, dt.date]:
    period = _section(manifest, "period")
    return _date(period, "first"), _date(period, "last")


def _json_difference(where: str, exported: object, made: object) -> str | None:
    """The first member (``revisions[0].ER``) whose value differs between two parsed JSON values; None
    when they are equal (then the bytes differ: ``_first_difference``)."""
    if isinstance(exported, dict) and isinstance(made, dict):
        for key in sorted(set(exported) | set(made)):
            if key not in made or key not in exported:
                return (f"{where}.{key}: exported {exported.get(key, 'none')!r}, made again from the recomputation "
                        f"{made.get(key, 'none')!r}")
            if found := _json_difference(f"{where}.{key}", exported[key], made[key]):
                return found
        return None
    if isinstance(exported, list) and isinstance(made, list) and len(exported) == len(made):
        return next((found for i, (a, b) in enumerate(zip(exported, made))
                     if (found := _json_difference(f"{where}[{i}]", a, b))), None)
    if exported == made and type(exported) is type(made):
        return None
    return f"{where}: exported {exported!r}, made again from the recomputation {made!r}"


def _zip_entries(data: bytes, sizes: list[int] | None = None) -> tuple | None:
    """What a zip (the workbook) holds, its members' compressed streams aside (deflate's output depends on
    the zlib Python is linked with, zlib-ng on some systems, not on what it compresses): each entry of its
    directory, every field but the compressed size, as its directory and its local header give it, with its
    content; and its comment. None when it is not a readable zip or holds a byte no entry accounts for
    (between, before or after them: what a reader of the stream of local entries may take for one), or whose
    entries are not of ``sizes`` (unpacked: a member of a hostile zip is not unpacked beyond it)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if sizes is not None and [info.file_size for info in z.infolist()] != sizes:
                return None
            at, entries, directory = 0, [], 0
            for info in z.infolist():
                head = data[at:at + 30]
                if info.header_offset != at or len(head) < 30 or head[:4] != b"PK\x03\x04" or info.flag_bits & 8:
                    return None  # not where the last ended, or sized after its data (not as the exporter writes)
                n, m = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
                local = data[at:at + 30 + n + m]
                entries.append((info.filename, info.date_time, info.compress_type, info.create_system,
                                info.create_version, info.extract_version, info.flag_bits, info.internal_attr,
                                info.external_attr, info.extra, info.comment, info.CRC, info.file_size,
                                local[4:18], local[22:], z.read(info)))
                at += 30 + n + m + info.compress_size
                directory += 46 + len(info.filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")) \
                    + len(info.extra) + len(info.comment)
            if at != z.start_dir or len(data) != at + directory + 22 + len(z.comment):
                return None
            return z.comment, entries
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, EOFError, zlib.error, UnicodeError):
        return None


def _gzip_difference(name: str, exported: Path, made: Path) -> str | None:
    """Where the text of ``exported`` (gzip) first differs from ``made``'s, read a MiB at a time (a file
    that unpacks to much more is read no further than ``made``'s length); None if it does not."""
    try:
        with gzip.open(exported) as a, gzip.open(made) as b:
            line = 1
            while True:
                x, y = a.read(1 << 20), b.read(1 << 20)
                if x != y:
                    at = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
                    start = x.rfind(b"\n", 0, at) + 1
                    shown = [t[start:t.find(b"\n", at) if b"\n" in t[at:] else at + 80][:160].decode("utf-8", "replace")
                             for t in (x, y)]
                    line += x.count(b"\n", 0, start)
                    return (f"{name} (its text) line {line}: exported {shown[0]!r}, made again from the "
                            f"recomputation {shown[1]!r}")
                if not x:
                    return None
                line += x.count(b"\n")
    except (OSError, EOFError, zlib.error) as exc:
        return f"{name}: cannot read its text: {exc}"


def _first_difference(name: str, exported: bytes, made: bytes) -> str:
    """Where ``name`` as exported first differs from it made again: the zip member of a workbook (its sheets
    first, each by its name), the line and the text around the first character that differs."""
    if name.endswith(".xlsx"):
        try:
            with zipfile.ZipFile(io.BytesIO(exported)) as a, zipfile.ZipFile(io.BytesIO(made)) as b:
                theirs, ours = set(a.namelist()), set(b.namelist())
                # the sheets as written, in order: xl/worksheets/sheet<n>.xml
                sheets = map(unescape, re.findall(r'<sheet [^>]*name="([^"]*)"', b.read("xl/workbook.xml").decode()))
                titles = {f"xl/worksheets/sheet{i}.xml": f" (sheet {title})" for i, title in enumerate(sheets, 1)}
                for member in sorted(theirs | ours, key=lambda m: (not m.startswith("xl/worksheets/"), m)):
                    if member not in ours:
                        return f"{name}: {member}: in the export, not made again (added)"
                    if member not in theirs:
                        return f"{name}: {member}{titles.get(member, '')}: made again, not in the export (removed)"
                    if (was := a.read(member)) != (now := b.read(member)):
                        return _first_difference(f"{name}: {member}{titles.get(member, '')}", was, now)
                return f"{name}: differs in its zip layout (members equal)"
        except (zipfile.BadZipFile, OSError, RuntimeError, KeyError, UnicodeDecodeError) as exc:
            return f"{name}: not the workbook made again (not a readable zip: {exc})"
    theirs, ours = exported.decode("utf-8", "replace").split("\n"), made.decode("utf-8", "replace").split("\n")
    n = next((i for i, (x, y) in enumerate(zip(theirs, ours)) if x != y), min(len(theirs), len(ours)))
    x, y = (lines[n] if n < len(lines) else "" for lines in (theirs, ours))
    at = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    cut = max(0, at - 40)
    return (f"{name} line {n + 1}: exported {'…' * bool(cut)}{x[cut:at + 80]!r}, made again from the recomputation "
            f"{'…' * bool(cut)}{y[cut:at + 80]!r}")


def _charts(folder: Path, manifest: dict, result: Recomputed) -> tuple[list[str], int]:
    """Whether the manifest lists each chart the export draws (``CHARTS``), and each is a whole PNG
    (``_png_problem``) of the size the export draws it for the recomputed period (``chart_sizes.pixels``: either
    of two a pixel apart where matplotlib's releases make it so): what it shows is checked by its SHA-256 alone
    (drawn by matplotlib, whose bytes depend on its release and the fonts, which verify does not load). The
    lines and how many charts are not so."""
    names = file_names("")
    wrong, sizes = [], []
    for role, inches in CHARTS.items():
        name, drawn = names[role], pixels(inches(result))
        sizes.append(f"{name} {_sizes(drawn)}")
        if name not in manifest["files"]:
            wrong.append(f"  {name}: a chart the export draws, not listed in manifest.json")
            continue
        try:
            data = (folder / name).read_bytes()
        except OSError:
            continue  # the files check names it
        if problem := _png_problem(data, drawn):
            wrong.append(f"  {name}: {problem}")
    return [f"charts: {', '.join(names[role] for role in CHARTS)}" + ("" if wrong else
            f": each listed, a whole PNG of the size the export draws it ({'; '.join(sizes)} pixels)")] + wrong, \
        len(wrong)


def _sizes(sizes: list[tuple[int, int]]) -> str:
    return " or ".join(f"{width} x {height}" for width, height in sizes)


def _png_problem(data: bytes, sizes: list[tuple[int, int]]) -> str | None:
    """What keeps ``data`` from being a chart's PNG of one of ``sizes`` (width, height) [px] (None: nothing): its
    signature, each chunk whole (its CRC), IHDR first with such a size and ``PNG_KIND``, IEND last with no
    byte after it, and its image data inflating to exactly its rows (each a filter byte, 4 bytes a pixel)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return "not a PNG (no PNG signature)"
    at, kinds, header, image = 8, [], b"", []
    while at < len(data) and (not kinds or kinds[-1] != b"IEND"):
        n = int.from_bytes(data[at:at + 4], "big")
        kind, body, crc = data[at + 4:at + 8], data[at + 8:at + 8 + n], data[at + 8 + n:at + 12 + n]
        if len(crc) != 4 or zlib.crc32(kind + body) != int.from_bytes(crc, "big"):
            return f"not a whole PNG: its chunk {kind!r} at byte {at} is cut short or damaged (CRC)"
        kinds.append(kind)
        header = body if kind == b"IHDR" else header
        image += [body] if kind == b"IDAT" else []
        at += 12 + n
    if kinds[:1] != [b"IHDR"] or kinds[-1:] != [b"IEND"] or len(header) != 13:
        return "not a whole PNG: no IHDR first or no IEND last"
    if at != len(data):
        return f"{len(data) - at} byte(s) after the PNG's end"
    width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    if (width, height) not in sizes:
        return f"{width} x {height} pixels, the export draws it {_sizes(sizes)}"
    if header[8:] != PNG_KIND:
        return f"not an 8-bit RGBA PNG as the export draws (IHDR {header[8:].hex()})"
    rows = height * (1 + 4 * width)
    inflate = zlib.decompressobj()
    try:
        pixels_data = inflate.decompress(b"".join(image), rows + 1)  # no more than its rows are unpacked
    except zlib.error as exc:
        return f"its image data cannot be unpacked: {exc}"
    if len(pixels_data) != rows or not inflate.eof or inflate.unused_data or max(pixels_data[::1 + 4 * width]) > 4:
        return f"its image data are not the {height} rows of {width} pixels its IHDR says"
    return None


def _unchecked(manifest: dict) -> list[str]:
    """The files checked by their SHA-256 alone: a verifier reading them reads what the exporter wrote."""
    listed = [name for name in HASHED_ONLY if name in manifest.get("files", {})]
    return ["not checked beyond their SHA-256 (what the exporter wrote, not recomputed): "
            + "; ".join(f"{name} ({HASHED_ONLY[name]})" for name in listed)] if listed else []


def _exporters_word(ledger: bool) -> str:
    """The line naming what the export says that verify cannot check from the folder (``ledger``: what
    ``--ledger`` compares is left out of it)."""
    return ("not checked (the exporter's word: in no signed message, not recomputed): the settings of "
            f"{SITE_SETTINGS} that no figure depends on, which the pages and the workbook show (the site's name, "
            "project, country, location, commissioning date, gateway, MQTT and outbox settings, the devices' "
            f"connections); which messages the collector refused, and how many (the rows of {DEAD_LETTERS} and the "
            "manifest's count: no key signs the list, so a letter taken out with the count lowered is not seen); "
            "config_changes (the settings, default values and code of the day of the export against each revision's: "
            "that day's are not in the export)"
            + ("" if ledger else "; the simulated flag (simulated readings are marked in the store, not signed: "
                                 "--ledger compares it with the revisions')"))


def _dead_letters(folder: Path, manifest: dict, site: Site) -> tuple[list[str], str | None]:
    """The lines on the messages the collector refused in the period (``dead_letters.csv.gz``), and a problem
    unless the file is as the export writes the period's letters: its first line saying SIMULATED DATA as the
    manifest says simulated, its header, each row read back into a letter (``contract.store.DeadLetter``) and
    written as the export writes one (``csv_files.dead_letter_row``), received within the period's bounds on
    a topic of the site, oldest first (then by SHA-256), with the first KiB of a payload of its size and,
    when that is the whole payload, of its SHA-256; as many as the manifest says. Each wrong row is named by
    its line. The reasons are the collector's word: a letter's payload and the state it was refused in are
    not in the export (the file's bytes are checked with the others)."""
    entry = manifest.get("dead_letters")
    if not isinstance(entry, dict):
        return ["dead letters: not in this export (made before exports listed them)"], None
    name, count = entry.get("file"), entry.get("count")
    if name != DEAD_LETTERS:  # the export writes that name: any other could lead outside the folder
        return [f"dead letters: the manifest names {name!r}, not {DEAD_LETTERS}"], f"dead letters file {name!r}"
    start, end = local_bounds(site, *_period(manifest))
    prefix = f"{topics.ROOT}/{site.site}/"
    wrong: list[str] = []
    rows = whole = 0
    try:
        with gzip.open(folder / name, "rt", encoding="utf-8", newline="") as f:
            lines = iter(f)
            first = next(lines, "")
            noted = first == SIMULATED_NOTE  # the note a simulated export's text files begin with
            if noted != (manifest.get("simulated") is True):
                wrong.append(f"{name} line 1: {'says' if noted else 'does not say'} SIMULATED DATA, the manifest's "
                             f"simulated is {manifest.get('simulated')!r}")
            reader = csv.reader(lines if noted else chain([first], lines))
            header = next(reader, None)
            if header != DEAD_LETTER_COLUMNS:
                wrong.append(f"{name} line {1 + noted}: header {header!r}, the export writes {DEAD_LETTER_COLUMNS!r}")
            after = None
            for row in reader:
                rows += 1
                letter, why = _dead_letter(row, start, end, prefix, after)
                if letter is not None:
                    after = (letter.received, letter.sha256)
                    whole += letter.size <= KEPT_PAYLOAD
                if why:
                    wrong.append(f"{name} line {reader.line_num + noted}: {why}")
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, zlib.error) as exc:
        return [f"dead letters: {name}: cannot read: {exc}"], f"{name} unreadable"
    out = [f"dead letters: {rows} message(s) on the site's topics refused by the collector in the period, each with "
           f"why in {name}" + ("" if wrong else
                               ": each row as the export writes it, received in the period on a topic of the site, "
                               f"oldest first, its payload's start of its size ({whole} whole, of their SHA-256); "
                               "why each was refused is the collector's word")]
    out += [f"  {line}" for line in wrong[:MAX_LISTED]]
    out += [f"  ... and {len(wrong) - MAX_LISTED} more"] if len(wrong) > MAX_LISTED else []
    problems = [f"{len(wrong)} dead letter problem(s)"] if wrong else []
    if rows != count:
        out.append(f"  {name} lists {rows} dead letter(s), the manifest says {count!r}")
        problems.append(f"{name} lists {rows} dead letter(s), the manifest {count!r}")
    return out, ", ".join(problems) or None


def _dead_letter(row: list[str], start: dt.datetime, end: dt.datetime, prefix: str,
                 after: tuple | None) -> tuple[DeadLetter | None, str | None]:
    """A row of ``dead_letters.csv.gz`` as a letter (None if it is not one), and what is wrong with it (None:
    nothing): a row the export would not write so, a letter received outside ``start``..``end`` or on a topic
    not under ``prefix``, a payload start not of its size and SHA-256, one before the row above (``after``:
    its time and SHA-256)."""
    if len(row) != len(DEAD_LETTER_COLUMNS):
        return None, f"{len(row)} field(s), not the {len(DEAD_LETTER_COLUMNS)} of {', '.join(DEAD_LETTER_COLUMNS)}"
    received, topic, size, sha256, reason, payload = row
    try:
        at = dt.datetime.fromisoformat(received)
        if at.tzinfo is None:
            raise ValueError(f"received {received!r} has no zone")
        letter = DeadLetter(at, topic, base64.b64decode(payload, validate=True), reason, int(size), sha256)
    except (ValueError, binascii.Error) as exc:
        return None, f"not a dead letter: {exc}"
    why = [f"{column} {given!r}, the export writes that letter's {made!r}"
           for column, given, made in zip(DEAD_LETTER_COLUMNS, row, dead_letter_row(letter)) if given != made]
    if not start <= letter.received < end:
        why.append(f"received {received}, outside the period ({start.isoformat()} to {end.isoformat()}, exclusive)")
    if not letter.topic.startswith(prefix):
        why.append(f"topic {letter.topic!r}, not one of the site's ({prefix}...)")
    if re.fullmatch("[0-9a-f]{64}", letter.sha256) is None or letter.size < 0:
        why.append(f"size {size!r} and sha256 {sha256!r}: not a size and a SHA-256")
    elif len(letter.payload) != min(letter.size, KEPT_PAYLOAD):
        why.append(f"payload_start_base64 holds {len(letter.payload)} byte(s): the store keeps the first "
                   f"{min(letter.size, KEPT_PAYLOAD)} of a payload of {letter.size}")
    elif letter.size <= KEPT_PAYLOAD and hashlib.sha256(letter.payload).hexdigest() != letter.sha256:
        why.append(f"the payload's SHA-256 is {hashlib.sha256(letter.payload).hexdigest()}, the row says {sha256}")
    if after is not None and (letter.received, letter.sha256) < after:
        why.append("not in order: before the row above (by time, then SHA-256)")
    return letter, "; ".join(why) or None


def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    manifest = read_json(path, str(path))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{path}: no 'files' object: not the manifest of an export")
    return manifest


def _section(manifest: dict, key: str) -> dict:
    """A member of the manifest that should be an object; ``{}`` (so: mismatches) when it is not."""
    value = manifest.get(key)
    return value if isinstance(value, dict) else {}


def _read_spans(manifest: dict) -> list[tuple[str, str]]:
    """The revisions' ``read_span``s (they widen the window of readings recomputed)."""
    revisions = manifest.get("revisions")
    spans = []
    for i, rev in enumerate(revisions if isinstance(revisions, list) else []):
        span = rev.get("read_span") if isinstance(rev, dict) else None
        if span is None:
            continue
        try:
            if len(span) != 2 or any(dt.datetime.fromisoformat(t).tzinfo is None for t in span):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"manifest.json: revisions[{i}].read_span: not two ISO 8601 times with their "
                             "zone") from None
        spans.append(tuple(span))
    return spans


def _witness_claims(manifest: dict) -> dict[tuple, str] | None:
    """Why the export found no witness, by (head or tail, gateway, epoch), as its manifest
    says; ``None`` when the manifest says nothing of witnesses (an export made before it
    looked for them)."""
    witnesses = _section(manifest, "custody").get("witnesses")
    if witnesses is None:
        return None
    listed = witnesses.get("not_witnessed") if isinstance(witnesses, dict) else None
    return {(c["end"], c["gateway"], c["epoch"]): str(c.get("why")) for c in listed
            if isinstance(c, dict) and all(isinstance(c.get(k), str) for k in ("end", "gateway", "epoch"))} \
        if isinstance(listed, list) else {}


def _fixed(manifest: dict) -> list:
    try:
        return from_record(manifest.get("fixed_parameters", []))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"manifest.json: fixed_parameters: not the fixed values an export records: {exc}") from None


def _date(period: dict, key: str) -> dt.date:
    try:
        return dt.date.fromisoformat(period[key])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"manifest.json: period.{key} missing or not a date") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _file_problems(folder: Path, manifest: dict) -> list[str]:
    """Files missing, altered or unlisted: against the manifest and against SHA256SUMS."""
    listed = {name: entry.get("sha256") if isinstance(entry, dict) else None
              for name, entry in manifest["files"].items()}
    sizes = {name: entry.get("bytes") if isinstance(entry, dict) else None for name, entry in manifest["files"].items()}
    problems = []
    sums: dict[str, str] = {}
    try:
        text = (folder / "SHA256SUMS").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"SHA256SUMS: cannot read: {getattr(exc, 'strerror', None) or exc}")
        text = ""
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            problems.append(f"SHA256SUMS line {n}: not '<sha256>  <file>'")
            continue
        sums[name] = digest
    present = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    for name in sorted(set(listed) | set(sums) | {"manifest.json"}):
        path = present.get(name)
        if path is None:
            problems.append(f"{name}: missing (listed in {'manifest.json' if name in listed else 'SHA256SUMS'})")
            continue
        actual = _sha256(path)
        if name in listed and listed[name] != actual:
            problems.append(f"{name}: SHA-256 {actual} is not the manifest's {listed[name]}")
        elif name in listed and (sizes[name] != path.stat().st_size or type(sizes[name]) is not int):
            problems.append(f"{name}: {path.stat().st_size} bytes, the manifest says {sizes[name]!r}")
        if name not in sums:
            problems.append(f"{name}: not in SHA256SUMS")
        elif sums[name] != actual:
            problems.append(f"{name}: SHA-256 {actual} is not SHA256SUMS' {sums[name]}")
        if name not in listed and name != "manifest.json":
            problems.append(f"{name}: not in manifest.json")
    for name in sorted(set(present) - set(listed) - set(sums) - {"manifest.json", "SHA256SUMS"}):
        problems.append(f"{name}: not listed in manifest.json nor SHA256SUMS (a file added to the export)")
    known = _known(folder)
    for name in sorted((set(listed) | set(sums)) - {"manifest.json", "SHA256SUMS"}):  # one unlisted is named above
        if not known(name):
            problems.append(f"{name}: not a file an export writes: nothing checks what it says (a file added to "
                            "the export and listed)")
    return problems


def _known(folder: Path):
    """Whether a file (by its path in the folder) is one an export writes, each of which this check reads,
    recomputes or names as checked by its SHA-256 alone (``HASHED_ONLY``); the keys' PEM files those of
    ``custody/keys.json`` (``pem_problems`` compares them)."""
    try:
        keys = json.loads((folder / "custody" / "keys.json").read_text(encoding="utf-8"))
        ids = {k["id"] for k in keys if isinstance(k, dict) and isinstance(k.get("id"), str)}
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        ids = set()  # the custody check names keys.json
    fixed = {*LANGUAGES.values(), *HASHED_ONLY, DEAD_LETTERS, SITE_SETTINGS, *file_names("").values(),
             "custody/keys.json", f"custody/{FINDINGS}", *(f"custody/keys/{i}.pem" for i in ids)}
    return lambda name: (name in fixed or re.fullmatch(r"monitoring_[^/]+\.xlsx", name) is not None
                         or re.fullmatch(r"custody/messages/[^/]+\.jsonl\.gz", name) is not None)


def check_custody(folder: Path, store, window: tuple[dt.datetime, dt.datetime] | None = None,
                  claims: dict[tuple, str] | None = None, witnessed: bool = False,
                  jobs: int = 1) -> tuple[list[str], list[str], int, list[str], dict]:
    """Check the custody folder, writing the readings of verified messages (those stamped in
    ``window``, when given), their messages and the findings to ``store``; what is wrong
    (nothing when it is whole), the lines, how many readings were written, each chain end
    not witnessed (``witnessed``, with ``window``: its last verified message stamped before
    the window's end, or its first at or after its start without beginning its chain;
    ``claims``: the manifest's reasons, ``_witness_claims``), and what the folder holds as the
    manifest's ``custody`` entry counts it (its messages, keys by site, findings and chains);
    ``jobs``: the processes that check signatures."""
    keys, lines = read_folder(folder)
    path = folder / "custody" / FINDINGS
    findings, custody_findings = read_findings(path) if path.exists() else ([], [])
    for f in findings:
        store.record_finding(f)
    for f in custody_findings:
        store.record_custody_finding(f)
    refused: list[str] = []
    reasons: Counter[str] = Counter()
    refused_seqs: dict[tuple, dict[int, str]] = {}  # what a gap may be explained by
    chains: dict[tuple, list] = {}  # chain -> [messages, lowest seq, highest seq, their verdicts]
    batch: list[Reading] = []
    signed: list[SignedMessage] = []
    n = written = covered = outside = 0

    def flush():
        nonlocal written
        store.write(batch, messages=signed)
        written += len(batch)
        batch.clear()
        signed.clear()

    def verified():
        nonlocal n, covered, outside
        for line, v in verify_chained(lines, keys, raw=lambda line: line.message, jobs=jobs):
            n += 1
            if v.ok:
                covered += is_covered(line.message)
                seq, ts = v.reading.seq, v.reading.ts
                c = chains.setdefault(v.chain, [0, seq, seq, v, v])
                c[0] += 1
                if seq < c[1]:
                    c[1], c[3] = seq, v
                if seq >= c[2]:
                    c[2], c[4] = seq, v
                yield v
                if window is not None and not window[0] <= ts < window[1]:
                    outside += 1
                    continue
                batch.append(v.reading)
                signed.append(SignedMessage.verified(line.message, v))
                if len(batch) >= BATCH:
                    flush()
                continue
            reasons[v.kind] += 1
            where = f"{line.where}" + (f" {'/'.join(v.chain)} seq {v.reading.seq}" if v.reading else "")
            if v.reading:
                refused_seqs.setdefault(v.chain, {})[v.reading.seq] = v.reason
            if len(refused) < MAX_LISTED:
                refused.append(f"  {where}: {v.reason}")

    breaks = chain_breaks(verified())
    flush()
    out = [f"keys: {sum(len(k) for k in keys.values())} of {len(keys)} site(s): "
           + ", ".join(f"{k.id} ({site}, fingerprint {k.fingerprint})" for site, ks in sorted(keys.items())
                       for k in ks),
           f"messages: {n}, signatures verified: {n - sum(reasons.values())}"
           + (f" ({covered} by the signature of a later message of their chain)" if covered else "")
           + f", refused: {sum(reasons.values())}"]
    pems = pem_problems(folder, keys)
    out += [f"key file {p}" for p in pems]
    out += refused
    if sum(reasons.values()) > len(refused):
        out.append(f"  ... and {sum(reasons.values()) - len(refused)} more: "
                   + ", ".join(f"{r}: {c}" for r, c in reasons.most_common()))
    by_chain: dict[tuple, list] = {}
    for b in breaks:
        by_chain.setdefault(b.chain, []).append(b)
    unwitnessed: list[str] = []
    inside: dict[str, list[dt.timedelta]] = {"head": [], "tail": []}  # how far into the window each is
    bounds = window if witnessed else None
    for chain, (count, low, high, first, last) in sorted(chains.items()):
        name = "/".join(chain)
        out.append(f"chain {name}: seq {low}..{high}, {count} verified message(s)")
        if bounds is not None and first.reading.ts >= bounds[0] and first.prev != GENESIS:
            inside["head"].append(first.reading.ts - bounds[0])
            unwitnessed.append(f"{name} before seq {low}, {span(inside['head'][-1])} after the reading window's start")
            out.append(f"  head not witnessed: its first message, seq {low}, is stamped "
                       f"{first.reading.ts.isoformat()}, {span(inside['head'][-1])} after the reading window's start, "
                       "does not begin its chain, and no earlier message of the chain is in the export: its readings "
                       "before that time cannot be shown complete")
            out.append(f"  {_claim(('head', *chain[1:]), claims)}")
        if bounds is not None and last.reading.ts < bounds[1]:
            inside["tail"].append(bounds[1] - last.reading.ts)
            unwitnessed.append(f"{name} after seq {high}, {span(inside['tail'][-1])} before the reading window's end")
            out.append(f"  tail not witnessed: its last message, seq {high}, is stamped {last.reading.ts.isoformat()}, "
                       f"{span(inside['tail'][-1])} before the reading window's end, and no later message of the chain "
                       "is in the export: its readings after that time cannot be shown complete")
            out.append(f"  {_claim(('tail', *chain[1:]), claims)}")
        listed = by_chain.get(chain, [])
        for b in listed[:MAX_LISTED]:
            out.append(f"  {b}{_cause(b, refused_seqs.get(chain, {}), findings, custody_findings)}")
        if len(listed) > MAX_LISTED:
            out.append(f"  ... and {len(listed) - MAX_LISTED} more: " + ", ".join(
                f"{k}: {c}" for k, c in Counter(b.kind for b in listed[MAX_LISTED:]).most_common()))
    if bounds is not None:
        heads, tails = inside["head"], inside["tail"]
        out.append(f"witnesses: {len(chains) - len(heads)} of {len(chains)} chain(s) witnessed before the reading "
                   f"window's start ({bounds[0].isoformat()}; or begun in it), {len(chains) - len(tails)} after its "
                   f"end ({bounds[1].isoformat()}): a chain's first verified message stamped before the start or "
                   "beginning its chain, its last at or after the end"
                   + (f"; {len(heads)} head(s) not (longest {span(max(heads))} after the start)" if heads else "")
                   + (f"; {len(tails)} tail(s) not (longest {span(max(tails))} before the end)" if tails else ""))
    if outside:
        out.append(f"readings: {outside} verified message(s) stamped outside the window the recomputation reads "
                   f"({window[0].isoformat()} .. {window[1].isoformat()}: witnesses and covering messages) "
                   "are not readings of the figures")
    broken = {(*b.chain, s) for b in breaks for s in (b.first_seq, b.last_seq)}
    for f in custody_findings:
        # found on arrival, and not a break of these messages (e.g. the conflicting message was refused)
        if (f.site, f.gateway, f.epoch) in chains and (f.site, f.gateway, f.epoch, f.seq) not in broken:
            out.append(f"custody finding {f.site}/{f.gateway}/{f.epoch} seq {f.seq}: {f.kind}: {f.detail}")
    for f in findings:
        if f.kind == "epoch":
            out.append(f"sequence finding {f.site}/{f.gateway}: new epoch {f.epoch} after seq {f.first} of "
                       f"{f.previous or 'an earlier epoch'}: {f.cause}")
        elif f.kind in ("jump", "churn", "holes"):  # seqs the collector did not follow one by one
            out.append(f"sequence finding {f.site}/{f.gateway}: {f.kind} at seq {f.first} of epoch {f.epoch}: {f.cause}")
    ok = not reasons and not breaks and not pems and n > 0
    problems = [f"{len(pems)} key file(s) not as keys.json"] if pems else []
    problems += [f"{sum(reasons.values())} message(s) refused"] if reasons else []
    problems += [f"{len(breaks)} chain break(s)"] if breaks else []
    problems += ["no messages"] if n == 0 else []
    out.append("custody: " + ("every signature verified, every chain whole" if ok else ", ".join(problems)))
    held = {"signed_messages": n, "findings": len(findings) + len(custody_findings), "chains": len(chains),
            "keys": {site: [{"id": k.id, "fingerprint": k.fingerprint} for k in ks] for site, ks in keys.items()}}
    return problems, out, written, unwitnessed, held


def _claim(end: tuple, claims: dict[tuple, str] | None) -> str:
    """What the manifest says of a chain end (head or tail, gateway, epoch) without a
    witness: unsigned, so never a proof."""
    if claims is None:
        return "the manifest says nothing of witnesses (an export made before exports carried them)"
    why = claims.get(end)
    if why is None:
        return ("the manifest does not list it as not witnessed, as the export would have: its "
                + ("earlier" if end[0] == "head" else "later")
                + " messages were removed from the export after it was made, or the manifest was edited")
    return f"the manifest's reason (unsigned: it explains, it proves nothing): {why}"


def _cause(b, refused: dict[int, str], findings: list[SequenceFinding], custody: list[CustodyFinding]) -> str:
    """Why a chain breaks there: messages refused in a gap, and the collector's findings."""
    site, gateway, epoch = b.chain
    causes = []
    if b.kind == "gap":
        causes += [f"refused there: {r}"
                   for r in sorted({r for s, r in refused.items() if b.first_seq <= s <= b.last_seq})]
        causes += [f"collector: seq {f.first}..{f.last}: {f.cause}" for f in findings
                   if f.kind in ("gap", "holes") and (f.site, f.gateway, f.epoch) == (site, gateway, epoch)
                   and f.first <= b.last_seq and f.last >= b.first_seq]
        # seqs beyond the gap the collector did not follow (a broken or hostile gateway)
        causes += [f"collector: seqs {f.first}..{f.last} not followed: {f.cause}" for f in findings
                   if (f.kind, f.site, f.gateway, f.epoch) == ("jump", site, gateway, epoch)
                   and f.first <= b.last_seq + 1 and f.last >= b.first_seq]
    causes += [f"collector: seq {f.seq}: {f.kind}: {f.detail}" for f in custody
               if (f.site, f.gateway, f.epoch) == (site, gateway, epoch) and b.first_seq <= f.seq <= b.last_seq]
    if causes:
        return f" ({'; '.join(causes)})"
    return " (no cause recorded: nothing refused there, no collector finding)" if b.kind == "gap" else ""


def _number(text) -> float:
    return math.nan if text in (None, "") else float(text)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _shown(value) -> str:
    """A figure as a line shows it: ``none`` for no figure."""
    return "none" if value is None else str(value)


def _in_workbook(a: float) -> float:
    """``a`` as a workbook holds it: 16 significant digits (how openpyxl writes a number);
    NaN (an empty cell) for NaN or an infinity, which Excel has not (``daily_values.csv``
    and the manifest hold them exactly)."""
    return float("%.16g" % a) if math.isfinite(a) else math.nan


def _compare(folder: Path, manifest: dict, site: Site, r: Recomputed) -> tuple[list[str], int]:
    """The lines comparing recomputed with exported figures, and how many differ."""
    wrong: list[str] = []
    recomputed = {(d.isoformat(), k): float(v) for d, k, v in r.daily[["day", "key", "value"]].itertuples(index=False)}
    exported = _daily_csv(folder / "daily_values.csv")
    workbook = _workbook(folder, manifest)
    for where, table, held in (("daily_values.csv", exported, float),
                               ("workbook sheet Daily", _daily_sheet(workbook), _in_workbook)):
        for day_key in sorted(set(recomputed) | set(table)):
            a, b = recomputed.get(day_key, math.nan), table.get(day_key)
            if b is None or not _same(held(a), b):
                wrong.append(f"  {where}: {day_key[1]} on {day_key[0]}: exported "
                             f"{'none' if b is None else repr(b)}, recomputed {a!r}")
    out = [f"  daily values: {len(recomputed)} recomputed, compared with daily_values.csv and the workbook's "
           f"sheet Daily" + ("" if wrong else ": all equal")]
    report = _report_sheet(workbook)
    c, figures = r.calc, _section(manifest, "figures")
    for key, total in sorted(r.totals.items()):
        value = _section(manifest, "parameters").get(key)
        exported = number(value)  # null: NaN; "Infinity"; or, written before strict JSON, the literals
        if exported is None or not _same(float(total), exported):
            wrong.append(f"  manifest.json parameters.{key}: exported {value!r}, recomputed {float(total)!r}")
        value = report.get(key)
        if c is None:  # a failed period's report shows its reason alone: no formula to give the total to
            differs = value is not None
        else:
            differs = value is None or not _same(_in_workbook(float(total)), value)
        if differs:
            wrong.append(f"  workbook Monitoring report {key}: exported {value!r}, recomputed "
                         + (f"{float(total)!r}" if c else f"none ({r.cannot})"))
    if c is None:
        out.append(f"  figures: none: {r.cannot}")
    # the period's status, what a reader sees first: its months' worst, as recomputed, failed or provisional
    status = period_status([s for _, s in r.months.values()], c) if r.months else "failed" if c is None else None
    why = f": {r.cannot}" if c is None else ""
    if status is not None and manifest.get("status") != status:
        wrong.append(f"  manifest.json status: exported {manifest.get('status')!r}, recomputed {status!r}{why}")
    given = _cannot_compute(workbook)
    if given != ([r.cannot] if r.cannot else []):
        wrong.append(f"  workbook Monitoring report reason: exported {'; '.join(given) or 'none'}, "
                     f"recomputed {r.cannot or 'none (the figures are computed)'}")
    for page in sorted(set(LANGUAGES.values()) - set(_section(manifest, "files"))):  # one listed is the files check's
        wrong.append(f"  {page}: not in the export (it has its summary in each language)")
    summaries = _summaries(folder)
    for page, (shown_status, given, shown, _) in summaries.items():
        if status is not None and shown_status != status:
            wrong.append(f"  {page} status: exported {shown_status!r}, recomputed {status!r}{why}")
        if given != ([printable(r.cannot)] if r.cannot else []):
            wrong.append(f"  {page} reason: exported {'; '.join(given) or 'none'}, "
                         f"recomputed {r.cannot or 'none (the figures are computed)'}")
        for name in FIGURES:
            mine = None if c is None else figure_text(name, getattr(c, name))
            if shown[name] != mine:
                wrong.append(f"  {page} {name}: exported {shown[name] or 'none'}, recomputed "
                             + (f"{mine}" if c else f"none ({r.cannot})"))
    for name in (*FIGURES, "ER_exact"):
        mine = None if c is None else getattr(c, name)
        out.append(f"  {name}: recomputed {_shown(mine)}, exported {_shown(figures.get(name))}")
        places = [(f"manifest.json figures.{name}", figures.get(name), float)]
        places += [(f"workbook Monitoring report {name}", report.get(name), _in_workbook)] if name in FIGURES else []
        for where, value, held in places:
            if mine is None:  # none recomputed: the export must claim none either (null: no figure)
                differs = value is not None
            elif name == "ER_exact":
                differs = str(value) != mine
            else:
                exported = None if value is None else number(value)
                differs = exported is None or not _same(held(float(mine)), exported)
            if differs:
                wrong.append(f"  {where}: exported {value!r}, recomputed "
                             + (f"{mine!r}" if c else f"none ({r.cannot})"))
    recorded = {rev.get("month"): rev for rev in manifest.get("revisions", []) if isinstance(rev, dict)}
    monthly = _monthly_sheet(workbook)
    now = versions(site)
    for month, (hashes, status) in sorted(r.months.items()):
        rev = recorded.get(month, {})
        differ = [what for what, key in (("site settings (site.json)", "config_hash"),
                                         (f"{site.methodology} default values", "defaults_hash"),
                                         ("processing code", "code_version")) if rev.get(key) != now[key]]
        if differ:  # not a mismatch by itself: it explains one
            out.append(f"  {month}: note: revision {rev.get('revision')} was computed with other "
                       f"{' and '.join(differ)} than this recomputation")
        # an export made before input hashes had versions names none: its revisions' are version 1
        version, recorded_hash = rev.get("input_hash_version", 1), rev.get("input_hash")
        known = type(version) is int and version in hashes
        same = known and recorded_hash == hashes[version]
        out.append(f"  {month}: input hash {'equal to' if same else 'NOT'} revision {rev.get('revision')}'s "
                   f"(version {version!r}), status {status} (revision: {rev.get('status')})")
        other = [v for v, h in hashes.items() if h == recorded_hash and v != version]
        if not known:
            wrong.append(f"  {month}: revision {rev.get('revision')}'s input hash is said to be of version {version!r}, "
                         f"which this code does not know (it knows {', '.join(map(str, HASH_VERSIONS))})")
        elif other:
            wrong.append(f"  {month}: revision {rev.get('revision')}'s input hash is the readings' hash in version "
                         f"{other[0]}, but the manifest says version {version}")
        elif not same:
            wrong.append(f"  {month}: the readings of the signed messages are not those revision "
                         f"{rev.get('revision')} was computed from (input hash {hashes[version]}, version {version}, "
                         f"recorded {recorded_hash}): readings stored unsigned, or messages or "
                         "findings missing, altered or refused")
        elif rev.get("status") != status:
            wrong.append(f"  {month}: status recomputed {status}, revision {rev.get('revision')} says {rev.get('status')}")
        places = [("workbook sheet Monthly", monthly.get(month, []))]
        places += [(page, claims.get(month, [])) for page, (*_, claims) in summaries.items()]
        for where, claims in places:
            if not claims:
                wrong.append(f"  {where}: {month}: no input hash shown")
            for shown_hash, shown_version in claims:
                known = type(shown_version) is int and shown_version in hashes  # True or 2.0 is no version
                if not known or shown_hash != hashes[shown_version]:
                    wrong.append(f"  {where}: {month}: input hash {shown_hash} of version {shown_version!r}, "
                                 "recomputed " + (hashes[shown_version] if known else "none (this code knows "
                                                  f"versions {', '.join(map(str, HASH_VERSIONS))})"))
    out += wrong[:MAX_LISTED]
    if len(wrong) > MAX_LISTED:
        out.append(f"  ... and {len(wrong) - MAX_LISTED} more difference(s)")
    return out, len(wrong)


def _daily_csv(path: Path) -> dict[tuple[str, str], float]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    rows = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
    out = {}
    try:
        for row in rows:
            key = row["parameter"] + (f"[{row['unit_id']}]" if row["unit_id"] else "")
            out[(row["day"], key)] = _number(row["value"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: line {rows.line_num}: {exc}") from None
    return out


def _sheet(workbook, name: str):
    try:
        return workbook[name]
    except KeyError:
        raise ValueError(f"workbook: no sheet '{name}'") from None


def _workbook(folder: Path, manifest: dict):
    names = [n for n in manifest["files"] if n.endswith(".xlsx") and "/" not in n]
    if len(names) != 1:
        raise ValueError("manifest.json: lists no workbook (.xlsx)" if not names else
                         f"manifest.json: lists {len(names)} workbooks")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return openpyxl.load_workbook(folder / names[0], read_only=True)
    except Exception as exc:  # openpyxl raises many kinds on a damaged file
        raise ValueError(f"{names[0]}: not a readable workbook: {exc}") from None


def _daily_sheet(workbook) -> dict[tuple[str, str], float | None]:
    """The Daily sheet's values by (day, key); ``None`` for a cell that is not a number."""
    rows = list(_sheet(workbook, "Daily").iter_rows(values_only=True))
    top = next((i for i, row in enumerate(rows) if row and row[0] == "Day"), None)
    if top is None:
        raise ValueError("workbook sheet Daily: no header row starting 'Day'")
    keys = rows[top][1:]
    out = {}
    for row in rows[top + 2:]:
        if row[0] is None:
            continue
        day = row[0].date().isoformat() if hasattr(row[0], "date") else str(row[0])
        for key, value in zip(keys, row[1:]):
            out[(day, key)] = float(value) if isinstance(value, (int, float)) else math.nan if value is None else None
    return out


def _hash_version(shown) -> object:
    """A version as shown: a whole number as an int; none shown (a workbook or page made before
    versions) is version 1, which its hash is; anything else as it is, a version no code knows."""
    if shown is None or shown == "":
        return 1
    if type(shown) is int or (isinstance(shown, str) and shown.isascii() and shown.isdigit()):
        return int(shown)
    return shown


def _monthly_sheet(workbook) -> dict[str, list[tuple[str, object]]]:
    """The input hash and its version (``_hash_version``) that sheet Monthly shows for each month."""
    rows = list(_sheet(workbook, "Monthly").iter_rows(values_only=True))
    top = next((i for i, row in enumerate(rows) if row and row[0] == "Month" and "Input hash" in row), None)
    if top is None:
        raise ValueError("workbook sheet Monthly: no header row starting 'Month' with a column 'Input hash'")
    at = rows[top].index("Input hash")
    version_at = rows[top].index("Input hash version") if "Input hash version" in rows[top] else None
    out: dict[str, list[tuple[str, object]]] = {}
    for row in rows[top + 1:]:
        if row and isinstance(row[0], str) and re.fullmatch(r"\d{4}-\d{2}", row[0]) and len(row) > at:
            version = row[version_at] if version_at is not None and len(row) > version_at else None
            out.setdefault(row[0], []).append((row[at], _hash_version(version)))
    return out


def _cannot_compute(workbook) -> list[str]:
    """The Monitoring report's lines saying why the period's figures cannot be computed."""
    return [row[0] for row in _sheet(workbook, "Monitoring report").iter_rows(max_col=1, values_only=True)
            if row and isinstance(row[0], str) and row[0].startswith(CANNOT_COMPUTE)]


def _summaries(folder: Path) -> dict[str, tuple[str | None, list[str], dict[str, str | None],
                                              dict[str, list[tuple[str, object]]]]]:
    """Each summary page's (``summary_html``) status (its code, as the manifest has it; None if it
    states none), its reasons saying why the period's figures cannot be computed, the text of each
    of ``FIGURES`` it shows (None if it shows none), and the input hash and version
    (``_hash_version``) it shows for each month, by file name; a page missing or unreadable is the
    files check's to name."""
    out = {}
    for lang, name in LANGUAGES.items():
        try:
            page = (folder / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        page = re.sub(r"<!--.*?(?:-->|\Z)", "", page, flags=re.S)  # what no reader sees is not what it shows
        m = messages(lang)
        codes = {m[k]: k.removeprefix("status.") for k in m if k.startswith("status.")}
        status = _once(re.findall(f"<tr><th>{re.escape(escape(m['status']))}</th><td>(.*?)</td></tr>", page))
        reasons = [unescape(item) for why in re.findall(f"<h3>{re.escape(escape(m['why']))}</h3><ul>(.*?)</ul>",
                                                        page, re.S)
                   for item in re.findall(r"<li>(.*?)</li>", why, re.S)]
        rows = {key: f"<tr><th>{re.escape(escape(m[key.lower()]))}</th><td class=n>(.*?) tCO2</td></tr>"
                for key in ("RE", "PE", "ER_unrounded")} | {"ER": r"<td class=n><b>(.*?) tCO2</b></td></tr>"}
        shown = {key: _once(re.findall(row, page)) for key, row in rows.items()}
        hashes: dict[str, list[tuple[str, object]]] = {}
        revision_rows = re.findall(r"^<tr><td>([^<]*)</td><td class=n>[^<]*</td>.*"
                                   r"<td><code>([^<]*)</code></td>(?:<td class=n>([^<]*)</td>)?</tr>$", page, re.M)
        for month, shown_hash, version in revision_rows:
            hashes.setdefault(unescape(month), []).append((unescape(shown_hash), _hash_version(unescape(version))))
        out[name] = (None if status is None else codes.get(unescape(status), unescape(status)),
                     [r for r in reasons if r.startswith(CANNOT_COMPUTE)], shown, hashes)
    return out


def _once(found: list[str]) -> str | None:
    """What a page shows in one place; all it shows there, joined, when it shows it more than once
    (a difference whatever the recomputation); None if nowhere."""
    return "; ".join(found) or None


def _report_sheet(workbook) -> dict[str, float]:
    """The Monitoring report's 'Check (Python)' figures (column E) by symbol (``P`` or ``P[unit]``)."""
    out = {}
    for row in _sheet(workbook, "Monitoring report").iter_rows(values_only=True):
        if len(row) >= 5 and isinstance(row[0], str) and isinstance(row[4], (int, float)):
            out[row[0] + (f"[{row[1]}]" if row[1] else "")] = float(row[4])
    return out
