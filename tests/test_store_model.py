"""Model-based: what the embedded store's readers return, pinned exactly, so that another
layout of ``store/sqlite_store.py`` (a row per message instead of a row per channel value)
can be shown to return the same frames bit for bit: the monthly figures and the input
hashes of the MRV reports are computed from them.

Only the store's public interface is used (``write``, ``read``, ``read_sources``,
``latest``, ``devices``, ``count``), never its tables or SQL. A pure-Python model, a dict
keyed by (site, device, channel, ms), says what each reader must return. Hypothesis
writes batches of readings on a small grid of instants, so that many collide: the same
(site, device, instant) is written again with other channels, within a batch and across
batches, and today that is a merge channel by channel (the later value of a channel wins,
a channel only the earlier message had stays). Readings SQLite cannot hold are mixed in:
``write`` refuses each of them alone and stores the rest.

The second test writes a store file in the layout of today (frozen below as literal SQL:
the layout before the row-per-message one) and opens it with the current code, which must
read it as the model says, and go on writing into it.

``JCM_FUZZ_EXAMPLES`` raises the example count for a long run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.message import DeviceStatus, Quality, Reading
from contract.store import READ_COLUMNS, DeviceSeen, to_ms
from store import row_per_value
from store.sqlite_store import SEEN, SqliteStore
from tests.conftest import fuzz_examples

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SITES = ("s1", "s1", "s2")  # s1 twice: most readings are of one site, a second site must not leak into it
DEVICES = ("m1", "m2", "m3")
CHANNELS = ("a", "b", "c", "d")
GATEWAYS = ("gw1", "gw2")
#: instants 1 ms apart, each also 499 and 500 us later: readings stamped 500 us apart may be
#: one stored instant, as milliseconds are rounded half away from zero (contract.store.to_ms)
INSTANTS = tuple(T0 + dt.timedelta(milliseconds=k, microseconds=u) for k in range(3) for u in (0, 499, 500))
BEFORE, AFTER = T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1)

#: floats at the edges of float64: signed zeros, the smallest subnormal and normal, the largest
EDGE_FLOATS = (-0.0, 0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
               -1.7976931348623157e308, 1e-320, 0.1, 2.0**53 + 2)
#: integers a float64 holds only rounded (beyond 2**53), or not as an int64 (beyond 2**63)
EDGE_INTS = (2**53 + 1, -(2**53) - 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64 + 1, 2**1023 * 3 // 2)
text = st.text(st.characters(codec="utf-8"), max_size=4) | st.sampled_from(("", "\x00", "1.5", "NaN", "null"))
number = (st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(EDGE_FLOATS)
          | st.integers() | st.sampled_from(EDGE_INTS) | st.booleans())
value = number | st.none() | text
#: what SQLite cannot hold: text with a lone surrogate (no UTF-8), an int beyond any float
unstorable = (st.builds(lambda a, s: a + s, text, st.characters(categories=["Cs"]))
              | st.sampled_from((2**1024, -(10**400))))
seq = st.none() | st.integers(0, 2**63 - 1)


@st.composite
def readings(draw, earlier: list[Reading]) -> Reading:
    """A reading; often of the (site, device, instant) of an earlier one, with other channels."""
    twin = draw(st.sampled_from(earlier)) if earlier and draw(st.booleans()) else None
    channels = draw(st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=len(CHANNELS), unique=True))
    values = {c: draw(value) for c in channels}
    if twin is not None:
        site, device, ts = twin.site, twin.device, twin.ts
        for c in [c for c in channels if c in twin.values]:  # text where the twin had a number, and the reverse
            if draw(st.booleans()):
                values[c] = draw(number) if isinstance(twin.values[c], str) else draw(text)
    else:
        site, device, ts = draw(st.sampled_from(SITES)), draw(st.sampled_from(DEVICES)), draw(st.sampled_from(INSTANTS))
    quality = {c: draw(st.sampled_from(Quality)) for c in channels if draw(st.booleans())}
    n = draw(seq)
    if draw(st.integers(0, 7)) == 0:  # about one reading in eight is one SQLite cannot hold
        if draw(st.booleans()):
            values[draw(st.sampled_from(channels))] = draw(unstorable)
        else:
            n = draw(st.sampled_from((2**63, -(2**63) - 1)))  # a seq that is no int64
    return Reading(site, draw(st.sampled_from(GATEWAYS)), device, ts, values, quality, {},
                   draw(st.sampled_from(DeviceStatus)), n)


@st.composite
def workloads(draw) -> list[list[Reading]]:
    batches: list[list[Reading]] = []
    earlier: list[Reading] = []
    for _ in range(draw(st.integers(1, 4))):
        batch = []
        for _ in range(draw(st.integers(1, 6))):
            batch.append(draw(readings(earlier)))
            earlier.append(batch[-1])
        batches.append(batch)
    return batches


@dataclass(frozen=True)
class Cell:
    """One stored channel value: ``number`` or ``text`` or neither (a null value)."""

    gateway: str
    number: float | None
    text: str | None
    quality: str | None


def storable(r: Reading) -> bool:
    """Whether SQLite can hold a reading: its text as UTF-8 (a lone surrogate has none), its
    numbers as float64 (an int beyond float range has none), its seq as int64."""
    try:
        for t in (r.site, r.gateway, r.device, *r.values, *(v for v in r.values.values() if isinstance(v, str))):
            t.encode("utf-8")
        for v in r.values.values():
            if not isinstance(v, str) and v is not None:
                float(v)
    except (UnicodeEncodeError, OverflowError):
        return False
    return r.seq is None or -(2**63) <= r.seq < 2**63


def stored_number(v) -> float:
    """A number as the store gives it back: float64 (an int rounded to the nearest, a bool
    1.0 or 0.0), and -0.0 as 0.0: SQLite keeps a REAL with no fraction as an integer, which
    has no sign. Pinned: -0.0 and 0.0 are different text in an input hash."""
    x = float(v)
    return 0.0 if x == 0 else x


class Model:
    def __init__(self):
        self.cells: dict[tuple[str, str, str, int], Cell] = {}
        self.seen: dict[tuple[str, str], tuple[int, str]] = {}  # (site, device) -> (last ms, its gateway)

    def write(self, batch: list[Reading]) -> list[Reading]:
        """Store a batch in order, channel by channel; return the readings refused."""
        refused = []
        for r in batch:
            if not storable(r):
                refused.append(r)
                continue
            ms = to_ms(r.ts)
            for c, v in r.values.items():
                q = r.quality[c].value if c in r.quality else None
                number = None if v is None or isinstance(v, str) else stored_number(v)
                self.cells[r.site, r.device, c, ms] = Cell(r.gateway, number, v if isinstance(v, str) else None, q)
            # a row per message: the instant's other channels, kept from an earlier message, now name
            # this one's gateway (by design; processing reads no gateway)
            for key, cell in self.cells.items():
                if key[0] == r.site and key[1] == r.device and key[3] == ms and cell.gateway != r.gateway:
                    self.cells[key] = dataclasses.replace(cell, gateway=r.gateway)
            if (r.site, r.device) not in self.seen or self.seen[r.site, r.device][0] <= ms:  # a tie: the later
                self.seen[r.site, r.device] = (ms, r.gateway)
        return refused

    def _numbers(self, site, lo, hi, wanted) -> list[tuple]:
        """(ms, device, channel, cell) of the non-text values of ``site`` with lo <= ms < hi
        whose (device, channel) is ``wanted``, by ms, device, channel."""
        return sorted((ms, d, c, cell) for (s, d, c, ms), cell in self.cells.items()
                      if s == site and lo <= ms < hi and cell.text is None and wanted(d, c))

    def read(self, site, start, end, channels=None, devices=None, sources=None, limit=None) -> pd.DataFrame:
        # an empty list of channels or devices narrows nothing; an empty list of sources reads nothing
        pairs = None if sources is None else {tuple(s.split(".", 1)) for s in sources}
        rows = self._numbers(site, to_ms(start), to_ms(end), lambda d, c: (not channels or c in channels)
                             and (not devices or d in devices) and (pairs is None or (d, c) in pairs))
        return read_frame(site, rows[:limit])

    def read_sources(self, site, start, end, sources) -> dict[str, pd.DataFrame]:
        return {s: source_frame(self._numbers(site, to_ms(start), to_ms(end),
                                              lambda d, c, s=s: (d, c) == tuple(s.split(".", 1))))
                for s in sources}

    def latest(self, site) -> pd.DataFrame:
        last: dict[tuple[str, str], int] = {}
        for s, d, c, ms in self.cells:
            if s == site:
                last[d, c] = max(ms, last.get((d, c), ms))
        rows = []
        for (d, c), ms in sorted(last.items()):
            cell = self.cells[site, d, c, ms]
            rows.append((ms, site, cell.gateway, d, c, cell.text if cell.number is None else cell.number,
                         cell.quality))
        return latest_frame(rows)

    def devices(self, site=None) -> list[DeviceSeen]:
        return [DeviceSeen(s, g, d, EPOCH + dt.timedelta(milliseconds=ms))
                for (s, d), (ms, g) in sorted(self.seen.items()) if not site or s == site]

    def count(self) -> int:
        return len(self.cells)


# The frames are made from the model's Python values by the pandas calls that fix each reader's
# dtypes today, so that a new layout must give the same dtypes, not only equal values. With
# pandas 3.1: ``ts`` datetime64[us, UTC] (latest's, when empty, [s]); text columns ``str``, with
# NaN for a missing quality, and object when the frame is empty; read's ``value`` float64 with
# NaN for null; latest's ``value`` float64 when all are numbers, else object (float, str, None);
# read_sources' ``quality`` object with None.

def _utc(ms) -> pd.DatetimeIndex:
    return pd.to_datetime(np.array(ms, np.int64), unit="ms", utc=True)


def read_frame(site: str, rows: list[tuple]) -> pd.DataFrame:
    """``read``'s frame of (ms, device, channel, cell) rows: its columns as arrays."""
    def objects(xs):
        return np.array(list(xs), dtype=object)

    return pd.DataFrame({
        "ts": _utc([r[0] for r in rows]), "site": objects(site for _ in rows),
        "gateway": objects(r[3].gateway for r in rows), "device": objects(r[1] for r in rows),
        "channel": objects(r[2] for r in rows),
        "value": np.array([np.nan if r[3].number is None else r[3].number for r in rows], float),
        "quality": objects(r[3].quality for r in rows)}, columns=READ_COLUMNS)


def source_frame(rows: list[tuple]) -> pd.DataFrame:
    """``read_sources``' frame of one source's (ms, device, channel, cell) rows."""
    return pd.DataFrame({"ts": _utc([r[0] for r in rows]),
                         "value": np.array([np.nan if r[3].number is None else r[3].number for r in rows], float),
                         "quality": pd.Series(np.array([r[3].quality for r in rows], object), dtype=object)})


def latest_frame(rows: list[tuple]) -> pd.DataFrame:
    """``latest``'s frame: the frame pandas makes of its rows of Python values."""
    df = pd.DataFrame(rows, columns=READ_COLUMNS)
    df["ts"] = pd.to_datetime(df["ts"], unit="ms", utc=True)
    return df


def assert_same_frame(got: pd.DataFrame, want: pd.DataFrame, what: str) -> None:
    """Equal to the bit: dtypes, column and row order, the index, NaN against None, -0.0
    against 0.0, 1.0 against 1."""
    pd.testing.assert_frame_equal(got, want, check_exact=True, check_index_type=True, obj=what)
    for c in want.columns:
        if want[c].dtype.kind == "f":
            assert got[c].to_numpy().tobytes() == want[c].to_numpy().tobytes(), (what, c)
        elif want[c].dtype.kind != "M":
            assert [repr(x) for x in got[c].tolist()] == [repr(x) for x in want[c].tolist()], (what, c)


@st.composite
def read_queries(draw) -> dict:
    window = st.sampled_from((BEFORE, *INSTANTS, AFTER))
    pairs = [f"{d}.{c}" for d in DEVICES for c in CHANNELS] + ["m9.a", "m1.zz"]
    return {"site": draw(st.sampled_from(SITES)), "start": draw(window), "end": draw(window),
            "channels": draw(st.none() | st.lists(st.sampled_from((*CHANNELS, "zz")), max_size=3)),
            "devices": draw(st.none() | st.lists(st.sampled_from((*DEVICES, "m9")), max_size=2)),
            "sources": draw(st.none() | st.lists(st.sampled_from(pairs), max_size=4)),
            "limit": draw(st.none() | st.integers(0, 8))}


def check_readers(store: SqliteStore, model: Model, data, full: bool = True) -> None:
    """Every reader of ``store`` against the model, the cheap first; ``full``: also reads that
    cut by limit, by window and by source, and a few drawn reads."""
    assert store.count() == model.count(), "count()"
    for site in (None, "", "s1", "s2", "s9"):
        assert store.devices(site) == model.devices(site), f"devices({site!r})"
    for site in ("s1", "s2", "s9"):
        assert_same_frame(store.latest(site), model.latest(site), f"latest({site})")
        want = model.read(site, BEFORE, AFTER)
        assert_same_frame(store.read(site, BEFORE, AFTER), want, f"read({site})")
        if not full:
            continue
        # limits that cut inside an instant (the first, a middle and the last such cut), and at each end
        inside = [i for i in range(1, len(want)) if want.ts[i] == want.ts[i - 1]]
        cuts = {0, 1, len(want), len(want) + 1, *inside[:1], *inside[len(inside) // 2:][:1], *inside[-1:]}
        for limit in sorted(cuts):
            assert_same_frame(store.read(site, BEFORE, AFTER, limit=limit),
                              model.read(site, BEFORE, AFTER, limit=limit), f"read({site}, limit={limit})")
        # windows that start or end at a stored instant (of text too): start inclusive, end exclusive
        for ms in sorted({ms for s, _, _, ms in model.cells if s == site}):
            at = EPOCH + dt.timedelta(milliseconds=ms)
            for start, end in ((at, AFTER), (BEFORE, at), (at, at + dt.timedelta(milliseconds=1))):
                assert_same_frame(store.read(site, start, end), model.read(site, start, end),
                                  f"read({site}, {start}, {end})")
        # every pair the site has, text only or not, and one it has not
        sources = sorted({f"{d}.{c}" for s, d, c, _ in model.cells if s == site}) + ["m9.a"]
        check_sources(store, model, site, BEFORE, AFTER, sources)
    if not full:
        return
    for q in data.draw(st.lists(read_queries(), min_size=1, max_size=4), label="reads"):
        assert_same_frame(store.read(**q), model.read(**q), f"read(**{q})")
        if q["sources"] is not None:
            check_sources(store, model, q["site"], q["start"], q["end"], q["sources"])


def check_sources(store: SqliteStore, model: Model, site, start, end, sources) -> None:
    got, want = store.read_sources(site, start, end, sources), model.read_sources(site, start, end, sources)
    assert list(got) == list(want)
    for src in want:
        assert_same_frame(got[src], want[src], f"read_sources({site}, {start}, {end})[{src}]")


def check_write(store: SqliteStore, model: Model, batch: list[Reading]) -> None:
    refused = store.write(batch)
    assert [r for r, _ in refused] == model.write(batch)
    assert all(isinstance(why, str) and why for _, why in refused)


EXAMPLES = fuzz_examples(40)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: an example takes up to about 0.15 s on a busy machine: a long run needs more than the usual timeout
LONG_RUN = pytest.mark.timeout(max(300, EXAMPLES // 2))


@pytest.mark.fuzz
@LONG_RUN
@SETTINGS
@given(workloads(), st.data())
def test_readers_agree_with_the_model(batches, data):
    model = Model()
    with tempfile.TemporaryDirectory() as d:
        store = SqliteStore(Path(d) / "jcm.db")
        try:
            for i, batch in enumerate(batches, 1):
                check_write(store, model, batch)
                check_readers(store, model, data, full=i == len(batches))
        finally:
            store.close()


def write_v1(path: Path, batches: list[list[Reading]]) -> list[Reading]:
    """A v1 store file of ``batches``, a transaction per batch and a reading SQLite cannot
    hold left out; return those left out."""
    db = sqlite3.connect(path, isolation_level=None)
    refused = []
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(row_per_value.SCHEMA)
        for batch in batches:
            db.execute("BEGIN IMMEDIATE")
            for r in batch:
                db.execute("SAVEPOINT one")
                try:
                    db.executemany(row_per_value.UPSERT, row_per_value.value_rows(r, to_ms(r.ts)))
                    db.execute(SEEN, (r.site, r.device, r.gateway, to_ms(r.ts), r.status.value))
                except (sqlite3.Error, ValueError, OverflowError):
                    db.execute("ROLLBACK TO one")
                    refused.append(r)
                db.execute("RELEASE one")
            db.execute("COMMIT")
    finally:
        db.close()
    return refused


@pytest.mark.fuzz
@LONG_RUN
@SETTINGS
@given(workloads(), st.data())
def test_a_v1_store_reads_as_the_model_says_and_takes_more(batches, data):
    """A file of the v1 layout, opened by the current code: read as written, then written on
    (a later message of an instant the file holds merges with it channel by channel)."""
    split = data.draw(st.integers(1, len(batches)), label="batches written in the v1 layout")
    # a v1 file keeps a gateway per value, the row per message one per instant, and which message
    # came last is not in the file: converted, an instant takes its highest seq's gateway. One
    # gateway in the v1 part, as a site's device has (the collector refuses any other gateway).
    batches = [[dataclasses.replace(r, gateway="gw1") for r in batch] for batch in batches[:split]] + batches[split:]
    model = Model()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "jcm.db"
        assert write_v1(path, batches[:split]) == [r for batch in batches[:split] for r in model.write(batch)]
        store = SqliteStore(path, create=False)
        try:
            check_readers(store, model, data)
            for i, batch in enumerate(batches[split:], split + 1):
                check_write(store, model, batch)
                check_readers(store, model, data, full=i == len(batches))
        finally:
            store.close()


def test_a_later_message_of_an_instant_merges_with_the_earlier_channel_by_channel(tmp_path):
    """The trap of a row per message, spelt out: a channel only the earlier message had stays,
    a channel both had takes the later value, and a number may become text."""
    store, model = SqliteStore(tmp_path / "jcm.db"), Model()
    first = Reading("s1", "gw1", "m1", T0, {"a": 1.0, "b": 2.0, "c": -0.0}, {"b": Quality.out_of_range}, {},
                    DeviceStatus.ok, 1)
    second = Reading("s1", "gw2", "m1", T0, {"b": "x", "c": 2**53 + 1, "d": None}, {"d": Quality.timeout}, {},
                     DeviceStatus.ok, 2)
    check_write(store, model, [first])
    check_write(store, model, [second])
    got = store.read("s1", BEFORE, AFTER)  # b is text now: served by latest only
    assert (got.channel.tolist(), got.gateway.tolist()) == (["a", "c", "d"], ["gw2", "gw2", "gw2"])  # one a message
    assert got.value.tolist()[:2] == [1.0, 2.0**53] and math.isnan(got.value[2])
    assert store.latest("s1").value.tolist()[:3] == [1.0, "x", 2.0**53]
    assert store.count() == 4
    assert_same_frame(got, model.read("s1", BEFORE, AFTER), "read")
    assert_same_frame(store.latest("s1"), model.latest("s1"), "latest")
    store.close()


def test_a_minus_zero_reads_back_as_zero(tmp_path):
    """Pinned: the row-per-value layout gives -0.0 back as 0.0 (SQLite keeps a REAL with no
    fraction as an integer), and an input hash of the value is that of 0.0."""
    store = SqliteStore(tmp_path / "jcm.db")
    store.write([Reading("s1", "gw1", "m1", T0, {"a": -0.0}, {}, {}, DeviceStatus.ok, 1)])
    for value in (store.read("s1", BEFORE, AFTER).value[0], store.latest("s1").value[0],
                  store.read_sources("s1", BEFORE, AFTER, ["m1.a"])["m1.a"].value[0]):
        assert value == 0.0 and math.copysign(1.0, value) == 1.0
    store.close()
