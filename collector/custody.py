"""The chain of custody on arrival: each signed reading checked, kept with its signed
bytes, and its chain checked against the store.

A reading message that carries ``prev``, ``key`` or ``sig`` is a signed message and must
verify (``contract.custody.verify``) against its site's keys, valid at its ``ts``;
otherwise it is a dead letter with the reason. A site with ``custody.require_signatures``
has its unsigned readings refused too; another site's unsigned readings are stored as
they always were. A backlog batch's lines are checked together (``batch``,
``contract.custody.open_batch``): a line left without its signature is stored as its
signed bytes when the lines after it link it to a signature that verifies; a batch
that does not hold together is refused whole, each line a dead letter with the reason.

The chain is checked against the store, not against what this collector happened to
see: messages come out of order (the live lane overtakes the backlog) and split across
the collectors of a shared subscription. Before a batch is written, the seqs it holds
are looked up: one stored with the same hash is a redelivery (written again, harmless:
the store is idempotent; but a covered message's record is not written again, so that
whoever strips the signatures of stored messages and sends them as a batch does not
replace their signed form); one with another hash is a ``conflict``, refused, never
written over the stored one. After the batch is written, each of its messages is
compared with the stored seq-1 and seq+1: a ``prev`` that is not the hash of the message
before it is a ``wrong_prev``. Whichever of two neighbours is written last sees the
other, even on another collector, since each looks after its own write. The same look
finds a conflict that two collectors wrote at once (SQLite keeps the first message, so
the second writer always finds it; InfluxDB the last, so it is found unless the first
writer looked before the second wrote). Gaps are the sequence findings of
``collector.sequence_gaps``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

from collector.validation import Rejected
from contract.config.site import Site
from contract.custody import GENESIS, Verdict, is_covered, open_batch, verify
from contract.message import MAX_SEQ, Reading
from contract.store import CustodyFinding, Link, ReadingStore, SignedMessage

log = logging.getLogger(__name__)

#: top-level members that make a message a signed one
SIGNATURE_MEMBERS = ("prev", "key", "sig")
#: any of them named in a message's text (one pass: a search per name cost twice as much)
_MEMBER_NAME = re.compile(b'"(?:' + b"|".join(map(str.encode, SIGNATURE_MEMBERS)) + b')"')


class CustodyCheck:
    def __init__(self, sites: list[Site], store: ReadingStore):
        self.store = store
        self.keys = {s.site: list(s.custody.keys) for s in sites}
        self.required = {s.site for s in sites if s.custody.require_signatures}

    def signed(self, payload: bytes, reading: Reading, verdict: Verdict | None = None) -> SignedMessage | None:
        """The signed message of a valid reading, or ``None`` for an unsigned one its site
        allows; ``Rejected`` with the reason otherwise. ``verdict``: a batch line's, from
        ``batch`` (a covered line has no signature of its own to check)."""
        if verdict is not None:
            if verdict.ok:
                return SignedMessage.verified(payload, verdict)
            raise Rejected(f"custody: {verdict.reason}")
        if not _MEMBER_NAME.search(payload):
            return self._unsigned(reading)
        v = verify(payload, self.keys)
        if v.ok:
            return SignedMessage.verified(payload, v)
        if v.kind == "malformed" and not _signature_members(payload):
            return self._unsigned(reading)  # the name was a channel's, say
        raise Rejected(f"custody: {v.reason}")

    def batch(self, lines: list[bytes]) -> list[tuple[bytes, Verdict | None]]:
        """A batch's lines as messages, each with its verdict when the batch checked it
        (``contract.custody.open_batch``); when the batch is refused whole, each line as
        sent with that refusal (a dead letter, acknowledged as one)."""
        try:
            return open_batch(lines, self.keys)
        except ValueError as exc:
            refused = Verdict("batch_refused", f"batch refused whole: {exc}")
            return [(line, refused) for line in lines]

    def vouches(self, site: str, gateway: str, payload: bytes) -> bool:
        """Whether a dead letter on ``site``/``gateway``'s topic may be acknowledged: a gateway deletes
        the row of the seq it names. On a site without keys anyone with its MQTT password could
        publish any reading anyway; on a site with keys, only a message validly signed by a key of
        the site, naming that site and gateway, is the gateway's own (a forged ``{"epoch": E, "seq":
        N}`` would otherwise have the gateway delete its real reading N before it is stored)."""
        if not self.keys.get(site):
            return True
        v = verify(payload, self.keys)
        return v.ok and (v.reading.site, v.reading.gateway) == (site, gateway)

    def _unsigned(self, reading: Reading) -> None:
        if reading.site in self.required:
            raise Rejected(f"custody: site '{reading.site}' requires signed readings; this one is not signed")

    def conflicts(self, messages: list[SignedMessage]) -> tuple[dict[int, str], set[int]]:
        """The messages (by position) whose seq is stored, or earlier in ``messages``, with
        other bytes, each with what differs; and the covered ones whose seq is stored with
        their hash, not to be written again: the stored one is the same message or its
        signed form, which a covered form written over it (InfluxDB keeps the last write)
        would lose. Raises ``StoreUnavailable``."""
        out, kept = {}, set()
        for chain, members in _chains(messages).items():
            stored = self.store.links(*chain, {m.seq for _, m in members})
            for i, m in members:
                if m.seq in stored and stored[m.seq].hash == m.hash and is_covered(m.raw):
                    kept.add(i)
                held = stored.setdefault(m.seq, Link(m.hash, m.prev, m.ts))
                if held.hash != m.hash:
                    out[i] = (f"seq {m.seq} of epoch {m.epoch} is stored with hash {held.hash}; "
                              f"this message, validly signed, has hash {m.hash} (a forked gateway or a stolen key): "
                              "the stored one is kept")
        return out, kept

    def conflict_finding(self, m: SignedMessage, detail: str) -> CustodyFinding:
        return CustodyFinding("conflict", m.site, m.gateway, m.epoch, m.seq, m.ts, dt.datetime.now(dt.UTC), detail)

    def chain_findings(self, messages: list[SignedMessage]) -> list[CustodyFinding]:
        """After ``messages`` were written: links between them and their stored neighbours
        whose ``prev`` is not the hash before it, and those of them that lost a race with
        another collector writing other bytes of the same seq. Raises ``StoreUnavailable``."""
        found = {}
        now = dt.datetime.now(dt.UTC)
        for chain, members in _chains(messages).items():
            seqs = {m.seq for _, m in members}
            # neighbours within the seqs a store holds (a signed 64-bit integer)
            stored = self.store.links(*chain, {n for s in seqs for n in (s - 1, s, s + 1) if 0 <= n <= MAX_SEQ})
            for _, m in members:
                if m.seq in stored and stored[m.seq].hash != m.hash:
                    found[(chain, m.seq, "conflict")] = CustodyFinding(
                        "conflict", *chain, m.seq, stored[m.seq].ts, now, f"seq {m.seq} of epoch {m.epoch} is stored with hash "
                        f"{stored[m.seq].hash}; another message, validly signed, with hash {m.hash} was stored at "
                        "the same time (by another collector): the reading may be either's")
            for seq in sorted({n for s in seqs for n in (s, s + 1)} & stored.keys()):
                expected = GENESIS if seq == 1 else stored[seq - 1].hash if seq - 1 in stored else None
                if expected is not None and stored[seq].prev != expected:
                    what = "GENESIS (the first of an epoch)" if seq == 1 else f"the hash of seq {seq - 1}, {expected}"
                    found[(chain, seq, "wrong_prev")] = CustodyFinding(
                        "wrong_prev", *chain, seq, stored[seq].ts, now,
                        f"seq {seq} of epoch {chain[2]} carries prev {stored[seq].prev}, not {what}")
        return list(found.values())

    def record(self, findings: list[CustodyFinding]) -> None:
        """Keep findings in the store. Raises ``StoreUnavailable``."""
        for f in findings:
            self.store.record_custody_finding(f)
            log.warning("custody finding: site %s: gateway %s: %s: %s", f.site, f.gateway, f.kind, f.detail)


def _chains(messages: list[SignedMessage]) -> dict[tuple[str, str, str], list[tuple[int, SignedMessage]]]:
    chains: dict[tuple[str, str, str], list[tuple[int, SignedMessage]]] = {}
    for i, m in enumerate(messages):
        chains.setdefault((m.site, m.gateway, m.epoch), []).append((i, m))
    return chains


def _signature_members(payload: bytes) -> bool:
    """Whether a valid reading message names a signature member at its top level (not,
    say, a channel called ``key``)."""
    body = json.loads(payload)
    return any(name in body for name in SIGNATURE_MEMBERS)
