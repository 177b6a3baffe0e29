"""InfluxDB store: line protocol in, InfluxQL out, the one pair every version serves.

Writes go to ``/api/v2/write`` through influxdb-client with SYNCHRONOUS writes
(served by InfluxDB 1.8+, 2.x and 3.x), or with ``api=v1`` the same lines to
``/write`` for InfluxDB 1.x before 1.8. Reads are InfluxQL on ``/query``
(1.x; 2.x through its v1 compatibility API with token auth; 3.x), in chunks of
``chunk_hours`` because InfluxDB 3 Core limits a query's time range.

Schema: measurement ``reading``, tags site, gateway, device; one field per channel
(numbers and booleans as floats, text as strings), plus ``quality`` (JSON of the
flagged channels), ``status`` and ``seq``; one point per device poll at its
millisecond timestamp, so a replay overwrites the same point. A channel named like a
tag or one of those fields would overwrite it, so such a reading is refused.

Signed messages (chain of custody) are measurement ``signed_message``, tags site,
gateway, epoch, at the time ``seq`` nanoseconds (near 1970: the database's retention
policy must keep everything, as the default ``autogen`` does), fields ``ts`` [ms],
``hash``, ``prev``, ``key`` and ``raw`` (the bytes as received, base64): a chain's
messages are found by seq through the time index, and come in seq order.

A reading that cannot be written as it is (it does not render as line protocol, or
InfluxDB answers 4xx about the data) is refused on its own: the batch is halved until
the guilty points are alone, and the rest is stored.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import math
import operator
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from urllib.parse import SplitResult, urlencode

import numpy as np
import pandas as pd
import urllib3
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from contract import topics
from contract.float_text import joined_float_texts
from contract.gc_paused import gc_paused
from contract.message import MAX_SEQ, DeviceStatus, Reading
from contract.sqlite_file import UnusableFile
from contract.store import (LETTER_PAGE, READ_COLUMNS, Books, CustodyFinding, DeadLetter, DeviceSeen, Link,
                            ReadUnsupported, SeqBlock, SeqMark, SeqRange, SequenceFinding, SignedMessage,
                            StoreUnavailable, finding_filters, pages_by_instant, range_blocks, seq_spans, source_pairs,
                            to_ms, union_blocks)

MEASUREMENT = "reading"
DEAD = "dead_letter"
#: sequence bookkeeping: blocks of stored seqs (tags site, gateway, epoch, writer; one point per
#: writer's block at the time ``block`` [ns], which a later write of it replaces) and the
#: collector's findings (at the time first noticed)
BLOCKS = "sequence_block"
FINDINGS = "sequence_finding"
#: how far each epoch is judged (``SeqMark``): tags site, gateway, epoch, writer; field ``seq``;
#: one point per writer at the time 0, which its later writes replace; the reader takes the highest
MARKS = "sequence_mark"
#: what stores written before blocks kept: one point per writer's run of seqs
OLD_RANGES = "sequence_range"
#: of those, read per query when they become blocks
MIGRATION_PAGE = 50_000
#: signed messages: tags site, gateway, epoch; at the time ``seq`` [ns], so that a chain's
#: messages are found by seq with the time index and read in seq order
MESSAGES = "signed_message"
CUSTODY_FINDINGS = "custody_finding"
#: a chain's seqs read per query
MESSAGE_PAGE = 1000
_META = {"quality", "status", "seq"}
#: names a channel may not have: the tags, the metadata fields and InfluxQL's time column
_NOT_CHANNELS = _META | {"site", "gateway", "device", "time"}


def _env(name: str | None) -> str | None:
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"store URL names environment variable {name}, which is not set")
    return value


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '\\"') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


#: line protocol escapes (InfluxDB's line-protocol reference): tag keys and values and field
#: keys escape these, a measurement the same but ``=``, a string field value only ``"`` and ``\\``
_ESCAPE_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_STRING = str.maketrans({'"': r'\"', "\\": r"\\"})


def _tag_value(value: str) -> str:
    text = value.translate(_ESCAPE_KEY)
    # a trailing backslash would escape the space that ends the tag set
    return text + " " if text.endswith("\\") else text


def _float(value: float) -> str | None:
    if not math.isfinite(value):
        return None
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text  # 5.0 as 5: the shortest form, still a float


def _field_value(value: float | int | bool | str) -> str | None:
    """A field's value in line protocol; ``None`` for what is not written (null, NaN, inf)."""
    if isinstance(value, str):
        return '"' + value.translate(_ESCAPE_STRING) + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):  # numpy's float64 too, whose repr names its type
        return _float(float(value))
    if value is None:
        return None
    raise ValueError(f"a field value of type {type(value).__name__} has no line-protocol form")


_KEYS: dict[str, str] = {}


def _key(name: str) -> str:
    """A tag or field key escaped; the few names a store sees are escaped once each."""
    text = _KEYS.get(name)
    if text is None:
        text = name.translate(_ESCAPE_KEY)
        if len(_KEYS) < 4096:  # bounded: keys come from senders' channel names
            _KEYS[name] = text
    return text


def _series(measurement: str, tags: dict[str, str]) -> str:
    """The measurement and tag set of a point (empty tags left out)."""
    tag_set = "".join(f",{_key(k)}={_tag_value(v)}" for k, v in sorted(tags.items()) if k and v)
    return f"{measurement.translate(_ESCAPE_MEASUREMENT)}{tag_set}"


def line_protocol(measurement: str, tags: dict[str, str], fields: dict, stamp: int) -> str:
    """One point in line protocol at ``stamp`` [since the epoch, in the write's precision:
    ms for readings]: what ``influxdb_client.Point(...).to_line_protocol()`` renders (tags
    and fields sorted by key, empty tags, null and non-finite fields left out) in two
    thirds of its time (16 against 24 us for a 20-channel reading)."""
    out = []
    for k, v in sorted(fields.items()):
        text = _float(v) if type(v) is float else _field_value(v)  # a float is the usual value
        if text is not None:
            out.append(f"{_key(k)}={text}")
    if not out:
        raise ValueError("a point needs at least one field")
    return f"{_series(measurement, tags)} {','.join(out)} {stamp}"


#: a reading's series (measurement and tags) by (site, gateway, device); bounded: ids come from senders
_SERIES: dict[tuple[str, str, str], str] = {}
#: a reading's fields beside its channels
_META_FIELDS = ("quality", "seq", "status")
#: per layout of a reading's channels (their names in the message's order): what picks
#: their values in key order, how many, and the template of the field set with the fields
#: above in their places; ``None`` for channels named like a tag or one of those fields.
#: Bounded: layouts come from senders (a site has one per register map)
_LAYOUTS: dict[tuple[str, ...], tuple[Callable[[dict], tuple], int, str] | None] = {}


def _layout(names: tuple[str, ...]) -> tuple[Callable[[dict], tuple], int, str] | None:
    if names in _LAYOUTS:
        return _LAYOUTS[names]
    layout = None
    if names and all(type(k) is str for k in names) and _NOT_CHANNELS.isdisjoint(names):
        keys = sorted(names)
        slot = {k: i for i, k in enumerate(keys)} | {k: len(keys) + i for i, k in enumerate(_META_FIELDS)}
        template = ",".join(f"{_key(k).replace('{', '{{').replace('}', '}}')}={{{slot[k]}}}"
                            for k in sorted(slot))
        getter = operator.itemgetter(*keys) if len(keys) > 1 else (lambda values, k=keys[0]: (values[k],))
        layout = getter, len(keys), template
    if len(_LAYOUTS) < 4096:
        _LAYOUTS[names] = layout
    return layout


def _all_finite_floats(values: list[float] | tuple[float, ...]) -> bool:
    # a sum of finite floats that is finite proves each finite (inf and nan propagate)
    return set(map(type, values)) == {float} and math.isfinite(sum(values))


def reading_lines(readings: Sequence[Reading]) -> list[bytes | Exception]:
    """Each reading's line as ``reading_line`` renders it, encoded, or the error that keeps it
    from having one. The usual readings (every value a finite float) are rendered together: their
    values picked in key order by their layout's getter, the texts of all of them made in
    one call and cut apart once (a float's text holds no comma), each line one ``format`` of
    its layout's template (~2.5 against 5.5 us a 20-channel reading one by one)."""
    out: list[bytes | Exception | None] = [None] * len(readings)
    floats: list[float] = []
    usual = []  # (position, reading, layout, its values' first index in floats)
    for i, r in enumerate(readings):
        names = tuple(r.values)
        layout = _LAYOUTS.get(names) or _layout(names)
        if layout is not None:
            usual.append((i, r, layout, len(floats)))
            floats += layout[0](r.values)
    if not _all_finite_floats(floats):  # a value of another kind somewhere: those readings alone take the other way
        kept, usual, floats = usual, [], []
        for i, r, layout, _ in kept:
            values = layout[0](r.values)
            if _all_finite_floats(values):
                usual.append((i, r, layout, len(floats)))
                floats += values
    # one join, one replace (5.0 as 5, as _float renders it) and one split
    texts = (joined_float_texts(floats) + ",").replace(".0,", ",").split(",")
    for i, r, (_, n, template), first in usual:
        ts = r.ts if r.ts.tzinfo is not None else r.ts.replace(tzinfo=dt.UTC)  # naive means UTC, as Point reads it
        quality = _field_value(json.dumps({k: q.value for k, q in sorted(r.quality.items())}, separators=(",", ":"))
                               ) if r.quality else '"{}"'
        # an enum's hash is a Python function: its members are told apart by identity
        status = '"ok"' if r.status is DeviceStatus.ok else _field_value(r.status.value)
        fields = template.format(*texts[first:first + n], quality, f"{int(r.seq or 0)}i", status)
        series = _reading_series(r)
        try:
            # the millisecond the SQLite store gives it (to_ms), so that an input hash computed from
            # either store, as ``jcm verify`` recomputes it from the signed messages, is the same
            out[i] = f"{series} {fields} {to_ms(ts)}".encode()
        except UnicodeEncodeError:  # a lone surrogate in a name: refused below, as it is alone
            pass
    for i, r in enumerate(readings):
        if out[i] is None:
            try:
                out[i] = reading_line(r).encode()
            # OverflowError: an int beyond a float; UnicodeEncodeError (a ValueError): a lone surrogate
            except (ValueError, TypeError, OverflowError) as exc:
                out[i] = exc
    return out


def _reading_series(r: Reading) -> str:
    tags = (r.site, r.gateway, r.device)
    series = _SERIES.get(tags)
    if series is None:
        series = _series(MEASUREMENT, dict(zip(("site", "gateway", "device"), tags)))
        if len(_SERIES) < 4096:  # bounded: ids come from senders
            _SERIES[tags] = series
    return series


def reading_line(r: Reading) -> str:
    """A reading as one point of ``MEASUREMENT``: numbers and booleans as floats, text as
    strings, with its quality, status and seq; ``ValueError`` for a channel named like a tag
    or one of those fields. (``reading_lines`` renders the usual readings faster, the same.)"""
    if not _NOT_CHANNELS.isdisjoint(r.values):
        channel = min(_NOT_CHANNELS.intersection(r.values))
        raise ValueError(f"channel '{channel}' would overwrite the point's own '{channel}'")
    quality = (json.dumps({k: q.value for k, q in sorted(r.quality.items())}, separators=(",", ":"))
               if r.quality else "{}")
    ts = r.ts if r.ts.tzinfo is not None else r.ts.replace(tzinfo=dt.UTC)  # naive means UTC, as Point reads it
    values: dict[str, float | int | str] = {
        channel: v if type(v) is float or isinstance(v, str) else float(v)
        for channel, v in r.values.items() if v is not None}
    values.update(quality=quality, status=r.status.value, seq=int(r.seq or 0))
    return line_protocol(MEASUREMENT, {"site": r.site, "gateway": r.gateway, "device": r.device}, values,
                         to_ms(ts))


def message_line(m: SignedMessage) -> bytes:
    """A signed message as one point of ``MESSAGES`` at its seq [ns]: a chain is read in seq order."""
    return line_protocol(MESSAGES, {"site": m.site, "gateway": m.gateway, "epoch": m.epoch},
                         {"ts": _ms(m.ts), "hash": m.hash, "prev": m.prev, "key": m.key_id,
                          "raw": base64.b64encode(m.raw).decode()}, m.seq).encode()


class InfluxStore:
    def __init__(self, base_url: str, api: str = "v2", db: str = "jcm", bucket: str | None = None,
                 org: str = "jcm", token: str | None = None, username: str | None = None,
                 password: str | None = None, chunk_hours: float = 24.0, timeout_s: float = 10.0):
        if api not in ("v1", "v2"):
            raise ValueError(f"store URL: api must be v1 or v2, not '{api}'")
        self.base_url, self.api, self.db = base_url.rstrip("/"), api, db
        self.bucket, self.org = bucket or db, org
        self.chunk = dt.timedelta(hours=chunk_hours)
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout_s), retries=False)
        self.headers = {}
        self.auth = {}
        if token:
            self.headers["Authorization"] = f"Token {token}"
        elif username:
            self.auth = {"u": username, "p": password or ""}
        self.client = None
        #: a dead letter's nanoseconds below its microsecond: letters of one instant (the lines of
        #: a batch message) written in several writes must not replace each other
        self._letter_n = itertools.count()
        self._ranges_moved = False
        if api == "v2":
            # InfluxDB 1.8+ takes "user:password" as the token of its v2 write endpoint
            v2_token = token if token or not username else f"{username}:{password or ''}"
            self.client = InfluxDBClient(url=self.base_url, token=v2_token, org=org, timeout=int(timeout_s * 1000))
            self.write_api = self.client.write_api(write_options=SYNCHRONOUS)

    @classmethod
    def from_url(cls, parts: SplitResult, query: dict[str, str]) -> InfluxStore:
        scheme = "https" if parts.scheme == "influxdbs" else "http"
        known = {"api", "db", "bucket", "org", "token_env", "username_env", "password_env", "chunk_hours", "timeout"}
        unknown = set(query) - known
        if unknown:
            raise ValueError(f"store URL: unknown parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return cls(
            f"{scheme}://{parts.hostname}:{parts.port or 8086}", api=query.get("api", "v2"),
            db=query.get("db", "jcm"), bucket=query.get("bucket"), org=query.get("org", "jcm"),
            token=_env(query.get("token_env")), username=_env(query.get("username_env")),
            password=_env(query.get("password_env")), chunk_hours=float(query.get("chunk_hours", 24)),
            timeout_s=float(query.get("timeout", 10)),
        )

    def check_database(self) -> None:
        """Refuse a database that does not exist; a server that cannot be reached is left to
        the first read (the live view keeps running while the database is down)."""
        try:
            # a data query, which every version answers with "database not found" (SHOW queries need not)
            self.query(f"SELECT * FROM {_q(MEASUREMENT)} WHERE time > now() - 1m LIMIT 1")
        except StoreUnavailable as exc:
            if "database not found" in str(exc):
                raise UnusableFile(f"store {self.base_url}: database '{self.db}' does not exist: check the store "
                                   "URL's db= (the collector writes to it)") from None

    # -- writing --------------------------------------------------------------------
    def _post_lines(self, lines: list[bytes], precision: str) -> None:
        """Write line protocol; raise StoreUnavailable (retry) or ValueError (the data is refused)."""
        body = b"\n".join(lines)
        try:
            if self.api == "v2":
                self.write_api.write(self.bucket, self.org, body, write_precision=precision)
                return
            params = urlencode({"db": self.db, "precision": precision, **self.auth})
            resp = self.http.request("POST", f"{self.base_url}/write?{params}", body=body, headers=self.headers)
        except ApiException as exc:
            if 400 <= exc.status < 500 and exc.status not in (401, 403, 404, 408, 429):
                raise ValueError(f"InfluxDB refused the write ({exc.status}): {exc.body}") from None
            raise StoreUnavailable(f"InfluxDB {self.base_url}: {exc.status} {exc.reason}") from exc
        except Exception as exc:  # connection refused, timeouts, DNS: all retryable
            raise StoreUnavailable(f"InfluxDB {self.base_url}: {exc}") from exc
        if resp.status in (200, 204):
            return
        text = resp.data.decode(errors="replace")[:300]
        if 400 <= resp.status < 500 and resp.status not in (401, 403, 404, 408, 429):
            raise ValueError(f"InfluxDB refused the write ({resp.status}): {text}")
        raise StoreUnavailable(f"InfluxDB {self.base_url}: HTTP {resp.status}: {text}")

    def _post_isolating(self, items: list, lines: list[bytes], precision: str) -> list[tuple[object, str]]:
        """Post lines; if InfluxDB refuses them for their data, halve until each refused
        line is alone. Return the items of the refused lines, with InfluxDB's reason."""
        try:
            self._post_lines(lines, precision)
            return []
        except ValueError as exc:
            if len(lines) == 1:
                return [(items[0], str(exc))]
        half = len(lines) // 2
        return (self._post_isolating(items[:half], lines[:half], precision)
                + self._post_isolating(items[half:], lines[half:], precision))

    def write(self, readings: list[Reading], dead_letters: list[DeadLetter] = (),
              messages: Sequence[SignedMessage] = (),
              books: Books | None = None) -> list[tuple[Reading, str]]:
        refused: list[tuple[Reading, str]] = []
        rendered, lines = [], []
        for r, line in zip(readings, reading_lines(readings)):
            if isinstance(line, bytes):
                lines.append(line)
                rendered.append(r)
            else:
                refused.append((r, f"not writable as InfluxDB line protocol: {type(line).__name__}: {line}"))
        if lines:
            refused += self._post_isolating(rendered, lines, WritePrecision.MS)
        if messages:
            gone = {(r.site, r.gateway, r.epoch, r.seq): why for r, why in refused}
            kept = [m for m in messages if (m.site, m.gateway, m.epoch, m.seq) not in gone]
            by_key = {(r.site, r.gateway, r.epoch, r.seq): r for r in rendered}
            # a message InfluxDB refuses makes its reading refused too (a dead letter), though its point is written
            refused += [(by_key[(m.site, m.gateway, m.epoch, m.seq)], f"its signed message: {why}") for m, why in
                        self._post_isolating(kept, [message_line(m) for m in kept], WritePrecision.NS)]
        if dead_letters:
            lines = []
            for d in dead_letters:
                p = (Point(DEAD).field("topic", d.topic).field("reason", d.reason)
                     .field("payload", base64.b64encode(d.payload).decode()).field("size", d.size)
                     .field("sha256", d.sha256))
                ns = _letter_ns(d.received) + next(self._letter_n) % 1000
                lines.append(p.time(ns, WritePrecision.NS).to_line_protocol().encode())
            # a dead letter is printable text and base64 by construction: if InfluxDB refuses
            # one, the ValueError goes to the caller, which isolates it
            self._post_lines(lines, WritePrecision.NS)
        if books is not None:  # no transaction to share: after the readings, as ``record_seq_blocks`` would be
            self.record_seq_blocks(books(refused))
        return refused

    def record_seq_blocks(self, blocks: list[SeqBlock]) -> None:
        lines = [f'{BLOCKS}{_epoch_tags(b)} bits="{base64.b64encode(b.bits_bytes()).decode()}",'
                 f'times="{base64.b64encode(b.times_bytes()).decode()}" {b.block}'.encode() for b in blocks]
        if lines:
            self._post_sequence(lines, WritePrecision.NS)

    def record_seq_marks(self, marks: list[SeqMark]) -> None:
        lines = [f"{MARKS}{_epoch_tags(m)} seq={m.seq}i 0".encode() for m in marks]
        if lines:
            self._post_sequence(lines, WritePrecision.NS)

    def seq_marks(self, site, gateway) -> dict[str, int]:
        series = self.query(f'SELECT max("seq") FROM {_q(MARKS)} WHERE "site" = {_lit(site)} AND '
                            f'"gateway" = {_lit(gateway)} GROUP BY "epoch"', "ns")
        return {s.get("tags", {}).get("epoch", ""): s["values"][0][1] for s in series}

    def seq_tops(self, site, gateway) -> dict[str, int]:
        self._blocks_from_ranges()
        series = self.query(f'SELECT last("bits") FROM {_q(BLOCKS)} WHERE "site" = {_lit(site)} AND '
                            f'"gateway" = {_lit(gateway)} GROUP BY "epoch"', "ns")
        return {s.get("tags", {}).get("epoch", ""): s["values"][0][0] for s in series}

    def seq_blocks(self, site, gateway, epoch, first, last, limit=None) -> list[SeqBlock]:
        self._blocks_from_ranges()
        series = self.query(f'SELECT "bits", "times" FROM {_q(BLOCKS)} WHERE {self._chain(site, gateway, epoch)} '
                            f"AND time >= {first} AND time <= {last} GROUP BY \"writer\""
                            + (f" LIMIT {limit}" if limit is not None else ""), "ns")
        if limit is not None:  # the limit is each writer's: a writer cut short holds blocks past its last unread
            last = min([s["values"][-1][0] for s in series if len(s["values"]) >= limit], default=last)
        blocks = union_blocks(SeqBlock.from_bytes(site, gateway, epoch, n, base64.b64decode(bits),
                                                  base64.b64decode(times))
                              for s in series for n, bits, times in s["values"] if n <= last)
        return blocks[:limit]

    def _blocks_from_ranges(self) -> None:
        """A store written before blocks kept runs of seqs (measurement ``sequence_range``): the
        first read of the bookkeeping writes them as blocks (a writer of their own, so that two
        collectors doing it at once do not overwrite each other's) and drops them."""
        if self._ranges_moved:
            return
        blocks: list[SeqBlock] = []
        for offset in itertools.count(0, MIGRATION_PAGE):  # they were kept forever: in pages
            series = self.query(f'SELECT "first", "last", "first_ts", "last_ts" FROM {_q(OLD_RANGES)} GROUP BY '
                                f'"site", "gateway", "epoch" LIMIT {MIGRATION_PAGE} OFFSET {offset}')
            ranges = [SeqRange(t["site"], t["gateway"], t.get("epoch", ""), f, la, _from_ms(a), _from_ms(b))
                      for s in series for t in [s.get("tags", {})] for _, f, la, a, b in s["values"]]
            if not ranges:
                break
            blocks = union_blocks([*blocks, *range_blocks(ranges)])
        if blocks:
            writer = f"migrated-{time.time_ns()}-{os.getpid()}"
            for i in range(0, len(blocks), 1000):
                self.record_seq_blocks([replace(b, writer=writer) for b in blocks[i:i + 1000]])
            self.query(f"DROP MEASUREMENT {_q(OLD_RANGES)}")
        self._ranges_moved = True

    def record_finding(self, finding: SequenceFinding) -> None:
        f = finding
        p = (Point(FINDINGS).tag("site", f.site).tag("gateway", f.gateway).tag("epoch", f.epoch).tag("kind", f.kind)
             .field("first", f.first).field("last", f.last).field("cause", f.cause).field("explained", f.explained)
             .field("previous", f.previous).field("noticed", _ms(f.noticed)))
        for name, ts in (("start", f.start), ("end", f.end), ("resolved", f.resolved)):
            if ts is not None:
                p.field(name, _ms(ts))
        # at the time first - 1 [ns] (MAX_SEQ is past InfluxDB's last time): one point per identity,
        # recording it again (resolved) replaces it. Stores written before kept it at the time
        # noticed, where a check's gaps noticed within one millisecond were one point: all but one lost
        self._post_sequence([p.time(f.first - 1, WritePrecision.NS).to_line_protocol().encode()], WritePrecision.NS)

    def sequence_findings(self, site=None, *, gateway=None, epoch=None, kind=None) -> list[SequenceFinding]:
        named = finding_filters(site, gateway, epoch, kind)  # a tag = '' matches the points without it
        where = " WHERE " + " AND ".join(f'"{k}" = {_lit(v)}' for k, v in named) if named else ""
        series = self.query(f'SELECT * FROM {_q(FINDINGS)}{where} GROUP BY "site", "gateway", "epoch", "kind"')
        found: dict[tuple, SequenceFinding] = {}
        for s in series:
            tags = s.get("tags", {})
            for values in s["values"]:
                v = dict(zip(s["columns"], values))
                f = SequenceFinding(
                    tags["kind"], tags["site"], tags["gateway"], tags.get("epoch", ""), v["first"], v["last"],
                    _from_ms(v["time"] if v.get("noticed") is None else v["noticed"]), v["cause"], v["explained"], v["previous"] or "", _from_ms(v.get("start")),
                    _from_ms(v.get("end")), _from_ms(v.get("resolved")))
                key = (f.site, f.gateway, f.epoch, f.kind, f.first)
                # two collectors may record one finding at different times: keep the first, resolved if either is
                kept = found.get(key)
                if kept is None or (f.resolved and not kept.resolved) or (f.noticed < kept.noticed
                                                                          and bool(f.resolved) == bool(kept.resolved)):
                    found[key] = f
        return sorted(found.values(), key=lambda f: (f.noticed, f.gateway, f.epoch, f.first))

    def links(self, site, gateway, epoch, seqs: Iterable[int]) -> dict[int, Link]:
        out = {}
        wanted = set(seqs)
        for lo, hi in seq_spans(sorted(wanted), MESSAGE_PAGE):
            for s in self.query(f'SELECT "hash", "prev", "ts" FROM {_q(MESSAGES)} WHERE {self._chain(site, gateway, epoch)} '
                                f"AND time >= {lo} AND time <= {hi}", "ns"):
                out.update((seq, Link(h, p, _from_ms(ts))) for seq, h, p, ts in s["values"] if seq in wanted)
        return out

    def signed_messages(self, site, start, end) -> Iterator[bytes]:
        # the seqs of the period first (one column), then the bytes by seq spans, in seq order
        where = f'"site" = {_lit(site)} AND "ts" >= {_ms(start)} AND "ts" < {_ms(end)}'
        series = self.query(f'SELECT "ts" FROM {_q(MESSAGES)} WHERE {where} GROUP BY "gateway", "epoch"', "ns")
        chains = sorted(((s["tags"]["gateway"], s["tags"]["epoch"]), [seq for seq, _ in s["values"]]) for s in series)
        for (gateway, epoch), seqs in chains:
            wanted = set(seqs)
            for lo, hi in seq_spans(sorted(wanted), MESSAGE_PAGE):
                q = (f'SELECT "raw" FROM {_q(MESSAGES)} WHERE {self._chain(site, gateway, epoch)} '
                     f"AND time >= {lo} AND time <= {hi}")
                for s in self.query(q, "ns"):
                    yield from (base64.b64decode(raw) for seq, raw in s["values"] if seq in wanted)

    def chain_witness(self, site, gateway, epoch, seq, at, later=True) -> bytes | None:
        # a chain's points are at their seq [ns]: the first beyond ``seq`` in time order, or the last before it
        where = (f'time > {seq} AND "ts" >= {_ms(at)}' if later
                 else f'time < {seq} AND "ts" < {_ms(at)} ORDER BY time DESC')
        series = self.query(f'SELECT "raw" FROM {_q(MESSAGES)} WHERE {self._chain(site, gateway, epoch)} '
                            f'AND {where} LIMIT 1', "ns")
        return next((base64.b64decode(raw) for s in series for _, raw in s["values"]), None)

    @staticmethod
    def _chain(site: str, gateway: str, epoch: str) -> str:
        return f'"site" = {_lit(site)} AND "gateway" = {_lit(gateway)} AND "epoch" = {_lit(epoch)}'

    def record_custody_finding(self, finding: CustodyFinding) -> None:
        f = finding
        p = (Point(CUSTODY_FINDINGS).tag("site", f.site).tag("gateway", f.gateway).tag("epoch", f.epoch)
             .tag("kind", f.kind).field("seq", f.seq).field("ts", _ms(f.ts)).field("detail", f.detail)
             .field("noticed", _ms(f.noticed)))
        # at the time seq: one point per identity, recording it again replaces it; MAX_SEQ is one past
        # InfluxDB's last time (2262-04-11), and refused it would stop the collector: it is at -1, no seq's time
        at = -1 if f.seq == MAX_SEQ else f.seq
        self._post_sequence([p.time(at, WritePrecision.NS).to_line_protocol().encode()], WritePrecision.NS)

    def custody_findings(self, site=None) -> list[CustodyFinding]:
        where = f' WHERE "site" = {_lit(site)}' if site else ""
        series = self.query(f'SELECT "seq", "ts", "noticed", "detail" FROM {_q(CUSTODY_FINDINGS)}{where} '
                            'GROUP BY "site", "gateway", "epoch", "kind"')
        found = [CustodyFinding(s["tags"]["kind"], s["tags"]["site"], s["tags"]["gateway"], s["tags"]["epoch"], seq,
                                _from_ms(ts), _from_ms(noticed), detail)
                 for s in series for _, seq, ts, noticed, detail in s["values"]]
        return sorted(found, key=lambda f: (f.noticed, f.gateway, f.epoch, f.seq))

    def _post_sequence(self, lines: list[bytes], precision: str) -> None:
        try:
            self._post_lines(lines, precision)
        except ValueError as exc:  # built from validated ids and integers: a refusal means a broken store
            raise StoreUnavailable(str(exc)) from exc

    # -- reading --------------------------------------------------------------------
    def query(self, influxql: str, precision: str = "ms") -> list[dict]:
        """Run InfluxQL on /query; return the series of the first statement, times in ``precision``."""
        params = {"q": influxql, "db": self.db, "epoch": precision, **self.auth}
        try:
            resp = self.http.request("POST", f"{self.base_url}/query", fields=params, headers=self.headers,
                                     encode_multipart=False)
        except Exception as exc:
            raise StoreUnavailable(f"InfluxDB {self.base_url}: {exc}") from exc
        if resp.status != 200:
            raise StoreUnavailable(f"InfluxDB query failed: HTTP {resp.status}: {resp.data[:300]!r}")
        result = json.loads(resp.data)["results"][0]
        if "error" in result:
            raise StoreUnavailable(f"InfluxDB query error: {result['error']}")
        series = result.get("series", [])
        if result.get("partial") or any(s.get("partial") for s in series):
            # the server's [http] max-row-limit cut the answer: a read that lacks rows silently
            # would make figures wrong, a gap false or a chain look broken
            raise StoreUnavailable(f"InfluxDB {self.base_url} cut a query's answer short (partial: its [http] "
                                   "max-row-limit is below the rows one query reads): set max-row-limit = 0 "
                                   "(no limit) on the server (a smaller chunk_hours in the store URL helps reads "
                                   "of readings only, not the collector's bookkeeping nor dead letters)")
        if any(s.get("name") == "databases" for s in series) and not influxql.upper().startswith("SHOW DATABASES"):
            # VictoriaMetrics answers every InfluxQL query with its list of databases
            raise ReadUnsupported(f"{self.base_url} answers InfluxQL queries with its list of databases: it takes "
                                  "InfluxDB's writes but not its queries (VictoriaMetrics?)")
        return series

    def _where_site(self, site: str, devices: list[str] | None) -> str:
        where = f'"site" = {_lit(site)}'
        if devices:
            where += " AND (" + " OR ".join(f'"device" = {_lit(d)}' for d in devices) + ")"
        return where

    def read(self, site, start, end, channels=None, devices=None, sources=None, limit=None) -> pd.DataFrame:
        pairs = None if sources is None else set(source_pairs(channels, devices, sources))
        if pairs is not None:  # the fields and tags that hold them; other pairs are dropped below
            channels, devices = sorted({c for _, c in pairs}), sorted({d for d, _ in pairs})
            if not pairs:
                return _frame([])
        select = "*" if not channels else ", ".join(_q(c) for c in [*channels, "quality"])
        rows: list[tuple] = []
        t = start
        with gc_paused():
            while t < end and (limit is None or len(rows) < limit):
                stop = min(end, t + self.chunk)
                q = (f"SELECT {select} FROM {_q(MEASUREMENT)} WHERE {self._where_site(site, devices)} "
                     f"AND time >= {to_ns(t)} AND time < {to_ns(stop)} GROUP BY \"device\", \"gateway\"")
                for series in self.query(q):
                    got = _series_rows(series, site, channels, numeric_only=True)
                    rows += got if pairs is None else [r for r in got if (r[3], r[4]) in pairs]
                t = stop
            return _frame(rows).head(limit) if limit is not None else _frame(rows)

    def read_sources(self, site, start, end, sources) -> dict[str, pd.DataFrame]:
        # column by column from each series (one per device and gateway), never a row per
        # channel value: what ``read`` would keep of them, split by source
        wanted = source_pairs(None, None, sources)
        parts: dict[str, list] = {src: [] for src in sources}
        if not wanted:
            return {}
        channels, devices = sorted({c for _, c in wanted}), sorted({d for d, _ in wanted})
        select = ", ".join(_q(c) for c in [*channels, "quality"])
        t = start
        with gc_paused():
            while t < end:
                stop = min(end, t + self.chunk)
                q = (f"SELECT {select} FROM {_q(MEASUREMENT)} WHERE {self._where_site(site, devices)} "
                     f"AND time >= {to_ns(t)} AND time < {to_ns(stop)} GROUP BY \"device\", \"gateway\"")
                for series in self.query(q):
                    device = series.get("tags", {}).get("device")
                    columns = dict(zip(series["columns"], zip(*series["values"])))
                    quality = [json.loads(x) if x and x != "{}" else None for x in columns.get("quality", ())]
                    for channel in channels:
                        if f"{device}.{channel}" in parts and channel in columns:
                            parts[f"{device}.{channel}"].append((columns["time"], columns[channel], quality, channel))
                t = stop
            return {src: _source_frame(found) for src, found in parts.items()}

    def latest(self, site) -> pd.DataFrame:
        q = (f"SELECT * FROM {_q(MEASUREMENT)} WHERE \"site\" = {_lit(site)} "
             f"GROUP BY \"device\", \"gateway\" ORDER BY time DESC LIMIT 1")
        rows = []
        for series in self.query(q):
            rows += _series_rows(series, site, None, numeric_only=False)
        return _frame(rows).sort_values(["device", "channel"], ignore_index=True)

    def devices(self, site=None) -> list[DeviceSeen]:
        where = f" WHERE \"site\" = {_lit(site)}" if site else ""
        series = self.query(f'SELECT LAST("status") FROM {_q(MEASUREMENT)}{where} GROUP BY "site", "gateway", "device"')
        seen = [DeviceSeen(s["tags"]["site"], s["tags"]["gateway"], s["tags"]["device"],
                           dt.datetime.fromtimestamp(s["values"][0][0] / 1000, dt.UTC)) for s in series]
        return sorted(seen, key=lambda d: (d.site, d.device))

    def dead_letters(self, limit=100) -> list[DeadLetter]:
        return _letters(self.query(f"SELECT topic, payload, reason, size, sha256 FROM {_q(DEAD)} ORDER BY time DESC "
                                   f"LIMIT {int(limit)}", "ns"))

    def site_dead_letters(self, site, start, end) -> Iterator[DeadLetter]:
        prefix = f"{topics.ROOT}/{site}/"
        lo, hi = _letter_ns(start), _letter_ns(end)
        # the topic is a field: filtered by the server (another site's flood is not sent), and again here
        mine = "/^" + re.escape(prefix).replace("/", r"\/") + "/"
        select = (f"SELECT topic, payload, reason, size, sha256 FROM {_q(DEAD)} WHERE time >= {{}} AND time < {{}} "
                  f"AND topic =~ {mine}")

        def rows(query: str) -> list:
            return [row for s in self.query(query, "ns") for row in s["values"]]

        def read(after, inclusive):  # instants are microseconds: a letter's nanoseconds below keep it apart
            first = lo if after is None else (after if inclusive else after + 1) * 1000
            return rows(select.format(first, hi) + f" ORDER BY time LIMIT {LETTER_PAGE}")

        def at(us):
            return rows(select.format(us * 1000, (us + 1) * 1000))

        for page in pages_by_instant(read, at, lambda row: row[0] // 1000, LETTER_PAGE):
            yield from sorted((d for d in _letters([{"values": page}]) if d.topic.startswith(prefix)
                               and start <= d.received < end), key=lambda d: (d.received, d.sha256))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.http.clear()


def _epoch_tags(r: SeqBlock | SeqMark) -> str:
    """The tags of a sequence bookkeeping record. Line protocol has no empty tag: a sender
    without epochs has none (InfluxQL groups it as epoch "")."""
    return "".join(f",{k}={_tag_value(v)}" for k, v in (("site", r.site), ("gateway", r.gateway), ("epoch", r.epoch),
                                                        ("writer", r.writer)) if v)


def _letter_ns(t: dt.datetime) -> int:
    """A dead letter's time [ns] (the microseconds of ``received``, as written)."""
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def _letters(series: list[dict]) -> list[DeadLetter]:
    """The dead letters of a query's series of topic, payload, reason, size, sha256 (times in ns)."""
    out = []
    for s in series:
        for ns, topic, payload, reason, size, sha256 in s["values"]:
            # to the microsecond, as written (the nanoseconds below keep letters of one microsecond apart)
            received = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC) + dt.timedelta(
                microseconds=ns % 1_000_000_000 // 1000)
            if sha256 is None:  # kept whole, as text, before sizes were kept
                out.append(DeadLetter(received, topic, payload.encode("utf-8", "surrogateescape"), reason))
            else:
                out.append(DeadLetter(received, topic, base64.b64decode(payload), reason, int(size), sha256))
    return out


def _ms(ts: dt.datetime) -> int:
    return round(ts.timestamp() * 1000)


def _from_ms(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def to_ns(t: dt.datetime) -> str:
    return f"{_ms(t) * 1_000_000}"


def _series_rows(series: dict, site: str, channels, numeric_only: bool) -> list[tuple]:
    tags = series.get("tags", {})
    cols = series["columns"]
    rows = []
    for values in series["values"]:
        point = dict(zip(cols, values))
        quality = json.loads(point.get("quality") or "{}")
        names = channels or [c for c in cols if c != "time" and c not in _META]
        for channel in sorted(set(names) | (set(quality) if not channels else set())):
            v = point.get(channel)
            if numeric_only and isinstance(v, str):
                continue
            if v is None and channel not in quality:
                continue  # the channel was not part of this poll
            rows.append((point["time"], site, tags.get("gateway"), tags.get("device"), channel, v, quality.get(channel)))
    return rows


def _source_frame(parts: list[tuple]) -> pd.DataFrame:
    """``SOURCE_COLUMNS`` of one source from its series' columns (times, values, quality
    per point, channel): the points ``_series_rows`` keeps, a number or a flagged null."""
    ts, value, quality = [], [], []
    for times, values, flags, channel in parts:
        for i, v in enumerate(values):
            flag = flags[i].get(channel) if flags and flags[i] else None
            if isinstance(v, str) or (v is None and flag is None):
                continue
            ts.append(times[i])
            value.append(v)
            quality.append(flag)
    order = np.argsort(np.array(ts, np.int64), kind="stable")
    return pd.DataFrame({"ts": pd.to_datetime(np.array(ts, np.int64)[order], unit="ms", utc=True),
                         "value": np.array(value, float)[order],  # a null becomes NaN
                         "quality": pd.Series(np.array(quality, object)[order] if quality else [], dtype=object)})


def _frame(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=READ_COLUMNS)
    df["ts"] = pd.to_datetime(df["ts"], unit="ms", utc=True)
    return df.sort_values(["ts", "device", "channel"], ignore_index=True)
