"""The export's ``custody/`` folder (layout: ``contract.custody``): the signed messages of
the readings the figures are computed from (``recompute.message_window``), bytes as
received, the site's public keys valid in that time (a chain's last message there kept
without its signature, covered by a later one, is followed by the messages of its chain
up to that one: ``with_covering``), each chain's witness (``with_witnesses``), and the
collector's sequence findings and custody findings there (``custody/findings.json``),
which explain the breaks of the chains and which the processor reads too. An export of
readings that were not signed has no custody folder, and its manifest says 0 signed messages.

Witnesses are taken at the edges of the reading window (``message_window``: the period's
whole months with ``EDGE`` either side, widened to the revisions' read spans), not of the
period: a recomputation reads every reading there (a meter's last reading before the
period's start closes its interval or gap across the start), so each must lie in a chain
segment shown unbroken. A chain whose last message there is stamped before the window's
end (exclusive: the recomputation reads nothing stamped at or after it) is followed by its
first message stamped at or after that end (found by seq, however long after; when it is
covered, with the messages after it up to its signature); a chain whose first message
there is stamped at or after the window's start, and does not begin its chain (``prev``
GENESIS), is preceded by its last message stamped before that start.
Signed by the gateway and linked along the chain, they show that nothing of the chain in
the window was left out of the export before its first message there or after its last:
removing a chain's last messages (and everything after), or its first, from the export
removes the witness too, and ``jcm verify`` names the chain. A chain end for which the
store holds no such message (the gateway stopped, its epoch ended, or its later messages
had not arrived when the export was made; its earlier messages lost) is listed in the
manifest (``custody.witnesses.not_witnessed``, with the reason the export knows): an
unsigned statement, which explains a missing witness and proves nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from contract.custody import GENESIS, MAX_COVERED_RUN, is_covered, link, write_folder, write_keys
from contract.message import Reading
from contract.store import CustodyFinding, ReadingStore, SequenceFinding
from processing.export.json_file import read_json, write_json
from processing.export.period_figures import PeriodFigures
from processing.export.recompute import message_window
from processing.period import stamped

FINDINGS = "findings.json"
#: successors of a window's last covered message looked up at a time, by seq
COVER_PAGE = 256
#: successors stamped closer than this are read back in one query
COVER_SPAN = dt.timedelta(hours=1)
#: a message's gateway and epoch, found without parsing it (most messages are not a chain's
#: last): a reading message has them before its values (``Reading.to_json``)
_CHAIN = re.compile(rb'"gateway":"([^"\\]*)".*?"epoch":"([^"\\]*)"')


def write_custody(figures: PeriodFigures, store: ReadingStore, folder: Path) -> tuple[list[Path], dict]:
    """Write ``folder/custody``; its files and the manifest's ``custody`` entry."""
    site = figures.site
    start, end = message_window(figures)
    entry = {"signed_messages": 0, "from": start.isoformat(), "to": end.isoformat(), "keys": [], "findings": 0}
    count = [0]

    def counted(messages) -> Iterator[bytes]:
        for m in messages:
            count[0] += 1
            yield m

    keys = [k for k in site.custody.keys if k.valid_from < end and (k.valid_to is None or k.valid_to > start)]
    found = Witnesses(start, end, store.sequence_findings(site.site))
    messages = with_witnesses(store, site.site, with_covering(
        store, site.site, store.signed_messages(site.site, start, end)), found)
    root = write_folder(folder, {site.site: keys}, counted(messages))
    if not count[0]:
        shutil.rmtree(root)
        return [], entry
    # a witness beyond the window may be signed by a key of its own time (rotated since, or before)
    more = [k for k in site.custody.keys if k not in keys and any(
        k.valid_from <= ts and (k.valid_to is None or ts < k.valid_to) for ts in found.stamps)]
    if more:
        keys = [k for k in site.custody.keys if k in keys or k in more]
        write_keys(root, {site.site: keys})
    # stamped in the window, or received in it (a wrong clock's readings are stamped anywhere)
    sequence = [f for f in found.findings
                if (when := stamped(f))[0] < end and when[1] >= start
                or f.noticed < end and (f.resolved or f.noticed) >= start]
    custody = [f for f in store.custody_findings(site.site) if start <= f.ts < end]
    write_json(root / FINDINGS, {"sequence_findings": [_record(f) for f in sequence],
                                 "custody_findings": [_record(f) for f in custody]}, indent=1, sort_keys=False)
    entry.update(signed_messages=count[0], findings=len(sequence) + len(custody),
                 keys=[{"id": k.id, "fingerprint": k.fingerprint} for k in keys], witnesses=found.entry())
    return sorted(f for f in root.rglob("*") if f.is_file()), entry


@dataclasses.dataclass
class Witnesses:
    """The witnesses of a reading window's chains (the module doc) as ``with_witnesses`` finds them."""

    #: UTC start and end (exclusive) of the reading window
    start: dt.datetime
    end: dt.datetime
    #: the site's sequence findings (a chain's end may be explained by a new epoch's)
    findings: list[SequenceFinding]
    chains: int = 0
    #: each chain end without a witness: head or tail, gateway, epoch, its message's seq and ts, why
    not_witnessed: list[dict] = dataclasses.field(default_factory=list)
    #: the times of the witnesses' messages (the keys that sign them must be in the folder)
    stamps: list[dt.datetime] = dataclasses.field(default_factory=list)

    def entry(self) -> dict:
        """The manifest's ``custody.witnesses``."""
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "chains": self.chains,
                "not_witnessed": self.not_witnessed}

    def added(self, messages: list[bytes]) -> list[bytes]:
        """``messages``, a chain end's witness, noted."""
        self.stamps += [r.ts for r in map(_reading, messages) if r is not None]
        return messages

    def missing(self, end: str, r: Reading, why: str) -> list[bytes]:
        """No witness for the ``end`` (head or tail) at ``r``, the chain's message there, for ``why``."""
        self.not_witnessed.append({"end": end, "gateway": r.gateway, "epoch": r.epoch, "seq": r.seq,
                                   "ts": r.ts.isoformat(), "why": why})
        return []


def span(d: dt.timedelta) -> str:
    """How far inside the reading window a chain end not witnessed is, as ``3 d 04:05`` (days, hours
    and minutes, rounded down): the summary page and ``jcm verify`` write it alike."""
    minutes = int(d.total_seconds() // 60)
    return f"{minutes // 1440} d {minutes % 1440 // 60:02}:{minutes % 60:02}"


def with_witnesses(store: ReadingStore, site: str, messages: Iterable[bytes], found: Witnesses) -> Iterator[bytes]:
    """``messages`` (ordered by chain and seq, covering runs in place: ``with_covering``) with
    each chain's witnesses (the module doc) before its first message and after its last,
    where those are stamped in the reading window: one store query per such chain end, nothing per
    message but finding its chain. What it finds, and each chain end the store has no
    witness for, with why, is told to ``found``."""
    chain = last = None
    for m in messages:
        match = _CHAIN.search(m)
        here = match.groups() if match else None
        if last is None or here != chain:
            if last is not None:
                yield from _tail(store, site, last, found)
            found.chains += 1
            yield from _head(store, site, m, found)
        chain, last = here, m
        yield m
    if last is not None:
        yield from _tail(store, site, last, found)


def _head(store: ReadingStore, site: str, first: bytes, found: Witnesses) -> list[bytes]:
    """The witness before a chain's ``first`` message, or none (``first`` stamped before the
    reading window's start or beginning its chain needs none; else the chain's head is listed)."""
    r = _reading(first)
    if r is None or r.ts < found.start or link(first)[0] == GENESIS:
        return []
    witness = store.chain_witness(site, r.gateway, r.epoch, r.seq, found.start, later=False)
    # a covered witness is covered by ``first`` and the messages after it: only when it is seq - 1
    if witness is not None and (not is_covered(witness) or _place(witness)[2] == r.seq - 1):
        return found.added([witness])
    return found.missing("head", r, "the store holds no earlier message of this chain stamped before the reading "
                                    "window's start: its earlier messages were lost, or the store had not kept them"
                         if witness is None else
                         f"its last message stamped before the reading window's start, seq {_place(witness)[2]}, is "
                         "kept without its signature and the message after it is not in the store")


def _tail(store: ReadingStore, site: str, last: bytes, found: Witnesses) -> list[bytes]:
    """The witness after a chain's ``last`` message (with its covering run), or none
    (``last`` stamped at or after the reading window's end is its own; else the chain's tail is listed)."""
    r = _reading(last)
    if r is None or r.ts >= found.end:
        return []
    witness = store.chain_witness(site, r.gateway, r.epoch, r.seq, found.end)
    run = [] if witness is None or not is_covered(witness) else _covering(store, site, witness)
    if witness is not None and (run or not is_covered(witness)):
        return found.added([witness, *run])
    if witness is not None:
        return found.missing("tail", r, f"its first message stamped at or after the reading window's end, seq "
                                        f"{_place(witness)[2]}, is kept without its signature and the message "
                                        "that covers it is not in the store")
    return found.missing("tail", r, next(
        (f"the collector found the gateway's new epoch {f.epoch} after seq {f.first} of this one: {f.cause}"
         for f in found.findings if (f.kind, f.gateway, f.previous) == ("epoch", r.gateway, r.epoch)),
        "the store holds no later message of this chain stamped at or after the reading window's end: the gateway "
        "stopped or its epoch ended, or its later messages had not arrived when the export was made"))


def _reading(message: bytes) -> Reading | None:
    """The reading of a stored signed or covered message; ``None`` when it is not one of a
    chain (``jcm verify`` refuses it: no witness can help)."""
    try:
        r = Reading.from_json(message)
    except ValueError:
        return None
    return r if r.epoch is not None and link(message) is not None else None


def with_covering(store: ReadingStore, site: str, messages: Iterable[bytes]) -> Iterator[bytes]:
    """``messages`` (a window's, ordered by chain and seq) and after the last of each chain,
    when it is covered (``contract.custody``: kept without its signature, the chain links
    it to a later signed message), the messages of its chain after it, however long after
    the window, up to the first signed one: without them it could not be verified."""
    last = None  # the message before, when covered, and its hash
    given = None  # (gateway, epoch, seq) of the last message a covering run listed
    for m in messages:
        covered = is_covered(m)
        here = link(m) if covered or last else None  # most messages are signed: no hash of theirs is needed
        if last and (here is None or here[0] != last[1]):
            run = _covering(store, site, last[0])
            yield from run
            given = _place(run[-1]) if run else None
        if given is not None:
            # the run may have listed the window's next messages (a clock stepped back stamped
            # the run's start before the window, and the run reached them by seq): once each
            place = _place(m)
            if place[:2] == given[:2] and place[2] <= given[2]:
                last = None  # a run ends with a signed message: what it listed is covered
                continue
            given = None
        yield m
        last = (m, here[1]) if covered else None
    if last:
        yield from _covering(store, site, last[0])


def _place(message: bytes) -> tuple[str, str, int]:
    """A message's gateway, epoch and seq."""
    known = json.loads(message)
    return known["gateway"], known["epoch"], known["seq"]


def _covering(store: ReadingStore, site: str, last: bytes) -> list[bytes]:
    """The messages after ``last`` in its chain, up to and with the first signed one, found by
    seq however long after the window they are stamped (a batch's run of sparse readings may
    span months); none when they are not all there (the verifier then reports ``last`` not
    covered)."""
    gateway, epoch, seq = _place(last)
    out: list[bytes] = []
    while len(out) < MAX_COVERED_RUN:
        first = seq + len(out) + 1
        links = store.links(site, gateway, epoch, range(first, first + COVER_PAGE))
        run = list(itertools.takewhile(links.__contains__, range(first, first + COVER_PAGE)))
        found = {}
        for start, stop in _spans(sorted(links[s].ts for s in run)):
            for raw in store.signed_messages(site, start, stop):
                m = json.loads(raw)
                if (m["gateway"], m["epoch"]) == (gateway, epoch) and first <= m["seq"] < first + len(run):
                    found[m["seq"]] = raw
        for s in run:
            if s not in found:
                return []
            out.append(found[s])
            if not is_covered(found[s]):
                return out
        if len(run) < COVER_PAGE:  # the chain stops before a signed message
            return []
    return []


def _spans(stamps: list[dt.datetime]) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    """[start, stop) spans holding ``stamps`` (sorted), one per cluster: a run spread over
    months is not read back with everything stamped between."""
    start = before = None
    for ts in stamps:
        if start is None:
            start = ts
        elif ts - before > COVER_SPAN:
            yield start, before + _MS
            start = ts
        before = ts
    if start is not None:
        yield start, before + _MS


#: the stores keep ``ts`` to the millisecond
_MS = dt.timedelta(milliseconds=1)


def _record(f: SequenceFinding | CustodyFinding) -> dict:
    """A finding as JSON: its fields, times in ISO 8601."""
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in dataclasses.asdict(f).items()}


def read_findings(path: Path) -> tuple[list[SequenceFinding], list[CustodyFinding]]:
    """``custody/findings.json``; ``ValueError`` naming the file and the finding."""
    listed = read_json(path, path.name)
    if not isinstance(listed, dict) or not all(isinstance(listed.get(k), list)
                                               for k in ("sequence_findings", "custody_findings")):
        raise ValueError(f"{path.name}: not lists 'sequence_findings' and 'custody_findings'")
    return (_findings(path, "sequence_findings", SequenceFinding, listed["sequence_findings"]),
            _findings(path, "custody_findings", CustodyFinding, listed["custody_findings"]))


def _findings(path: Path, name: str, cls, records: list) -> list:
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    out = []
    for i, record in enumerate(records, 1):
        try:
            fields = {}
            for k, v in record.items():
                kind = types[k]
                if "datetime" in kind and (v is not None or "None" not in kind):
                    v = dt.datetime.fromisoformat(v)
                    if v.tzinfo is None:
                        raise ValueError(f"{k}: a time without its zone")
                elif (kind == "int" and type(v) is not int) or (kind == "str" and not isinstance(v, str)):
                    raise ValueError(f"{k}: not a{'n integer' if kind == 'int' else ' text'}")
                fields[k] = v
            out.append(cls(**fields))
        except KeyError as exc:
            raise ValueError(f"{path.name}: {name} {i}: unknown field {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path.name}: {name} {i}: {exc}") from None
    return out
