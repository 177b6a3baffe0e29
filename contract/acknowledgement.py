"""The store's acknowledgement: a gateway forgets a reading only when the store has it.

A PUBACK says only that the broker has a message, and Mosquitto acknowledges before it
writes to disk: a broker that crashes takes what it had acknowledged with it. So the
gateway keeps every row of its outbox until a collector says the store has it.

Sequence epoch
    A gateway numbers its readings ``seq`` 1, 2, 3, ... within an *epoch*: 16 hex
    digits drawn at random when its outbox is created. A new, emptied or deleted
    outbox (or ``jcm gateway --new-outbox``) starts a new epoch and ``seq`` starts at
    1 again, so (gateway, epoch, seq) names one reading for ever. Every reading and
    the gateway's retained status carry the epoch.

Floor
    The gateway's retained status (``.../status``) carries ``epoch`` and ``floor``:
    every seq of that epoch below the floor is confirmed (or dropped by the outbox
    cap, which the status counts in ``outbox_dropped``) and no longer in the outbox.

Acknowledgement (:class:`Ack`), one retained QoS 1 message per (gateway, collector)::

    topic    jcm/v1/<site>/<gateway>/ack/<collector client id>
    payload  {"schema": 1, "epoch": "5f0c9a13e2b4d870", "ranges": [[1042, 1300], [1302, 1310]]}
    or       {"schema": 1, "epoch": "5f0c9a13e2b4d870", "ranges": [[1042, 1300], ...],
              "bits_from": 9001, "bits": "<base64>"}

    ``ranges`` are seqs of that epoch the store holds above the gateway's floor (as the
    collector last heard it): ascending, disjoint, inclusive, at most ``MAX_RANGES`` of
    them, the lowest first. When the store holds more ranges than that, the optional
    *bitmap* carries those above: bit ``i`` of ``bits`` (byte ``i // 8``, least
    significant bit first) set means the store holds seq ``bits_from + i``; the two come
    together or not at all, and no set bit lies beyond ``MAX_SEQ``. The claim is the union
    of both. The whole message stays within ``MAX_ACK_BYTES``, so the bitmap carries up to
    ``MAX_BITS`` = 98,304 seqs (about 70,000 beside 256 ranges of seven-digit seqs): the top of
    a longer claim waits for a later acknowledgement.

    A collector publishes after each batch it has stored (readings, and dead letters the
    store keeps whole: sending one again would change nothing; one only counted over the
    dead-letter budget or kept cut to its first bytes is not claimed, and is sent again).
    It folds in what the other collectors of the share group published (it subscribes
    to every ack topic), because the claim is "the store has it", not "I stored it":
    with a shared subscription the broker deals a gateway's messages out in turn, and
    each collector alone would hold every other seq, one range per message. Merged, the
    ranges stay contiguous and few, provided each collector learns the others' claims
    whole: a fast drain (a collector's batch of 500 single messages is 500 ranges until
    the other's claim is in) would leave all but the lowest ``MAX_RANGES`` unlearnt, the
    holes between the two collectors' seqs would pile up, and the gateway would send the
    readings above them again. The bitmap's size does not grow with those holes. Retained,
    so a collector that restarts takes its own and the others' claims back from the
    broker, and a gateway that reconnects learns where it stands.

    Run: the gateway's retained status carries ``run``, 16 hex digits drawn at random at each
    gateway start (the same on every status of that run, re-published on a reconnect). A
    collector echoes ``"run": "<16 hex>"`` in an acknowledgement: the run of the status it
    had when it *built* it, the status under whose ``acknowledged_by`` list it merged the
    others' claims (no ``run`` before it has heard a status that carries one). A present
    ``run`` that is not exactly 16 lower-case hex digits makes the message refused. The
    gateway needs it after a start with a shortened list (see "Shortened list" below).

    Upgrades: a gateway or collector from before the bitmap ignores it (unknown members
    are ignored; schema, size and range bounds are the same), so it takes the ranges
    alone, a part of the truth; one that knows the bitmap takes a ranges-only message as
    it always was. One from before ``run`` ignores it too (in the status and in an
    acknowledgement); an acknowledgement without it is taken as one from before (below).

The gateway subscribes to ``jcm/v1/<site>/<gateway>/ack/+``, takes the union of the
acknowledgements of its current epoch (any other epoch is ignored), ignores seqs it has
not yet sent, and deletes the rows covered. A row is *sending* until its PUBACK, then
*sent, awaiting store*; a row awaiting longer than ``outbox.confirm_timeout_s``, and
every row not confirmed when the connection comes back, is sent again (the store
keeps one point per device and timestamp, so a second copy changes nothing). When the
outbox cap must drop rows, rows awaiting the store are dropped last: the broker
probably holds them.

Only collectors may publish acknowledgements, and a site may read only its own (see
``deploy/mosquitto/acl``). A gateway still checks every acknowledgement as untrusted
input (:meth:`Ack.from_json`): bounded size and ranges count, integers in range, a
well-formed bitmap, its own epoch, and a seq it has not sent yet is never taken as stored.
What an acknowledgement costs it does not grow with the numbers in it: parsing is bounded
by ``MAX_ACK_BYTES``, and the gateway looks its outbox up in at most ``MAX_RANGES`` + 1
spans (:meth:`Ack.spans`), one bit per row found.

Shortened list
    A gateway's ``outbox.acknowledged_by`` names the collectors whose acknowledgements count,
    and collectors merge only those collectors' claims. When it loses a member (a staging
    collector whose store is not production's), a listed collector's acknowledgement built
    under the longer list may carry the dropped collector's claims, merged then. So a gateway
    started with a list that lost a member since its outbox last ran takes a listed collector's
    acknowledgement only when it echoes this run's ``run``, until every listed collector has sent
    one (the list is then recorded in the outbox). Any other run, retained or live, deletes
    nothing: it was built before the collector heard this run's status. A collector added to the
    list since the outbox last ran is held to the same, alone: its acknowledgements before this
    run were built while its store did not count. For its part, a
    collector that hears a list that lost a member drops every claim it merged (a peer's
    acknowledgement may have carried the dropped collector's claims into it) and, of a gateway
    whose status carries a run, merges only acknowledgements that echo that run: a claim merged
    under the old list is never published again under the new run. An acknowledgement without
    ``run`` (a collector from before it) counts as it did before: retained, nothing; published in
    this run, taken, as the collector's anew (it cannot be told from one built before the
    collector heard the status: with such collectors listed, clear their retained
    acknowledgements with the gateway stopped when shortening its list, README).
"""

from __future__ import annotations

import base64
import bisect
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from contract.message import EPOCH_PATTERN, MAX_SEQ

SCHEMA_VERSION = 1
#: ranges per acknowledgement
MAX_RANGES = 256
#: bytes of an acknowledgement: MAX_RANGES ranges of two 19-digit seqs fit
MAX_ACK_BYTES = 16 * 1024
#: seqs one acknowledgement's bitmap can carry at most (base64: 3 bytes in 4 characters)
MAX_BITS = 8 * (MAX_ACK_BYTES // 4 * 3)

_EPOCH = re.compile(EPOCH_PATTERN)
_RUN = re.compile("[0-9a-f]{16}")

Ranges = list[tuple[int, int]]


@dataclass(frozen=True)
class Ack:
    """What one collector says the store holds of one gateway's epoch: ``ranges``, and the
    seqs ``bits_from + i`` for each bit ``i`` set in ``bits`` (little-endian)."""

    epoch: str
    ranges: tuple[tuple[int, int], ...]
    bits_from: int = 0
    bits: bytes = b""
    #: the gateway run whose status it was built under; None: not known (or a collector from before runs)
    run: str | None = None

    @classmethod
    def fitted(cls, epoch: str, ranges: Iterable[tuple[int, int]], bits_from: int = 0, mask: int = 0,
               run: str | None = None) -> Ack:
        """``ranges`` (at most ``MAX_RANGES``) and the seqs of ``mask`` (bit i: seq ``bits_from`` + i),
        the bitmap cut at the top to what fits in ``MAX_ACK_BYTES``: it claims what it is given, or less."""
        ack = cls(epoch, tuple(ranges), run=run)
        if mask <= 0:
            return ack
        low = (mask & -mask).bit_length() - 1  # from the lowest seq held: bit 0 set
        bits_from, mask = bits_from + low, mask >> low
        room = MAX_ACK_BYTES - len(ack.to_json()) - len(f',"bits_from":{bits_from},"bits":""')
        nbits = max(0, min(8 * (room // 4 * 3), MAX_SEQ - bits_from + 1))
        mask &= (1 << nbits) - 1
        if not mask:
            return ack
        return cls(epoch, ack.ranges, bits_from, mask.to_bytes((mask.bit_length() + 7) // 8, "little"), run)

    def to_json(self) -> str:
        body = {"schema": SCHEMA_VERSION, "epoch": self.epoch, "ranges": [list(r) for r in self.ranges]}
        if self.bits:
            body |= {"bits_from": self.bits_from, "bits": base64.b64encode(self.bits).decode()}
        if self.run is not None:
            body["run"] = self.run
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, payload: bytes | str) -> Ack:
        """Parse an acknowledgement; raise ``ValueError`` naming the first thing wrong."""
        if len(payload) > MAX_ACK_BYTES:
            raise ValueError(f"{len(payload)} bytes: at most {MAX_ACK_BYTES}")
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # the size bound keeps the nesting small
            raise ValueError(f"not JSON: {str(exc)[:80]}") from None
        if not isinstance(body, dict) or body.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"not an object with schema {SCHEMA_VERSION}")
        epoch, ranges = body.get("epoch"), body.get("ranges")
        if not isinstance(epoch, str) or not _EPOCH.match(epoch):
            raise ValueError("'epoch' is not 16 lower-case hex digits")
        if not isinstance(ranges, list) or len(ranges) > MAX_RANGES:
            raise ValueError(f"'ranges' is not a list of at most {MAX_RANGES} ranges")
        last = 0
        out = []
        for r in ranges:  # a collector reads every other's after each batch: no call per seq
            if not (isinstance(r, list) and len(r) == 2 and type(r[0]) is int and type(r[1]) is int
                    and last < r[0] <= r[1] <= MAX_SEQ):
                raise ValueError(f"'ranges' are not ascending disjoint [first, last] pairs in 1..{MAX_SEQ}")
            last = r[1]
            out.append((r[0], last))
        bits_from, bits = _bitmap(body)
        run = body.get("run")
        if "run" in body and not is_run(run):
            raise ValueError("'run' is not 16 lower-case hex digits")
        return cls(epoch, tuple(out), bits_from, bits, run)

    def spans(self) -> Ranges:
        """Ascending disjoint ranges [seq] within which every seq claimed lies (each seq of a
        range is claimed; of the bitmap's extent, those whose bit is set: see :meth:`holds`)."""
        mask = self.bitmask()
        if not mask:
            return list(self.ranges)
        low = (mask & -mask).bit_length() - 1
        return merge([*self.ranges, (self.bits_from + low, self.bits_from + mask.bit_length() - 1)])

    def holds(self, seq: int) -> bool:
        """Whether the acknowledgement claims ``seq``."""
        i = bisect.bisect_right(self.ranges, (seq, MAX_SEQ)) - 1
        if i >= 0 and seq <= self.ranges[i][1]:
            return True
        i = seq - self.bits_from
        return 0 <= i < 8 * len(self.bits) and bool(self.bits[i >> 3] >> (i & 7) & 1)

    def bitmask(self) -> int:
        """The bitmap as an integer: bit i set, seq ``bits_from`` + i claimed."""
        return int.from_bytes(self.bits, "little")


def new_run() -> str:
    """A gateway run's id: 16 hex digits, drawn at random at each start."""
    return secrets.token_hex(8)


def is_run(value: object) -> bool:
    """Whether ``value`` is a run id (exactly 16 lower-case hex digits)."""
    return isinstance(value, str) and _RUN.fullmatch(value) is not None


def _bitmap(body: dict) -> tuple[int, bytes]:
    """(bits_from, bits) of an acknowledgement's optional bitmap, checked."""
    bits_from, bits = body.get("bits_from"), body.get("bits")
    if bits_from is None and bits is None:
        return 0, b""
    if type(bits_from) is not int or not 1 <= bits_from <= MAX_SEQ or not isinstance(bits, str):
        raise ValueError(f"'bits_from' (a seq in 1..{MAX_SEQ}) and 'bits' (base64) do not come together")
    try:
        raw = base64.b64decode(bits, validate=True)
    except ValueError:  # binascii.Error too
        raise ValueError("'bits' is not base64") from None
    if bits_from + int.from_bytes(raw, "little").bit_length() - 1 > MAX_SEQ:
        raise ValueError(f"'bits' claim a seq beyond {MAX_SEQ}")
    return bits_from, raw


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Union of inclusive seq ranges, ascending, with touching ranges joined.

    Parameters
    ----------
    ranges : iterable of (first, last)
        Inclusive ranges [seq], in any order, overlapping or not.

    Returns
    -------
    list of (first, last)
        Ascending, disjoint and not adjacent.
    """
    out: Ranges = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def clip(ranges: Iterable[tuple[int, int]], low: int, high: int) -> Ranges:
    """The parts of ``ranges`` within [``low``, ``high``] [seq]."""
    return [(max(a, low), min(b, high)) for a, b in ranges if b >= low and a <= high]


def from_seqs(seqs: Iterable[int]) -> Ranges:
    """Inclusive ranges covering exactly ``seqs``."""
    return merge((s, s) for s in seqs)
