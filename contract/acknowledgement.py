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

    ``ranges`` are the seqs of that epoch the store holds above the gateway's floor
    (as the collector last heard it): ascending, disjoint, inclusive, at most
    ``MAX_RANGES`` of them. A collector publishes after each batch it has stored
    (readings and dead letters: a message kept as a dead letter is kept, and sending
    it again would change nothing). It folds in what the other collectors of the
    share group published (it subscribes to every ack topic), because the claim is
    "the store has it", not "I stored it": with a shared subscription the broker
    deals a gateway's messages out in turn, and each collector alone would hold
    every other seq, one range per message. Merged, the ranges stay contiguous and
    few. A collector that has more ranges than ``MAX_RANGES`` sends the lowest ones;
    the rest follow once the floor has risen. Retained, so a collector that restarts
    takes its own and the others' claims back from the broker, and a gateway that
    reconnects learns where it stands.

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
input (:meth:`Ack.from_json`): bounded size and ranges count, integers in range, its
own epoch, and a seq it has not sent yet is never taken as stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from contract.message import EPOCH_PATTERN, MAX_SEQ

SCHEMA_VERSION = 1
#: ranges per acknowledgement
MAX_RANGES = 256
#: bytes of an acknowledgement: MAX_RANGES ranges of two 19-digit seqs fit
MAX_ACK_BYTES = 16 * 1024

_EPOCH = re.compile(EPOCH_PATTERN)

Ranges = list[tuple[int, int]]


@dataclass(frozen=True)
class Ack:
    """What one collector says the store holds of one gateway's epoch."""

    epoch: str
    ranges: tuple[tuple[int, int], ...]

    def to_json(self) -> str:
        body = {"schema": SCHEMA_VERSION, "epoch": self.epoch, "ranges": [list(r) for r in self.ranges]}
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
        return cls(epoch, tuple(out))


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
