"""The store interface: the collector writes readings through it, processing and the
live view read through it. Two implementations live in ``store/``: SQLite (embedded
default) and InfluxDB.

A stored point is identified by (site, device, channel, ts): writing it again
replaces it, so redeliveries and gateway replays never count twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import pandas as pd

from contract.custody import Verdict
from contract.message import Reading
from contract.text import printable

#: columns of ``ReadingStore.read``; one row per (device, channel, ts)
READ_COLUMNS = ["ts", "site", "gateway", "device", "channel", "value", "quality"]
#: columns of each source's frame from ``ReadingStore.read_sources``; one row per ts
SOURCE_COLUMNS = ["ts", "value", "quality"]


class StoreUnavailable(RuntimeError):
    """The store is down or overloaded: nothing was written; retry later."""


class ReadUnsupported(StoreUnavailable):
    """The store takes writes but cannot answer this kind of read at all (a server that
    speaks InfluxDB's write protocol without InfluxQL): retrying will not help."""


#: bytes of a refused payload kept in its dead letter (beside its size and SHA-256)
KEPT_PAYLOAD = 1024
#: characters of a dead letter's topic or reason kept
KEPT_TEXT = 1024
#: dead letters a store reads back at a time (``site_dead_letters``): about 10 MB of them
LETTER_PAGE = 5000


def finding_filters(site: str | None, gateway: str | None, epoch: str | None,
                    kind: str | None) -> list[tuple[str, str]]:
    """The (column, value) pairs ``ReadingStore.sequence_findings`` filters on: each one named, an
    ``epoch`` of ``""`` too (the findings of no epoch), a ``site`` of ``""`` not (all sites)."""
    return [(k, v) for k, v in (("site", site), ("gateway", gateway), ("epoch", epoch), ("kind", kind))
            if v is not None and (v or k == "epoch")]


def pages_by_instant(read: Callable[[object, bool], list], at: Callable[[object], list],
                     instant: Callable[[object], object], page: int = LETTER_PAGE) -> Iterator[list]:
    """Rows in time order, a page at a time, each page ending with every row of its last
    instant, so that rows sorted within each page are sorted as a whole (how a store reads a
    site's dead letters: ``site_dead_letters``).

    Parameters
    ----------
    read : callable
        ``read(t, inclusive)``: up to ``page`` rows in time order from instant ``t`` on
        (after it, unless ``inclusive``; from the start when ``t`` is None).
    at : callable
        ``at(t)``: every row of instant ``t``.
    instant : callable
        A row's instant.
    page : int
        The rows ``read`` gives at most.
    """
    after, inclusive = None, True
    while True:
        rows = read(after, inclusive)
        if len(rows) < page:
            yield rows
            return
        last = instant(rows[-1])
        before = [r for r in rows if instant(r) != last]
        if before:  # the next page begins with the last instant, whole
            yield before
            after, inclusive = last, True
        else:  # one instant fills a page: read it whole
            yield at(last)
            after, inclusive = last, False


@dataclass(frozen=True)
class DeadLetter:
    """A message the collector could not accept, kept with why.

    Made from a whole payload, it keeps the first ``KEPT_PAYLOAD`` bytes, the size and
    the SHA-256 (a flood of large messages cannot fill the store, and the hash still
    identifies each one); made with ``sha256`` given, as a store reads one back, it is
    taken as it is. Topic and reason are always made printable and bounded, so they
    encode in every store and cannot forge log lines or terminal output."""

    received: dt.datetime
    topic: str
    payload: bytes
    reason: str
    size: int | None = None  #: of the whole payload [bytes]
    sha256: str | None = None  #: of the whole payload, hex

    def __post_init__(self):
        if self.sha256 is None:
            object.__setattr__(self, "size", len(self.payload))
            object.__setattr__(self, "sha256", hashlib.sha256(self.payload).hexdigest())
            object.__setattr__(self, "payload", bytes(self.payload[:KEPT_PAYLOAD]))
        object.__setattr__(self, "topic", _bounded(printable(self.topic)))
        object.__setattr__(self, "reason", _bounded(printable(self.reason)))


def _bounded(text: str) -> str:
    return text if len(text) <= KEPT_TEXT else text[:KEPT_TEXT] + "..."


@dataclass(frozen=True)
class SeqRange:
    """Seqs ``first``..``last`` of one sequence epoch of a gateway, every one of them stored.

    ``epoch`` is "" for senders without epochs. ``first_ts``/``last_ts`` place the range in
    time: the times of the readings at either end when known, else bounds from their block
    (``SeqBlock``): ``first_ts`` at or after, ``last_ts`` at or before the true time, so that
    a gap between two ranges lies within ``last_ts``..``first_ts`` of its neighbours."""

    site: str
    gateway: str
    epoch: str
    first: int
    last: int
    first_ts: dt.datetime
    last_ts: dt.datetime


#: seqs per ``SeqBlock``
BLOCK_SEQS = 4096
#: seqs per word of a block, the unit its times are kept in
WORD_SEQS = 64
WORDS = BLOCK_SEQS // WORD_SEQS
_WORD = (1 << WORD_SEQS) - 1


@dataclass(frozen=True)
class SeqBlock:
    """Which seqs of block ``block`` (seqs ``block * BLOCK_SEQS`` .. ``+ BLOCK_SEQS - 1``) of one
    sequence epoch of a gateway are stored: bit ``i`` of ``bits`` is seq ``block * BLOCK_SEQS + i``.

    The sequence bookkeeping's record: its size is bounded by the seqs a gateway sent, not by
    how a shared subscription interleaved them. ``times``: for each word of ``WORD_SEQS``
    seqs, the times [ms since the epoch] of the readings of its lowest and highest seq set
    (``2 * WORDS`` numbers; 0 for a word with none), so that a gap is placed in time to
    within a word. ``writer`` names the collector process that wrote it: a store that
    cannot merge on write keeps one record per (block, writer), each write replacing the
    last, and joins them (``union_blocks``) when it reads."""

    site: str
    gateway: str
    epoch: str
    block: int
    bits: int
    times: tuple[int, ...]
    writer: str = ""

    def times_bytes(self) -> bytes:
        """``times`` as little-endian 8-byte integers (what a store keeps)."""
        return b"".join(t.to_bytes(8, "little", signed=True) for t in self.times)

    def bits_bytes(self) -> bytes:
        """``bits`` as ``BLOCK_SEQS / 8`` bytes, little-endian (what a store keeps)."""
        return self.bits.to_bytes(BLOCK_SEQS // 8, "little")

    @classmethod
    def from_bytes(cls, site: str, gateway: str, epoch: str, block: int, bits: bytes, times: bytes,
                   writer: str = "") -> SeqBlock:
        """The block a store kept as ``bits_bytes`` and ``times_bytes``."""
        return cls(site, gateway, epoch, block, int.from_bytes(bits, "little"),
                   tuple(int.from_bytes(times[i:i + 8], "little", signed=True) for i in range(0, len(times), 8)),
                   writer)


@dataclass(frozen=True)
class SeqMark:
    """Every seq 1..``seq`` of one sequence epoch of a gateway is judged: stored, or inside a
    gap finding recorded (a sender without epochs: from the first seq the collectors met).

    The collector that writes it has seen this in the store (blocks written, findings
    durable), so it is a fact about the store, which only ever gains seqs and findings:
    the highest mark any collector wrote holds too, and a collector meeting the gateway
    looks at seqs above it only. ``writer`` names the collector process (as ``SeqBlock``)."""

    site: str
    gateway: str
    epoch: str
    seq: int
    writer: str = ""


def _low(word: int) -> int:
    return (word & -word).bit_length() - 1


def union_blocks(blocks: Iterable[SeqBlock]) -> list[SeqBlock]:
    """Records of the same (site, gateway, epoch, block) joined into one.

    Parameters
    ----------
    blocks : iterable of SeqBlock
        Records of any writers, in any order.

    Returns
    -------
    list of SeqBlock
        One per (site, gateway, epoch, block), sorted by those, ``writer`` "": ``bits`` OR-ed,
        each word's times [ms] those of the lowest and highest seq any record holds.
    """
    by_key: dict[tuple[str, str, str, int], list[SeqBlock]] = {}
    for b in blocks:
        by_key.setdefault((b.site, b.gateway, b.epoch, b.block), []).append(b)
    out = []
    for key in sorted(by_key):
        group = by_key[key]
        if len(group) == 1:
            out.append(replace(group[0], writer=""))
            continue
        bits, times = 0, [0] * (2 * WORDS)
        for w in range(WORDS):
            # (seq, time) of the lowest and highest seq of the word among the records that hold one
            held = [(word, b.times[2 * w], b.times[2 * w + 1]) for b in group
                    for word in [(b.bits >> (w * WORD_SEQS)) & _WORD] if word]
            if held:
                times[2 * w] = min((_low(word), lo) for word, lo, _ in held)[1]
                times[2 * w + 1] = max((word.bit_length(), hi) for word, _, hi in held)[1]
        for b in group:
            bits |= b.bits
        out.append(SeqBlock(*key, bits, tuple(times)))
    return out


def _from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def block_ranges(blocks: Iterable[SeqBlock]) -> list[SeqRange]:
    """The runs of stored seqs that blocks hold.

    Parameters
    ----------
    blocks : iterable of SeqBlock
        Records of any writers, in any order (joined by ``union_blocks``).

    Returns
    -------
    list of SeqRange
        Runs joined across adjacent blocks, sorted by (site, gateway, epoch, first). A run's
        end that is the lowest or highest seq of its word has that reading's time; an end
        inside a word the bound its word gives (``first_ts`` the time of the word's highest
        seq, ``last_ts`` of its lowest: see ``SeqRange``).
    """
    runs: list[SeqRange] = []
    for b in union_blocks(blocks):
        base, bits, i = b.block * BLOCK_SEQS, b.bits, 0
        while bits >> i:
            x = bits >> i
            i += _low(x)  # to the next set bit
            x = bits >> i
            n = _low(~x & (x + 1))  # the set bits from there
            first, last = i, i + n - 1
            wf, wl = first // WORD_SEQS, last // WORD_SEQS
            lowest = first == wf * WORD_SEQS + _low((bits >> (wf * WORD_SEQS)) & _WORD)
            highest = last == wl * WORD_SEQS + ((bits >> (wl * WORD_SEQS)) & _WORD).bit_length() - 1
            runs.append(SeqRange(b.site, b.gateway, b.epoch, base + first, base + last,
                                 _from_ms(b.times[2 * wf] if lowest else b.times[2 * wf + 1]),
                                 _from_ms(b.times[2 * wl + 1] if highest else b.times[2 * wl])))
            i += n
    return merge_ranges(runs)


def to_ms(ts: dt.datetime) -> int:
    """``ts`` in whole milliseconds since the epoch, rounded half away from zero [ms]."""
    t = ts.timestamp()
    return int(t * 1000 + (0.5 if t >= 0 else -0.5))


def range_blocks(ranges: Iterable[SeqRange], writer: str = "") -> list[SeqBlock]:
    """Runs of stored seqs as blocks: how the runs kept before blocks become blocks.

    Parameters
    ----------
    ranges : iterable of SeqRange
        Runs, in any order, overlapping or not.
    writer : str
        The writer the blocks are recorded for.

    Returns
    -------
    list of SeqBlock
        As ``union_blocks`` joins them. A word's lowest or highest seq that is a range's end
        has its time [ms]; one inside a range the range's end times as bounds.
    """
    out = []
    for r in ranges:
        at = {r.first: to_ms(r.first_ts), r.last: to_ms(r.last_ts)}
        for block in range(r.first // BLOCK_SEQS, r.last // BLOCK_SEQS + 1):
            base = block * BLOCK_SEQS
            lo, hi = max(r.first, base) - base, min(r.last, base + BLOCK_SEQS - 1) - base
            times = [0] * (2 * WORDS)
            for w in range(lo // WORD_SEQS, hi // WORD_SEQS + 1):
                first = base + max(lo, w * WORD_SEQS)
                last = base + min(hi, w * WORD_SEQS + WORD_SEQS - 1)
                times[2 * w:2 * w + 2] = at.get(first, at[r.first]), at.get(last, at[r.last])
            out.append(SeqBlock(r.site, r.gateway, r.epoch, block, ((1 << (hi - lo + 1)) - 1) << lo, tuple(times),
                                writer))
    return union_blocks(out)


@dataclass(frozen=True)
class SequenceFinding:
    """A break in a gateway's sequence, as the collector found it.

    ``kind`` ``gap``: seqs ``first``..``last`` of ``epoch`` were not received within the grace
    period and are not in the store. ``epoch``: the gateway started the new sequence epoch
    ``epoch``; ``first`` = ``last`` = the highest seq received of the epoch before it
    (``previous``). ``clock``: the gateway's clock was off by more than the collector's bound
    (collector/clock_offset.py): seqs ``first``..``last`` of ``epoch`` were received meanwhile,
    from ``noticed`` to ``resolved``, stamped ``start``..``end``; they are not credited.
    ``jump``: readings of ``epoch`` with seqs ``first`` (the first met) up to ``last``, beyond what
    the epoch's seqs made plausible, stored but not followed (``resolved`` once all were;
    ``explained``: how many were not even held, so it stays open).
    ``churn``: readings of epochs beyond those the collector follows per gateway (``epoch``,
    ``first``: the first of them), stored but not followed. ``holes``: seqs ``first``..``last`` of
    ``epoch`` hold more holes than the collector records one by one (``cause`` counts them); the
    seqs of it that arrived are stored.
    ``start``/``end`` (gap, epoch): the times of the stored readings either side, when known.
    ``explained``: readings of the gap the gateway's outbox cap dropped (its
    ``outbox_dropped`` counter). ``resolved``: when every missing seq arrived after all (a
    clock: when it was seen right again).
    Identified by (site, gateway, epoch, kind, first): recording it again replaces it."""

    kind: str
    site: str
    gateway: str
    epoch: str
    first: int
    last: int
    noticed: dt.datetime
    cause: str
    explained: int = 0
    previous: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    resolved: dt.datetime | None = None

    @property
    def missing(self) -> int:
        """Readings lost: the gap's size, or 0 for an epoch change (how many is unknown)."""
        return self.last - self.first + 1 if self.kind == "gap" else 0


def merge_ranges(ranges: list[SeqRange]) -> list[SeqRange]:
    """Ranges of the same (site, gateway, epoch) that overlap or touch joined into one,
    sorted by (epoch, first)."""
    out: list[SeqRange] = []
    for r in sorted(ranges, key=lambda r: (r.site, r.gateway, r.epoch, r.first)):
        p = out[-1] if out else None
        if p and (p.site, p.gateway, p.epoch) == (r.site, r.gateway, r.epoch) and r.first <= p.last + 1:
            if r.last > p.last:
                out[-1] = SeqRange(p.site, p.gateway, p.epoch, p.first, r.last, p.first_ts, r.last_ts)
        else:
            out.append(r)
    return out


@dataclass(frozen=True)
class SignedMessage:
    """A signed reading message as the store keeps it (``contract.custody``): its place in
    its chain, what a later check needs, and its bytes exactly as received.

    Identified by (site, gateway, epoch, seq). ``hash`` is its ``chain_hash`` (what the
    next message carries as ``prev``); ``ts`` the reading's time."""

    site: str
    gateway: str
    epoch: str
    seq: int
    ts: dt.datetime
    hash: str
    prev: str
    key_id: str
    raw: bytes

    @classmethod
    def verified(cls, raw: bytes, verdict: Verdict) -> SignedMessage:
        """The message ``raw`` that ``contract.custody.verify`` found valid (``verdict``)."""
        r = verdict.reading
        return cls(r.site, r.gateway, r.epoch, r.seq, r.ts, verdict.hash, verdict.prev, verdict.key_id, bytes(raw))


@dataclass(frozen=True)
class Link:
    """A stored signed message's ``hash`` and ``prev`` (what the chain checks compare) and
    its reading's ``ts``."""

    hash: str
    prev: str
    ts: dt.datetime


@dataclass(frozen=True)
class CustodyFinding:
    """A break in a gateway's chain of signed messages, as the collector found it against the store.

    ``kind`` ``wrong_prev``: the stored message ``seq`` does not carry the hash of the
    stored ``seq - 1`` as its ``prev`` (or is a seq 1 whose ``prev`` is not GENESIS).
    ``conflict``: a validly signed message of ``seq`` whose bytes differ from the stored
    one; the stored one is kept, the other is a dead letter. ``ts``: the reading time of
    the message ``seq``, so that a period knows its findings. ``detail`` says what differs.
    Identified by (site, gateway, epoch, kind, seq): recording it again replaces it.
    Gaps are ``SequenceFinding``s."""

    kind: str
    site: str
    gateway: str
    epoch: str
    seq: int
    ts: dt.datetime
    noticed: dt.datetime
    detail: str


def seq_spans(seqs: list[int], most: int) -> Iterator[tuple[int, int]]:
    """(lowest, highest) of runs of at most ``most`` of the sorted ``seqs``, split also where
    two are more than ``most`` apart: a store reads a run as one seq range, never much
    that is not wanted."""
    i = 0
    while i < len(seqs):
        j = i + 1
        while j < len(seqs) and j - i < most and seqs[j] - seqs[j - 1] <= most:
            j += 1
        yield seqs[i], seqs[j - 1]
        i = j


@dataclass(frozen=True)
class DeviceSeen:
    site: str
    gateway: str
    device: str
    last_seen: dt.datetime


#: what ``ReadingStore.write`` calls with the readings it refused, for the seq blocks to record with the rest
Books = Callable[[list[tuple[Reading, str]]], list[SeqBlock]]


class ReadingStore(Protocol):
    def write(self, readings: list[Reading], dead_letters: list[DeadLetter] = (),
              messages: Sequence[SignedMessage] = (),
              books: Books | None = None) -> list[tuple[Reading, str]]:
        """Store durably before returning (then the caller may acknowledge).

        ``books``: called once with the readings refused, when the store holds the rest but
        before they are durable; the seq blocks it returns are recorded as ``record_seq_blocks``
        records them, in the same transaction as the readings where the store has transactions
        (SQLite: both durable or neither, one take of the write lock), else right after them.
        Called again when the same write is tried again.

        ``messages``: the signed messages of some of ``readings`` (matched by site, gateway,
        epoch and seq), kept with them by the same call; that of a refused reading is not
        kept. A message whose (site, gateway, epoch, seq) is stored already is not
        rewritten: the caller checks ``links`` first, as InfluxDB cannot refuse a point.

        Returns the readings the store refused for what they are (e.g. a field type
        conflict, a value it cannot hold), each with the store's reason, so the caller
        keeps them as dead letters; everything else is stored. Raises
        ``StoreUnavailable`` when nothing could be written and the same write should be
        retried later. Any other exception is about what the batch holds (a dead letter
        it cannot keep): retrying the same batch would fail again, so the caller splits
        it (rewriting a point is harmless)."""

    def read(self, site: str, start: dt.datetime, end: dt.datetime, channels: list[str] | None = None,
             devices: list[str] | None = None, sources: list[str] | None = None,
             limit: int | None = None) -> pd.DataFrame:
        """Readings with start <= ts < end as a long DataFrame of ``READ_COLUMNS``, sorted by
        ts, then device, then channel.

        ``channels`` and ``devices`` each narrow the read; ``sources`` (``device.channel``)
        narrows it to exactly those pairs (see ``source_pairs``), which a monitoring plan
        needs: the product of its devices and channels can name pairs it does not monitor.
        ``limit``: only the first rows, e.g. ``limit=1`` to learn whether any exist."""

    def read_sources(self, site: str, start: dt.datetime, end: dt.datetime,
                     sources: list[str]) -> dict[str, pd.DataFrame]:
        """Each ``device.channel`` source's readings with start <= ts < end, a frame of
        ``SOURCE_COLUMNS`` sorted by ts (empty if it has none): what processing reads,
        without the long frame's per-row device, channel, site and gateway."""

    def latest(self, site: str) -> pd.DataFrame:
        """The last value of each (device, channel) of a site, ``READ_COLUMNS``."""

    def devices(self, site: str | None = None) -> list[DeviceSeen]:
        """Every device seen, with its last reading's time."""

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""

    def site_dead_letters(self, site: str, start: dt.datetime, end: dt.datetime) -> Iterator[DeadLetter]:
        """The dead letters received on a topic of ``site`` (``jcm/v1/<site>/...``: the broker's
        ACL gives each site's login its own topics) with start <= received < end, oldest first
        (then by SHA-256). Lazy: read in pages of about ``LETTER_PAGE`` letters, each ending
        with all the letters of an instant (a site that sent garbage for weeks has millions of
        letters within its dead-letter budget). Raises ``StoreUnavailable``."""

    def record_seq_blocks(self, blocks: list[SeqBlock]) -> None:
        """Remember that these seqs are stored (after ``write`` stored their readings): each
        block holds every seq of it its writer stored so far (a later record of the same
        block and writer replaces it). Raises ``StoreUnavailable``."""

    def seq_tops(self, site: str, gateway: str) -> dict[str, int]:
        """The highest block of each epoch of a gateway that holds a stored seq. Raises
        ``StoreUnavailable``."""

    def seq_blocks(self, site: str, gateway: str, epoch: str, first: int, last: int,
                   limit: int | None = None) -> list[SeqBlock]:
        """Blocks ``first``..``last`` of one epoch of a gateway, as ``union_blocks`` gives them
        (a block with no stored seq is absent); ``limit``: only the lowest ``limit`` of them
        (a page: the next starts after the last one given; fewer than ``limit``, the last
        page). Raises ``StoreUnavailable``."""

    def record_seq_marks(self, marks: list[SeqMark]) -> None:
        """Remember how far each epoch is judged (``SeqMark``), keeping for each epoch the
        highest mark any writer recorded. Raises ``StoreUnavailable``."""

    def seq_marks(self, site: str, gateway: str) -> dict[str, int]:
        """The highest mark of each epoch of a gateway that has one. Raises ``StoreUnavailable``."""

    def record_finding(self, finding: SequenceFinding) -> None:
        """Keep a sequence finding (replacing one of the same identity). Raises ``StoreUnavailable``."""

    def sequence_findings(self, site: str | None = None, *, gateway: str | None = None, epoch: str | None = None,
                          kind: str | None = None) -> list[SequenceFinding]:
        """Sequence findings, one per identity, oldest noticed first; only those of ``gateway``,
        ``epoch`` (``""``: none) and ``kind`` when named: the collector reads one gateway's few
        where a site may hold thousands."""

    def links(self, site: str, gateway: str, epoch: str, seqs: Iterable[int]) -> dict[int, Link]:
        """The stored signed messages among ``seqs`` of one chain, by seq. Raises ``StoreUnavailable``."""

    def signed_messages(self, site: str, start: dt.datetime, end: dt.datetime) -> Iterator[bytes]:
        """The raw signed messages of ``site`` whose reading ``ts`` is in [start, end), byte for
        byte as received, ordered by (gateway, epoch, seq): what an export's custody folder
        holds. Lazy: a period of any length is read in pages."""

    def chain_witness(self, site: str, gateway: str, epoch: str, seq: int, at: dt.datetime,
                      later: bool = True) -> bytes | None:
        """The raw signed message of one chain with the lowest seq above ``seq`` whose reading
        ``ts`` is at or after ``at`` (``later``; else the highest seq below ``seq`` stamped
        before ``at``), byte for byte as received; ``None`` when none is stored. What shows
        that a chain went on past an export's reading window (or began before it): an export's
        witness. Raises ``StoreUnavailable``."""

    def record_custody_finding(self, finding: CustodyFinding) -> None:
        """Keep a custody finding (replacing one of the same identity). Raises ``StoreUnavailable``."""

    def custody_findings(self, site: str | None = None) -> list[CustodyFinding]:
        """Custody findings, one per identity, oldest noticed first."""

    def close(self) -> None: ...


def source_pairs(channels, devices, sources) -> list[tuple[str, str]] | None:
    """The (device, channel) pairs a read asks for, sorted; ``None`` when it names no devices
    or no channels (then any device or channel is wanted)."""
    if sources is not None:
        pairs = {tuple(src.split(".", 1)) for src in sources}
        return sorted((d, c) for d, c in pairs if (not channels or c in channels) and (not devices or d in devices))
    if channels and devices:
        return sorted({(d, c) for d in devices for c in channels})
    return None
