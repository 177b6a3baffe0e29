"""The batch form of reading messages: a gateway's backlog, many readings per MQTT message.

A gateway back on line after hours away has thousands of readings to send over what may
be a cellular or satellite link. One MQTT message per reading spends most of the link on
repeated member names, units and MQTT framing; the batch form sends them compressed.

Topic ``jcm/v1/<site>/<gateway>/batch`` (``contract/topics.py``), QoS 1, not retained.
The payload is one zlib stream (RFC 1950: deflate with the 2-byte zlib header and the
Adler-32 check, what ``zlib.compress`` makes) of reading messages separated by one
newline byte (0x0A); a newline after the last one is allowed (any other empty line is a bad
line). Each line is **exactly the bytes the message has when sent alone** on
``jcm/v1/<site>/<gateway>/<device>/reading``, ``<device>`` being its ``device`` member,
not re-serialised, except that a signed message (``contract/custody.py``) may leave out
what its chain already covers (below). A message holding a newline byte (compact JSON
never does), or empty, cannot be a line; it goes alone.

Signed lines
------------
A signature and a ``prev`` hash (152 bytes that do not compress) would cost more than
the rest of a compressed reading; within a batch the chain carries them instead. A
signed message's ``prev`` is the SHA-256 of the previous message's signed bytes ``B``,
and its signature is over its own ``B``, which hold that ``prev``: one signature covers
every message before it in the chain. So, in a batch:

- a line whose message's ``prev`` is the hash of the line before's signed bytes may write
  it as ``"prev":""`` (the ``,"prev":"`` of its signed bytes followed at once by
  ``","key":"``); a subscriber puts back the lower-case hex SHA-256 of the line before's
  signed bytes (as rebuilt, when that line's prev was left out too). The line before
  must be the message of ``seq`` one less of the same site, gateway and ``epoch``, and
  ``pack`` leaves it out only when both lines name the same key;
- a line whose next line carries its hash so and names the same key (a signature vouches
  only for messages under its own key) may leave out its signature: it is then
  its signed bytes ``B`` exactly (ending ``"key":"<key id>"}``), a **covered** message;
- the last line of a batch, and any signed line whose next line does not follow it so,
  keeps its signature. ``pack`` writes every line so (``custody.batch_line``): a run of a
  chain is one signature, wherever the packet limit cuts it.

A subscriber rebuilds each message (``custody.open_batch``): a covered line is stored as
its signed bytes (without ``sig``), a signed line as the message sent alone would be. A
covered message verifies when the lines after it link it to a signature that verifies;
its own key rules still apply (the key it names is its site's, valid at its ``ts``, not
revoked), as do the covering message's. The whole batch is refused, each line a dead
letter with the reason naming the first line that breaks it, when a line's ``prev`` is
left out but the line before is not ``seq`` - 1 of its chain, when a covered line is not
followed by its successor carrying its hash under the same key (a line removed,
reordered, of another site or epoch, or signed by another key), or when the last line has
no signature. A covered line altered changes every
hash after it, so the covering signature fails: each line it covers is refused with
that reason (a batch of one run: all of it). Messages sent alone are always signed one by
one.

A subscriber otherwise treats each line exactly as the same message sent alone, with
site and gateway taken from the batch topic: one bad line is refused (a dead letter) and
the others are stored. The MQTT acknowledgement of a batch, as of any message, comes once
every line is in the store.

Bounds (a subscriber refuses the whole batch, naming the first one broken):

- the packet: at most the broker's ``max_packet_size`` (65,536 bytes in
  ``deploy/mosquitto/mosquitto.conf``), so the compressed payload is at most
  :data:`MAX_PACKED_BYTES`;
- unpacked, at most :data:`MAX_UNPACKED_BYTES` (decompressed with that bound, so a small
  payload that inflates to gigabytes costs at most that much memory) and
  :data:`MAX_MESSAGES` lines;
- exactly one zlib stream, complete, nothing after it.

The live lane never uses it: a current reading goes alone, at once.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from contract import custody

#: the broker's largest packet [bytes]: deploy/mosquitto/mosquitto.conf, max_packet_size
MAX_PACKET_BYTES = 65_536
#: largest compressed payload [bytes]: the packet less its fixed header (5), topic (2 + at
#: most 135 for ids of 63 characters) and packet id (2), rounded down
MAX_PACKED_BYTES = 65_536 - 256
#: largest payload once decompressed [bytes]
MAX_UNPACKED_BYTES = 4 * 1024 * 1024
#: most messages in one batch
MAX_MESSAGES = 10_000
#: zlib level: the link, not the gateway's CPU, is what is scarce
LEVEL = 9


def pack(messages: Sequence[bytes], limit: int = MAX_PACKED_BYTES) -> tuple[bytes, int]:
    """Compress the longest prefix of ``messages`` that fits in ``limit`` bytes, each signed
    message of a chain run written thin (``custody.batch_line``: the module doc).

    Parameters
    ----------
    messages : sequence of bytes
        Reading messages in sending order, each exactly as it would be sent alone; the
        batch ends before one that is empty or holds a newline byte.
    limit : int
        Largest payload [bytes].

    Returns
    -------
    payload : bytes
        The batch payload (empty when ``count`` is 0).
    count : int
        How many of ``messages``, from the first, it holds: 0 when the first one alone
        does not fit (send it alone).
    """
    co = zlib.compressobj(LEVEL)
    parts: list[bytes] = []
    lines: list[custody.BatchLine] = []
    size = n = raw = 0
    finish = b""  # what ends the payload after the last step: the last line's end, the stream's
    step = 64  # lines per sync flush: a few bytes each, and an exact size after every step
    while n < len(messages) and step:
        chunk = messages[n:n + step]
        if n + len(chunk) > MAX_MESSAGES or any(b"\n" in m or not m for m in chunk):
            step //= 8
            continue
        while len(lines) < n + len(chunk):
            lines.append(custody.batch_line(messages[len(lines)], lines[-1] if lines else None))
        # each line's end is written once the line after it is known: the last keeps its signature
        body = b"".join(_joined(lines, n, n + len(chunk)))
        last = lines[n + len(chunk) - 1].end
        if raw + len(body) + len(last) > MAX_UNPACKED_BYTES:
            step //= 8
            continue
        before = co.copy()
        piece = co.compress(body) + co.flush(zlib.Z_SYNC_FLUSH)
        end = co.copy()
        tail = end.compress(last) + end.flush()
        if size + len(piece) + len(tail) > limit:
            co = before  # that step is too much: try fewer lines
            step //= 8
            continue
        parts.append(piece)
        size += len(piece)
        raw += len(body)
        n += len(chunk)
        finish = tail
    if not n:
        return b"", 0
    parts.append(finish)
    return b"".join(parts), n


def _joined(lines: list[custody.BatchLine], first: int, stop: int):
    """The bytes of lines ``first`` to ``stop`` - 1, the end of the line before ``first``
    (if any) first, without the last one's end."""
    for i in range(first, stop):
        if i:
            yield (lines[i - 1].end_covered if lines[i].linked else lines[i - 1].end) + b"\n"
        yield lines[i].head


def unpack(payload: bytes) -> list[bytes]:
    """The messages of a batch payload; ``ValueError`` naming what is wrong with it."""
    if len(payload) > MAX_PACKED_BYTES:
        raise ValueError(f"batch of {len(payload)} bytes: at most {MAX_PACKED_BYTES} compressed")
    d = zlib.decompressobj()
    try:
        text = d.decompress(payload, MAX_UNPACKED_BYTES)
        over = bool(d.unconsumed_tail) or bool(d.decompress(b"", 1))
    except zlib.error as exc:
        raise ValueError(f"batch is not a zlib stream: {exc}") from None
    if over:
        raise ValueError(f"batch unpacks to more than {MAX_UNPACKED_BYTES} bytes")
    if not d.eof:
        raise ValueError("batch is a truncated zlib stream")
    if d.unused_data:
        raise ValueError(f"batch has {len(d.unused_data)} byte(s) after its zlib stream")
    lines = text.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if len(lines) > MAX_MESSAGES:
        raise ValueError(f"batch of {len(lines)} messages: at most {MAX_MESSAGES}")
    return lines
