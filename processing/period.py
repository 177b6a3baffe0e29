"""From stored readings to a period's verified (or not) emission reductions.

A period is any span of whole local days; a month is one. The steps follow the
monitoring rules of docs/methodologies.md, sections 1.3 and 1.8:

1. read the channels each monitored parameter needs, and hash them (the input's identity);
2. reduce each channel to daily values (counters: increments; signals: hours on);
3. quality checks per channel: completeness, gaps, flagged and out-of-range readings,
   counters that went backwards or jumped, calibration overdue;
4. conservative treatment, each change an adjustment row: late calibration, check
   meters, missing days (0 for what raises reductions, an upper bound for what lowers them);
5. the methodology's equations on the period's summed parameters, then the status.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import orjson
import pandas as pd

from contract.config import ConfigError
from contract.config.site import Site
from contract.gc_paused import gc_paused
from contract.store import CustodyFinding, ReadingStore, SequenceFinding
from contract.units import factor
from processing.calibration import correction_factor, uncovered_periods
from processing.daily_values import (DailyResult, Finding, counter_daily, energised_hours_daily, gaps,
                                     integrated_daily, interval_day, local_days, mean_daily)
from processing.derived import FlareResult, flare_daily
from processing.fixed_values import DEFAULT, FixedValue, from_config
from processing.heap import keep_freed_memory
from contract.float_text import float_texts
from processing.methodologies import Calculation, calculate, load_spec
from processing.methodologies.common import exact_sum

#: parameters the processor derives interval by interval from monitored ones
DERIVED_FROM = {"PH_PROV_BIOGAS": {"PE_flare": ("BG_flare", "w_CH4", "flame")}}
#: the quality given to readings a clock finding covers: their stamps may not be when they were taken
WRONG_CLOCK = "wrong_clock"
#: readings with these gateway flags (or stamped by a wrong clock) carry no usable value
BAD = {"timeout", "disconnected", "illegal_address", "device_error", "decode_error", "not_implemented", WRONG_CLOCK}
STATUSES = ("verified", "provisional", "needs_review", "failed")
#: readings this far either side of a period settle its boundary intervals and outliers next to them
EDGE = pd.Timedelta(hours=6)
#: how far out a counter's last reading before a period (first after it) is looked for, widening
NEIGHBOUR_WINDOWS = tuple(pd.Timedelta(days=n) for n in (2, 14, 62, 400))
#: the input hash's versions (``input_hash``, docs/input-hash.md): 1, a line of text per reading, as
#: the ledger's first revisions hashed them; 2, each source's columns in a binary form, ~10 x faster
HASH_VERSIONS = (1, 2)
#: the version a month without a ledger revision is hashed in (one with revisions keeps its latest's)
HASH_VERSION = 2
#: what version 2's bytes begin with (no text of version 1 does: its devices and checks hold no NUL)
V2_HEAD = b"jcm input hash\x00v2\x00"
#: version 2's one encoding of a missing value or NaN: the quiet NaN's bits, as a little-endian uint64
MISSING = np.uint64(0x7FF8000000000000)


@dataclass
class PeriodResult:
    site: str
    first: dt.date
    last: dt.date
    methodology: str
    version: str
    status: str
    reasons: list[str]
    calc: Calculation | None
    parameters: dict[str, float]  # period totals by parameter (per unit as "P[unit]")
    daily: pd.DataFrame  # day, parameter, unit_id, source, raw, value
    findings: list[Finding]
    adjustments: list[dict]
    completeness: dict[str, float]
    input_hash: str
    simulated: bool = False
    #: the version ``input_hash`` is in (``HASH_VERSIONS``)
    input_hash_version: int = HASH_VERSION
    figures: dict = field(default_factory=dict)
    #: the fixed values the calculation used, with their origin and status
    fixed: list[FixedValue] = field(default_factory=list)

    def summary(self) -> dict:
        c = self.calc
        return {
            "site": self.site, "first": self.first.isoformat(), "last": self.last.isoformat(),
            "methodology": self.methodology, "version": self.version, "status": self.status, "reasons": self.reasons,
            "RE": c.RE if c else None, "PE": c.PE if c else None, "ER_unrounded": c.ER_unrounded if c else None,
            "ER": c.ER if c else None, "provisional": c.provisional if c else None,
            "parameters": self.parameters, "completeness": self.completeness, "input_hash": self.input_hash,
            "input_hash_version": self.input_hash_version, "simulated": self.simulated,
        }


def _usable(rows: pd.DataFrame, counter: bool, flagged: tuple[np.ndarray, np.ndarray] | None = None) -> pd.Series:
    """Readings with a usable value; a counter out of its range is not trusted. ``flagged``:
    ``_flagged(rows)``, if known."""
    good = pd.notna(rows["value"].to_numpy())
    flagged, flags = _flagged(rows) if flagged is None else flagged
    if len(flagged):
        refused = BAD | {"out_of_range"} if counter else BAD
        good[flagged[[q in refused for q in flags]]] = False
    return pd.Series(good, index=rows.index)


def _valid_outside(rows: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> tuple[bool, bool]:
    """Whether a counter's ``rows`` hold a usable reading before ``start``, and one at or after
    ``end``: only the readings there are looked at when they are in time order (a store's)."""
    at = rows["ts"].array.as_unit("ns").asi8
    if not (at[1:] >= at[:-1]).all():
        good = _usable(rows, counter=True).to_numpy()
        return bool((at[good] < start.value).any()), bool((at[good] >= end.value).any())
    i, j = np.searchsorted(at, [start.value, end.value])
    return bool(_usable(rows.iloc[:i], counter=True).any()), bool(_usable(rows.iloc[j:], counter=True).any())


def _flagged(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the readings with a quality, and their qualities: few, if any, so the
    checks compare these rather than a whole column of objects."""
    quality = rows["quality"].to_numpy()
    flagged = np.flatnonzero(pd.notna(quality))
    return flagged, quality[flagged]


def _utc_midnight(day: dt.date, site: Site) -> pd.Timestamp:
    return pd.Timestamp(dt.datetime.combine(day, dt.time(), tzinfo=site.zone)).tz_convert("UTC")


def input_hash(rows: dict[str, pd.DataFrame], sequence: list[Finding] = (), version: int = HASH_VERSION,
               flagged: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> str:
    """SHA-256 of the readings used, in a canonical form: same readings, same hash. The
    collector's sequence, clock and custody findings are inputs too (before the readings): a
    gap recorded (or resolved) after a month was processed changes its hash, so the month is
    processed again; a month without them keeps the hash it had.

    ``rows``: each source's readings (``ReadingStore.read_sources``). ``version`` (``HASH_VERSIONS``;
    docs/input-hash.md): a ledger revision records the version of its hash, and a month is hashed
    again in its latest revision's version, so that unchanged readings keep their hash.

    Version 1, the text form: one line per finding (its fields' ``str`` joined by tabs), then one
    line per reading, sorted by device, channel and ts: ``device TAB channel TAB time TAB value TAB
    quality``, time in whole seconds since the epoch (floored), value as ``repr`` of the float
    (empty when missing), quality empty when none. Version 2, the binary form: ``_hash_binary``.
    ``flagged``: each source's ``_flagged`` readings, where known (version 2).
    """
    if type(version) is not int or version not in HASH_VERSIONS:
        raise ValueError(f"input hash version {version!r}: this code knows versions "
                         f"{', '.join(map(str, HASH_VERSIONS))}")
    h = hashlib.sha256()
    lines = ["\t".join(str(v) for v in f.to_dict().values()) for f in sequence]
    sources = sorted(rows, key=lambda s: tuple(s.split(".", 1)))
    if version == 2:
        _hash_binary(h, lines, [(src, rows[src]) for src in sources if len(rows[src])], flagged or {})
        return h.hexdigest()
    for line in lines:
        h.update((line + "\n").encode())
    with gc_paused():
        times = (np.empty(0, np.int64), [])
        for src in sources:
            times = _hash_source(h, src, rows[src], times)
    return h.hexdigest()


def _hash_binary(h, lines: list[str], sources: list[tuple[str, pd.DataFrame]],
                 flagged: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Feed version 2 of the input hash to ``h``: ``V2_HEAD``, the number of finding lines and
    each (version 1's text, without its newline), the number of sources and each (``_hash_columns``),
    in version 1's order. A count is a uint64, a text its UTF-8 bytes after their length, every
    number little-endian: the bytes read back one way only. Columns go to SHA-256 as numpy holds
    them, ~10 times faster than a text per value. ``flagged``: ``_flagged`` of some sources, if known."""
    h.update(V2_HEAD + _count(len(lines)) + b"".join(map(_text, lines)) + _count(len(sources)))
    stamps = None
    for src, frame in sources:
        stamps = _hash_columns(h, src, frame, stamps, flagged.get(src))


def _hash_columns(h, src: str, frame: pd.DataFrame, before: np.ndarray | None,
                  flagged: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Feed one source's readings to ``h`` in version 2's form and return their stamps: its
    device and channel (texts), the number of readings n, their stamps (a byte 0, then n int64 [ms
    since the epoch, UTC, rounded to the nearest ms: the stores keep whole ms], in time order) or
    a byte 1 when they are the stamps of the source before (``before``: a device's channels share
    their readings' times), n float64 values in that order (every missing value and NaN as the one
    NaN ``MISSING``), the number of readings with a quality and, for each in order, its position
    among the n and its quality (a text). ``flagged``: ``_flagged(frame)``, if known."""
    ts = frame["ts"].array
    stamps = ts.asi8
    values = frame["value"].to_numpy(dtype="<f8")
    flagged, flags = _flagged(frame) if flagged is None else flagged
    if not (stamps[1:] > stamps[:-1]).all():  # a store's rows are in time order already
        order = np.argsort(stamps, kind="stable")
        stamps, values = stamps[order], values[order]
        at = np.empty(len(order), np.int64)
        at[order] = np.arange(len(order))  # where each reading goes in time order
        flagged = at[flagged]
        flags = flags[np.argsort(flagged, kind="stable")]
        flagged = np.sort(flagged)
    ms = _whole_ms(stamps, ts.unit)
    bits = values.view("<u8").copy()
    bits[np.isnan(values)] = MISSING
    device, channel = src.split(".", 1)
    same = before is not None and np.array_equal(ms, before)
    h.update(_text(device) + _text(channel) + _count(len(ms)) + (b"\x01" if same else b"\x00"))
    if not same:
        h.update(np.ascontiguousarray(ms, "<i8"))
    h.update(bits)
    h.update(_count(len(flagged)) + b"".join(_count(i) + _text(str(q)) for i, q in zip(flagged.tolist(), flags)))
    return ms


def _whole_ms(stamps: np.ndarray, unit: str) -> np.ndarray:
    """``stamps`` (int64 since the epoch, in ``unit``: s, ms, us or ns) in whole milliseconds,
    rounded to the nearest (half up) [ms]."""
    if unit == "s":
        return stamps * 1000
    per = {"ms": 1, "us": 1_000, "ns": 1_000_000}[unit]
    return (stamps + per // 2) // per


def _count(n: int) -> bytes:
    """A count or position in version 2 of the input hash: uint64, little-endian."""
    return n.to_bytes(8, "little")


def _text(text: str) -> bytes:
    """A text in version 2 of the input hash: the length of its UTF-8 bytes (``_count``), then them."""
    data = text.encode()
    return _count(len(data)) + data


def _hash_source(h, src: str, frame: pd.DataFrame,
                 times: tuple[np.ndarray, list[str]]) -> tuple[np.ndarray, list[str]]:
    """Feed one source's lines to ``h``. The text is assembled column by column and joined
    once (a Python loop over half a million rows took longer than reading them), three parts a
    line: its time and a tab, its value, and its end with the next line's names. ``times``: the
    seconds and their texts (with the tab) of the source before, reused when this one's are the
    same (a device's channels share their readings' times); returns this one's."""
    n = len(frame)
    if not n:
        return times
    if not (np.diff(frame["ts"].array.asi8) > 0).all():  # a store's rows are in time order already
        frame = frame.sort_values("ts")
    secs = frame["ts"].dt.as_unit("us").array.asi8 // 1_000_000
    if not np.array_equal(secs, times[0]):
        times = (secs, _int_texts(secs, "\t"))
    names = "{}\t{}\t".format(*src.split(".", 1))
    ends = [f"\t\n{names}"] * n  # the quality column, empty but for flagged readings, then the next line's names
    flagged, flags = _flagged(frame)
    for i, q in zip(flagged.tolist(), flags):
        ends[i] = f"\t{q}\n{names}"
    ends[-1] = ends[-1].removesuffix(names)
    parts: list = [None] * (3 * n)
    parts[0::3] = times[1]
    parts[1::3] = float_texts(frame["value"].to_numpy(dtype=float))
    parts[2::3] = ends
    h.update((names + "".join(parts)).encode())
    return times


def _distinct(values: np.ndarray) -> int:
    """How many distinct values: counted along them when sorted (a store's rows are), else by ``np.unique``."""
    if len(values) < 2 or (values[1:] >= values[:-1]).all():
        return int(len(values) > 0) + int(np.count_nonzero(np.diff(values)))
    return len(np.unique(values))


def _int_texts(values: np.ndarray, end: str = "") -> list[str]:
    """``str`` of each of the int64 ``values``, each followed by ``end`` (orjson writes them in C: a
    third of the time)."""
    text = orjson.dumps(np.ascontiguousarray(values, np.int64), option=orjson.OPT_SERIALIZE_NUMPY)
    text = text[1:-1].decode("ascii")
    return (text.replace(",", f"{end},") + end).split(",") if end else text.split(",")


def read_span(rows: dict[str, pd.DataFrame], start: pd.Timestamp, end: pd.Timestamp) -> tuple[str, str]:
    """UTC ISO start and end (exclusive) of the readings a period's computation read: ``EDGE``
    either side of [start, end), wider where a counter's neighbours were read. A recomputation
    needs these readings and no others (an export's signed messages cover them)."""
    stamps = [frame["ts"] for frame in rows.values() if len(frame)]
    lo = min([start - EDGE, *(ts.min() for ts in stamps)])
    hi = max([end + EDGE, *(ts.max() + pd.Timedelta(milliseconds=1) for ts in stamps)])
    return lo.isoformat(), hi.isoformat()


def stamped(f: SequenceFinding) -> tuple[dt.datetime, dt.datetime]:
    """The first and last stamp of the readings a sequence finding is about, as the periods
    (and an export's custody findings) place it: without a start or an end, when it was noticed;
    a gap with no stored reading before it (an epoch's first seqs) lies before its end, by how
    much unknown: it is for the period of its end (noticed later, it would be in none). A clock
    stepped back stamps the end before the start: the span is between the two either way."""
    end = f.end or f.noticed
    start = f.start or min(end, f.noticed)
    return min(start, end), max(start, end)


def sequence_findings(found: list[SequenceFinding], start: pd.Timestamp, end: pd.Timestamp) -> list[Finding]:
    """The collector's findings along the site's gateway sequence within [start, end) as QA
    findings: a gap the gateway's outbox cap does not fully explain, or a new epoch (its lost
    tail is of unknown size), is for review; so is a wrong clock, in the period its readings
    were stamped in and in the one they were received in (where they are missing); so are
    seqs the collector did not follow (``jump`` until all were followed, ``churn``) and holes
    named together rather than one by one (``holes``). A gap whose seqs all arrived later is
    for information."""
    out = []
    for f in found:
        first, last = (pd.Timestamp(t) for t in stamped(f))
        # a clock not yet seen right again touches every period after it was noticed
        received = (pd.Timestamp(f.noticed), pd.Timestamp(f.resolved) if f.resolved else end)
        if (last < start or first >= end) and (f.kind != "clock" or received[1] < start or received[0] >= end):
            continue
        source = f"{f.gateway}.seq"
        if f.kind == "gap":
            severity = "info" if f.explained >= f.missing else "review"
            meaning = ("readings lost before they reached the store; a counter's total over the gap is still "
                       "recovered from its readings either side, but a lost reading may hold a counter reset, "
                       "a flag or a signal value that no other reading shows")
            after = f"; all arrived later ({f.resolved.isoformat(timespec='seconds')})" if f.resolved else ""
            out.append(Finding("sequence_gap", source, "info" if f.resolved else severity,
                               f"{f.cause}. What it means: {meaning}{after}", str(first), str(last),
                               amount=float(f.missing)))
        elif f.kind == "clock":
            until = f.resolved.isoformat(timespec="seconds") if f.resolved else "not yet"
            out.append(Finding("wrong_clock", f"{f.gateway}.clock", "review",
                               f"{f.cause}. What it means: the readings stamped {first} .. {last} are not used "
                               "(treated as missing: a counter's total over them comes from its readings either "
                               f"side); received {received[0]} .. {until}", str(first), str(last),
                               amount=float(f.last - f.first + 1)))
        elif f.kind == "churn":
            out.append(Finding("sequence_churn", source, "review",
                               f"{f.cause}. What it means: the gateway sent readings under more new sequence epochs "
                               "than a real one starts; they are stored, but whether readings of those epochs were "
                               "lost is not known", str(first), str(last)))
        elif f.kind == "holes":
            out.append(Finding("sequence_holes", source, "review",
                               f"{f.cause}. What it means: readings of this stretch were lost at so many places that "
                               "the collector named them together; which ones is in the store's sequence blocks, "
                               "and a counter's total over each hole comes from its readings either side",
                               str(first), str(last)))
        elif f.kind == "jump":
            out.append(Finding("sequence_jump", source, "info" if f.resolved else "review",
                               f"{f.cause}. What it means: the gateway sent seqs it cannot have reached (a broken or "
                               "hostile gateway, or a store that missed the start of its epoch); their readings are "
                               "stored, but whether readings around them were lost is not known",
                               str(first), str(last)))
        else:
            out.append(Finding("sequence_epoch", source, "review",
                               f"{f.cause}. What it means: an unknown number of readings the gateway held were "
                               "never sent; counter totals are recovered from the readings either side",
                               str(first), str(last)))
    return out


def custody_findings(found: list[CustodyFinding], start: pd.Timestamp, end: pd.Timestamp) -> list[Finding]:
    """The collector's custody findings about readings stamped in [start, end) as QA findings,
    each for review: a reading whose chain is broken (``wrong_prev``) or that a validly signed
    message contradicts (``conflict``) is not one a verifier can trace to its gateway."""
    out = []
    for f in sorted(found, key=lambda f: (f.ts, f.gateway, f.epoch, f.seq, f.kind)):
        ts = pd.Timestamp(f.ts)
        if start <= ts < end:
            out.append(Finding(f"custody_{f.kind}", f"{f.gateway}.custody", "review",
                               f"seq {f.seq} of epoch {f.epoch}: {f.detail}. What it means: this reading's chain of "
                               "custody is broken, so it cannot be traced to its gateway's signature unbroken",
                               str(ts), amount=1.0))
    return out


def wrong_clock_spans(found: list[SequenceFinding]) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The stamp ranges [start, end] of the clock findings: readings stamped there are not used.
    Both are whole milliseconds, as the stores keep them (a store's float seconds may miss the last by 1 us)."""
    return [(pd.Timestamp(f.start).round("ms"), pd.Timestamp(f.end).round("ms")) for f in found
            if f.kind == "clock" and f.start and f.end]


def flag_wrong_clock(frame: pd.DataFrame, spans: list[tuple[pd.Timestamp, pd.Timestamp]]) -> pd.DataFrame:
    """``frame`` (``SOURCE_COLUMNS``) with the readings stamped within a span flagged ``WRONG_CLOCK``."""
    if not spans or frame.empty:
        return frame
    covered = np.zeros(len(frame), bool)
    for a, b in spans:
        covered |= ((frame["ts"] >= a) & (frame["ts"] <= b)).to_numpy()
    if not covered.any():
        return frame
    frame = frame.copy()
    frame["quality"] = frame["quality"].astype(object)
    frame.loc[covered, "quality"] = WRONG_CLOCK
    return frame


class PeriodProcessor:
    """Holds one site's configuration; ``process(store, first, last)`` does the work."""

    def __init__(self, site: Site):
        keep_freed_memory()
        self.site = site
        self.spec = load_spec(site.methodology)
        if self.spec.version != site.methodology_version:
            raise ConfigError(f"site {site.site}: registered under {site.methodology} {site.methodology_version}, "
                              f"but config/methodologies has version {self.spec.version}")

    def process(self, store: ReadingStore, first: dt.date, last: dt.date,
                hash_versions: tuple[int, ...] = (HASH_VERSION,)) -> PeriodResult:
        """The period of whole local days ``first``..``last``: every interval that ends after
        local midnight starting ``first`` up to and including local midnight ending ``last``
        (a reading stamped 00:00:00 closes the previous day; ``daily_values.interval_day``).
        Readings just outside the period settle the intervals that cross its boundaries.

        ``hash_versions``: the input hash is in the first (a month's latest ledger revision's);
        ``figures["input_hashes"]`` holds the hash in each, by version (a verifier's check of
        which version a recorded hash is in)."""
        site, spec = self.site, self.spec
        days = local_days(first, last)
        start, end = _utc_midnight(first, site), _utc_midnight(last + dt.timedelta(days=1), site)
        found = store.sequence_findings(site.site)
        spans = wrong_clock_spans(found)
        rows = store.read_sources(site.site, (start - EDGE).to_pydatetime(), (end + EDGE).to_pydatetime(),
                                  site.monitoring_sources)
        rows = {src: flag_wrong_clock(frame, spans) for src, frame in rows.items()}
        rows = self._with_counter_neighbours(store, rows, start, end, spans)
        findings: list[Finding] = []
        adjustments: list[dict] = []
        completeness: dict[str, float] = {}
        series: dict[str, pd.Series] = {}
        # the QA and the input hash both look at each source's flagged readings: found once
        flagged = {src: _flagged(frame) for src, frame in rows.items()}
        for src in site.monitoring_sources:
            series[src] = self._source_series(rows[src], src, start, end, findings, completeness, flagged[src])

        daily_rows: list[dict] = []
        totals: dict[str, pd.Series] = {}  # key: (parameter, unit_id) as "P" or "P[unit]"
        kinds: dict[str, str] = {}  # "total" (counters, hours) or "mean" (instantaneous values)
        spanned: dict[str, set] = {}  # days whose split is unknown because a counter spans a gap
        units_of: dict[str, str] = {}
        for m in site.monitoring:
            key = m.parameter if m.unit_id is None else f"{m.parameter}[{m.unit_id}]"
            target_unit = self._parameter_unit(m.parameter)
            effect = self._effect(m.parameter)
            per_source = []
            for src in m.sources:
                r = self._reduce(src, series[src], days, m.max_rate_per_h, effect)
                findings.extend(r.findings)
                spanned.setdefault(key, set()).update(r.spanned_days)
                point = self._point(src)
                unit = "h" if point.type == "bool" else point.unit
                scale = 1.0
                if target_unit and (point.kind.value == "counter" or point.type == "bool"):
                    scale, unit = factor(unit, target_unit), target_unit
                d = r.values * scale
                for a in r.adjustments:  # in the parameter's unit, like every other row
                    adjustments.append({**a, "parameter": m.parameter, "meter": src.split(".")[0],
                                        "before": a["before"] * scale, "after": a["after"] * scale})
                gap_totals = [(a, b, total * scale) for a, b, total in r.spanned_gaps]
                rating = self.site.rating_per_h(src) if point.kind.value == "counter" else None
                if point.kind.value == "counter" and rating is None and m.max_rate_per_h is None:
                    findings.append(Finding("no_nameplate", src, "info",
                                            "no nameplate rating in the site file: its increments are not bounded by "
                                            "what the equipment can physically deliver"))
                d = self._calibrate(src, d, effect, adjustments, findings, m.parameter, gap_totals,
                                    rating * scale if rating else None)
                for day, v in d.items():
                    daily_rows.append({"day": day, "parameter": m.parameter, "unit_id": m.unit_id, "source": src,
                                       "value": v, "unit": unit})
                per_source.append(d)
                kinds[key] = "mean" if point.kind.value != "counter" and point.type != "bool" else "total"
                units_of[key] = unit
            totals[key] = pd.concat(per_source, axis=1).sum(axis=1, min_count=len(per_source))
            if m.power_source:
                self._power_cross_check(m, key, totals[key], units_of[key], series, days, spanned, findings)

        self._check_meters(totals, spanned, findings, adjustments)
        sequence = sequence_findings(found, start, end)
        sequence += custody_findings(store.custody_findings(site.site), start, end)
        findings += sequence
        status_fail: list[str] = []
        fixed = from_config(site, spec)
        if spec.methodology == "PH_PROV_BIOGAS":
            flare = self._flare(series, days, fixed)
            totals.update({"PE_flare": flare.values, "CH4_flare": flare.ch4, "CH4_flare_burning": flare.ch4_burning})
            units_of.update({"PE_flare": "tCO2e", "CH4_flare": "Nm3", "CH4_flare_burning": "Nm3"})
            adjustments += flare.adjustments
        period_values: dict[str, float] = {}
        exact_totals: dict[str, Decimal] = {}  # what the calculation uses; period_values records them
        for key, values in totals.items():
            name = key.split("[")[0]
            if name not in spec.parameters or spec.parameters[name].kind != "monitored":
                reduce = values.mean if kinds.get(key) == "mean" else values.sum
                period_values[key] = float(reduce()) if values.notna().any() else float("nan")
                continue
            filled = self._fill_missing(key, values, self._effect(name), adjustments, status_fail)
            totals[key] = filled
            exact_totals[key] = exact_sum(filled)
            period_values[key] = float(exact_totals[key])

        calc, reasons = None, []
        try:
            calc = self.calculate_period({**period_values, **exact_totals}, fixed)
        except ValueError as exc:
            status_fail.append(f"cannot compute: {exc}")
        reasons += status_fail
        # completeness grades the sources of the methodology's parameters; cross-check and QA-only
        # channels are reported but do not decide the month
        graded = {src for m in site.monitoring if self._feeds_methodology(m.parameter) for src in m.sources}
        for src, frac in completeness.items():
            if src in graded and frac < site.quality.completeness_fail and self._point(src).kind.value != "counter":
                reasons.append(f"{src}: {frac:.1%} of expected readings, below {site.quality.completeness_fail:.0%}")
                status_fail.append(src)
        review = [f"{f.source}: {f.check}: {f.detail}" for f in findings if f.severity == "review"]
        review += [f"{src}: completeness {frac:.1%} below {site.quality.completeness_review:.0%}"
                   for src, frac in completeness.items() if src in graded and frac < site.quality.completeness_review]
        if status_fail:
            status = "failed"
        elif review:
            status, reasons = "needs_review", reasons + review
        elif calc is not None and calc.provisional:
            status = "provisional"
            reasons.append("methodology or fixed values provisional/unconfirmed: "
                           + ", ".join([f"{spec.methodology} {spec.version}"] * spec.provisional
                                       + [f"{f.key} ({f.origin})" for f in fixed if f.status != "confirmed"]))
        else:
            status = "verified"
        daily = pd.DataFrame(daily_rows, columns=["day", "parameter", "unit_id", "source", "value", "unit"])
        simulated = not store.read(site.site, start.to_pydatetime(), end.to_pydatetime(), channels=["simulated"],
                                   devices=site.monitoring_devices, limit=1).empty
        hashes = {v: input_hash(rows, sequence, v, flagged) for v in hash_versions}
        return PeriodResult(
            simulated=simulated,
            site=site.site, first=first, last=last, methodology=spec.methodology, version=spec.version,
            status=status, reasons=reasons, calc=calc, parameters=period_values, daily=daily, findings=findings,
            adjustments=adjustments, completeness=completeness, input_hash=hashes[hash_versions[0]],
            input_hash_version=hash_versions[0], fixed=fixed,
            figures={"daily_totals": totals, "units": units_of, "read": read_span(rows, start, end),
                     "input_hashes": hashes},
        )

    # -- steps ----------------------------------------------------------------------
    def _point(self, src: str):
        dev, channel = src.split(".")
        return self.site.device(dev).register_map.point(channel)

    def _feeds_methodology(self, parameter: str) -> bool:
        derived_inputs = {p for inputs in DERIVED_FROM.get(self.spec.methodology, {}).values() for p in inputs}
        return parameter in self.spec.parameters or parameter in derived_inputs

    def _parameter_unit(self, parameter: str) -> str | None:
        base = parameter.removesuffix("_check")
        return self.spec.parameters[base].unit if base in self.spec.parameters else None

    def _effect(self, parameter: str) -> str:
        """Whether a parameter raises or lowers reductions; an input of a derived parameter
        (the flare's gas) takes the derived one's direction."""
        base = parameter.removesuffix("_check")
        base = next((d for d, inputs in DERIVED_FROM.get(self.spec.methodology, {}).items() if base in inputs), base)
        return self.spec.parameters[base].effect if base in self.spec.parameters else "raises"

    def _gap_s(self, src: str) -> float:
        """Longer than this without a reading is a gap: three polls, and never less than
        one and a half recording intervals of the monitoring plan."""
        poll = self.site.device(src.split(".")[0]).poll_interval
        return max(3 * poll, 1.5 * self.site.quality.recording_interval_s)

    def _valid(self, rows: pd.DataFrame, src: str, flagged: tuple[np.ndarray, np.ndarray] | None = None) -> pd.Series:
        return _usable(rows, self._point(src).kind.value == "counter", flagged)

    def _with_counter_neighbours(self, store: ReadingStore, rows: dict[str, pd.DataFrame], start: pd.Timestamp,
                                 end: pd.Timestamp, spans=()) -> dict[str, pd.DataFrame]:
        """``rows`` (by source) with, for each counter lacking a valid reading within ``EDGE``
        before the period (or after it), the readings out to the nearest valid one: a counter
        read on both sides of a gap across the period's boundary knows the gap's exact total.
        ``spans``: stamp ranges of clock findings (``wrong_clock_spans``), whose readings are not valid."""
        counters = [src for src in self.site.monitoring_sources if self._point(src).kind.value == "counter"]
        held = {src: _valid_outside(rows[src], start, end) for src in counters}
        extra: dict[str, list[pd.DataFrame]] = {src: [] for src in counters}
        for side, before in enumerate((True, False)):
            # one read a window for all the counters still without a neighbour on this side
            wanting = [src for src in counters if not held[src][side]]
            near = EDGE
            for far in NEIGHBOUR_WINDOWS:
                if not wanting:
                    break
                a, b = (start - far, start - near) if before else (end + near, end + far)
                read = store.read_sources(self.site.site, a.to_pydatetime(), b.to_pydatetime(), wanting)
                for src in wanting:
                    extra[src].append(flag_wrong_clock(read[src], spans))
                wanting = [src for src in wanting if not self._valid(extra[src][-1], src).any()]
                near = far
        for src, frames in extra.items():
            frames = [x for x in frames if not x.empty]
            if frames:
                rows[src] = pd.concat([rows[src], *frames], ignore_index=True).sort_values("ts", ignore_index=True)
        return rows

    def _source_series(self, rows, src, start, end, findings, completeness, flagged) -> pd.Series:
        """``flagged``: ``_flagged(rows)``."""
        flagged, flags = flagged
        good = self._valid(rows, src, (flagged, flags)).to_numpy()
        point = self._point(src)
        ts = rows["ts"].array
        at = ts.as_unit("ns").asi8
        in_period = (at >= start.value) & (at < end.value)
        # completeness: the share of the monitoring plan's recording intervals holding a valid reading
        slot = pd.Timedelta(seconds=self.site.quality.recording_interval_s)
        slots = max(1, int((end - start) / slot))
        completeness[src] = min(1.0, _distinct((at[good & in_period] - start.value) // slot.value) / slots)
        if in_period[flagged].any():  # most months have no flagged reading
            flags_here = pd.Series(flags[in_period[flagged]], dtype=object)
            for flag, n in flags_here[flags_here.isin(BAD)].value_counts().items():
                findings.append(Finding("gateway_flag", src, "info", f"{n} readings flagged {flag}", amount=float(n)))
            if oor := int((flags_here == "out_of_range").sum()):
                findings.append(Finding("out_of_range", src, "review",
                                        f"{oor} readings outside the valid range {point.range}", amount=float(oor)))
        every = good.all()  # most months: no copy of the columns by a mask that keeps them whole
        times = pd.DatetimeIndex(ts if every else ts[good], name="ts")
        for a, b, secs in gaps(times, start, end, self._gap_s(src)):
            findings.append(Finding("gap", src, "info", f"{secs / 3600:.2f} h without a valid reading", str(a), str(b),
                                    secs / 3600))
        values = rows["value"].to_numpy()
        return pd.Series((values if every else values[good]).astype(float), index=times, name="value")

    def _reduce(self, src, values, days, max_rate, effect) -> DailyResult:
        point = self._point(src)
        zone = self.site.zone
        if point.kind.value == "counter":
            return counter_daily(values, zone, days, src, point.rollover, self.site.counter_limit_per_h(src, max_rate),
                                 self._gap_s(src), effect, self.site.rating_per_h(src), point.unit)
        if point.type == "bool":
            return energised_hours_daily(values, zone, days, self._gap_s(src))
        return mean_daily(values, zone, days)

    def _calibrate(self, src, d: pd.Series, effect, adjustments, findings, parameter, gap_totals=(),
                   rating_per_h: float | None = None) -> pd.Series:
        """Late-calibration corrections of one source's daily values [parameter unit].

        A counter's total over a gap sits on the day the gap ends; when that day is past
        the overdue days but the gap covers some of them, the part of the total the meter
        may have registered in them (all of it, or the nameplate rating × the overlap if
        less) is corrected too, so that a gap cannot carry energy out of the correction.
        """
        dev = self.site.device(src.split(".")[0])
        if not dev.calibrations:
            return d
        d = d.copy()
        last = d.index.max()
        for u in uncovered_periods(dev.calibrations, last):
            f = correction_factor(u.error_pct, effect)
            mask = (d.index >= u.start) & (d.index <= u.end) & d.notna().to_numpy()
            if mask.any():
                before = float(d[mask].sum())
                d[mask] = d[mask] * f
                adjustments.append({
                    "kind": "late_calibration", "parameter": parameter, "source": src, "meter": dev.id,
                    "days": f"{min(d.index[mask])}..{max(d.index[mask])} ({int(mask.sum())} days)",
                    "before": before, "factor": f, "after": float(d[mask].sum()), "reason": u.reason,
                })
            lo, hi = _utc_midnight(u.start, self.site), _utc_midnight(u.end + dt.timedelta(days=1), self.site)
            for a, b, total in gap_totals:
                day = interval_day(pd.DatetimeIndex([b]), self.site.zone)[0]
                if day <= u.end or day not in d.index or not (a < hi and b > lo) or total <= 0:
                    continue
                overlap_h = (min(b, hi) - max(a, lo)).total_seconds() / 3600
                share = min(total, rating_per_h * overlap_h) if rating_per_h else total
                d[day] += share * (f - 1)
                mask = mask | (d.index == day)
                adjustments.append({
                    "kind": "late_calibration", "parameter": parameter, "source": src, "meter": dev.id,
                    "days": str(day), "before": share, "factor": f, "after": share * f,
                    "reason": f"{u.reason}; the gap from {a} to {b} overlaps the overdue days: its total is counted on "
                              f"{day}, and the part of it the meter may have registered in them is corrected",
                })
            if mask.any():
                findings.append(Finding("calibration_overdue", src, "review", u.reason, str(u.start), str(u.end),
                                        u.error_pct))
        return d

    def _power_cross_check(self, m, key, counted: pd.Series, unit: str, series, days, spanned, findings) -> None:
        """Integrated power against the counters, day by day, on days the power covers fully."""
        point = self._point(m.power_source)
        energy, incomplete = integrated_daily(series[m.power_source] * m.power_sign, self.site.zone, days,
                                              self._gap_s(m.power_source))
        energy = energy * factor(f"{point.unit}h", unit)
        tol = self.site.quality.power_integration_tolerance
        skip = incomplete | spanned.get(key, set())
        # a dict lookup a day, not Series.get
        counted, energy = (dict(zip(s.index, s.to_numpy())) for s in (counted, energy))
        for day in days:
            c, e = counted.get(day), energy.get(day)
            if day in skip or c is None or e is None or np.isnan(c) or np.isnan(e) or max(abs(c), abs(e)) == 0:
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                rel = abs(c - e) / max(abs(c), abs(e))
            if np.isnan(rel):  # one beyond any float (infinite): no agreement can be shown
                rel = np.inf
            if rel > tol:
                findings.append(Finding("power_integration", key, "review",
                                        f"{day}: counters {c:.6g} {unit} vs integrated {m.power_source} {e:.6g} {unit} "
                                        f"({rel:.1%} > {tol:.0%})", str(day), str(day), rel))

    def _check_meters(self, totals: dict[str, pd.Series], spanned: dict[str, set], findings, adjustments) -> None:
        """Main against check meter, day by day; days around a gap that a counter spans are
        not compared (their split across days is unknown, the total is exact)."""
        tol = self.site.quality.check_meter_tolerance
        for key in list(totals):
            if not key.split("[")[0].endswith("_check"):
                continue
            main_key = key.replace("_check", "", 1)
            if main_key not in totals:
                continue
            main, check = totals[main_key], totals[key]
            effect = self._effect(main_key.split("[")[0])
            unknown_split = spanned.get(main_key, set()) | spanned.get(key, set())
            both = main.notna() & check.notna() & (main.abs() > 0) & ~main.index.isin(list(unknown_split))
            rel = ((check - main).abs() / main.abs()).where(both)
            bad = rel > tol
            if not bad.any():
                continue
            pick = np.minimum(main, check) if effect == "raises" else np.maximum(main, check)
            for day in main.index[bad.to_numpy()]:
                findings.append(Finding("check_meter", main_key, "review",
                                        f"{day}: main {main[day]:.6g} vs check {check[day]:.6g} ({rel[day]:.1%} > {tol:.0%}); "
                                        "the conservative one is used", str(day), str(day), float(rel[day])))
                if pick[day] != main[day]:
                    adjustments.append({"kind": "check_meter", "parameter": main_key, "source": key, "meter": "",
                                        "days": str(day), "before": float(main[day]), "factor": float(pick[day] / main[day]),
                                        "after": float(pick[day]), "reason": "main and check meter disagree beyond tolerance"})
            totals[main_key] = main.where(~bad, pick)

    def _fill_missing(self, key, values: pd.Series, effect, adjustments, fail: list[str]) -> pd.Series:
        missing = values.isna()
        if not missing.any():
            return values
        if missing.all():
            fail.append(f"{key}: no data in the period")
            return values.fillna(0.0)
        if effect == "raises":
            fill, reason = 0.0, "no data: a quantity that raises reductions counts 0"
        else:
            fill, reason = float(values.max()), "no data: filled with the highest daily value of the period (upper bound)"
        for day in values.index[missing.to_numpy()]:
            adjustments.append({"kind": "missing_data", "parameter": key, "source": "", "meter": "", "days": str(day),
                                "before": None, "factor": None, "after": fill, "reason": reason})
        return values.fillna(fill)

    def _flare(self, series, days, fixed: list[FixedValue]) -> FlareResult:
        by_param = {m.parameter: m for m in self.site.monitoring}
        bg, ch4, flame = (by_param[p].sources[0] for p in DERIVED_FROM["PH_PROV_BIOGAS"]["PE_flare"])
        c = self.spec.constants
        gwp = next(f.value for f in fixed if f.parameter == "GWP_CH4")
        # a flame or methane reading stands for its channel as long as a poll may be missed
        flare = flare_daily(series[bg], series[ch4], series[flame],
                            self.site.zone, days, gwp,
                            c["CH4_density"].value, c["eta_flare_burning"].value, self._point(bg).rollover,
                            min(self._gap_s(flame), self._gap_s(ch4)), (bg, ch4, flame),
                            self.site.counter_limit_per_h(bg, by_param["BG_flare"].max_rate_per_h))
        # PE_flare is proportional to the gas and to its CH4 fraction: the delayed calibration of
        # either meter reaches it (once per device; the QA rows of BG_flare and w_CH4 do not);
        # the calibration_overdue findings are the QA reduction's
        for src in {s.split(".")[0]: s for s in (bg, ch4)}.values():
            flare.values = self._calibrate(src, flare.values, self._effect("PE_flare"), flare.adjustments, [],
                                           "PE_flare")
        return flare

    def calculate_period(self, values: dict[str, float | Decimal], fixed: list[FixedValue] | None = None) -> Calculation:
        """The methodology's equations on period totals (``P`` or ``P[unit]`` keys) with ``fixed``
        values (default: today's configuration); any unconfirmed one makes the figure provisional."""
        spec = self.spec
        fixed = from_config(self.site, spec) if fixed is None else fixed
        period: dict[str, float] = {}
        units: dict[str, dict] = {}
        for key, v in values.items():
            name = key.split("[")[0]
            if name not in spec.parameters or spec.parameters[name].kind != "monitored":
                continue
            if spec.parameters[name].per_unit:
                uid = key[len(name) + 1:-1] if "[" in key else "unit-1"
                units.setdefault(uid, {"id": uid})[name] = v
            else:
                period[name] = v
        for f in fixed:
            if f.unit_id is not None:
                units.setdefault(f.unit_id, {"id": f.unit_id})[f.parameter] = f.value
            else:
                period[f.parameter] = f.value
        calc = calculate(spec.methodology, period, list(units.values()), spec=spec)
        calc.provisional = calc.provisional or any(f.status != "confirmed" for f in fixed)
        calc.defaults_used = {f.parameter: {"value": f.value, "unit": f.unit, "status": f.status, "source": f.source}
                              for f in fixed if f.origin == DEFAULT}
        return calc
