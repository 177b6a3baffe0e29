"""Chain of custody: reading messages signed at the site and chained along ``seq``.

Signed bytes and signature
--------------------------
A signed message is a reading message (``contract.message``) with three more top-level
members, all appended after the reading's own members::

    {"schema":1,...,"status":"ok","prev":"<64 hex>","key":"<key id>","sig":"<88 base64>"}

The **signed bytes** ``B`` are the message's bytes up to ``"key":"<key id>"`` followed
by ``}``: the UTF-8 text of a JSON object whose last two members are ``prev`` and
``key``. The message is ``B`` without its final ``}``, then ``,"sig":"``, the
signature in standard base64 (88 characters, ending ``==``) and ``"}``. The suffix after
``B`` minus its ``}`` is therefore always exactly 98 bytes, so a verifier recovers ``B``
by cutting the last 98 bytes and appending ``}``, without parsing or re-serializing JSON:
nothing is ever re-encoded, so numbers, escapes and key order are whatever the gateway
sent and still verify. The signature is Ed25519 (RFC 8032, pure, no pre-hash) over
``B`` by the key named in ``key``.

Hash chain
----------
``prev`` is the SHA-256 (lower-case hex) of the signed bytes ``B`` of the previous
message of the same site, gateway and ``epoch`` (``seq`` one less). The first message of
an epoch has ``seq`` 1 and ``prev`` = 64 zeros (``GENESIS``). A signed message must
carry an ``epoch``. A missing message shows as a gap in ``seq`` whose successor's
``prev`` has no match; an altered one breaks its signature; a replayed one repeats a
``seq`` already seen; a reordered one arrives after a higher ``seq``.

Covered messages
----------------
The signature of a message covers every message before it in its chain: it is over
``B``, which holds ``prev``, the hash of the signed bytes before, which hold their
``prev``, and so on. A message may therefore travel and be kept as its signed bytes
``B`` alone, without ``sig`` (a **covered** message: it ends ``"prev":"<64 hex>","key":"<key id>"}``).
It verifies exactly when the chain links it to a message whose signature verifies: the
message after it in the sequence (same site, gateway and epoch, ``seq`` one more)
carries ``sha256(B)`` as its ``prev``, names the same key and is itself signed and
verified, or covered and linked on in the same way. The key it names must still be one
of its site's, valid at its ``ts`` and not revoked, as must the covering signature's
(the same key: a signature vouches only for messages naming its key, else a retired or
revoked key would vouch for a message stamped in its successor's time). ``verify_chained`` checks a
sequence of messages so; a covered message with nothing signed after it is
``not_covered``. The batch form (``contract/batch.py``, ``open_batch``) sends a backlog so.

Checks
------
``verify`` gives one message's verdict against a site's keys (``CustodyKey``): the key
named must be one of the site's, its signature must hold, and the message's ``ts`` must
fall in the key's validity and before its revocation. ``verify_chained`` does the same
for a sequence of messages, covered ones among them. ``chain_breaks`` lists what is
wrong with the chains of a sequence of messages in the order they came. Both bound every
field they read: a message is input, from anyone who can reach the broker or the files.

Custody folder
--------------
The layout a verifier is given (``write_folder``; ``jcm verify`` reads it)::

    custody/keys.json             [{"site": ..., "id": ..., "public_key": ..., "fingerprint": ...,
                                    "valid_from": ..., "valid_to": ..., "revoked": ...}, ...]
    custody/keys/<key id>.pem     the same public keys as PEM, for openssl
    custody/messages/*.jsonl.gz   the signed messages, one per line, bytes as kept (a covered
                                  one as its signed bytes), ordered by chain and seq

An export puts each chain's witnesses there too (``processing.export.custody_folder``): its
last message before the window of readings the figures are computed from and its first
after it, signed and linked, which show that the chain was not cut short inside that
window; ``jcm verify`` names a chain end without one.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import multiprocessing
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pydantic import ValidationError

from contract.config.custody import KEY_ID_PATTERN, Custody, CustodyKey, public_key_raw
from contract.config.problems import KeyProblems
from contract.message import ID_PATTERN, Reading, unique_members

#: ``prev`` of the first message of an epoch
GENESIS = "0" * 64
#: bytes after the signed bytes' final ``}`` is removed: ``,"sig":"`` + 88 + ``"}``
SIG_SUFFIX_BYTES = 98
#: largest signed message: above the largest reading the contract's bounds allow
MAX_MESSAGE_BYTES = 1 << 20
#: most covered messages in a row a verifier holds while it looks for their signature: a
#: batch carries at most 10,000 (contract/batch.py), so a run is normally no longer
MAX_COVERED_RUN = 20_000
#: most messages, and bytes of them, whose signatures a worker process checks at a time
#: (``verify_chained`` with ``jobs``); a bound on what is held, with two chunks per worker ahead
CHUNK, CHUNK_BYTES = 1024, 1 << 20
#: fewer chunks than this are checked in one process: starting workers would cost more
PARALLEL_CHUNKS = 8

_T = TypeVar("_T")
_KEY_ID = re.compile(KEY_ID_PATTERN)
_SITE = re.compile(ID_PATTERN)
_HASH = re.compile(r"^[0-9a-f]{64}$")
_SUFFIX = re.compile(rb',"sig":"([A-Za-z0-9+/]{86}==)"}')
_TAIL = re.compile(rb',"prev":"([0-9a-f]{64})","key":"(' + KEY_ID_PATTERN.strip("^$").encode() + rb')"}')
#: the end of signed bytes in a batch line, whose ``prev`` may be left out (``ELIDED``)
_BATCH_TAIL = re.compile(rb',"prev":"((?:[0-9a-f]{64})?)","key":"' + KEY_ID_PATTERN.strip("^$").encode() + rb'"}')
#: ``prev`` as a batch line leaves it out: the hash of the signed bytes of the line before
ELIDED = ""


class CustodyError(ValueError):
    """A key file or custody folder that cannot be used; the message names it."""


def sign(body: str | bytes, prev: str, key_id: str, key: Ed25519PrivateKey) -> bytes:
    """Sign a reading message (``Reading.to_json``) as the link after ``prev``.

    Parameters
    ----------
    body : str or bytes
        The reading's compact JSON object, as published unsigned.
    prev : str
        ``chain_hash`` of the previous message of this gateway and epoch, or ``GENESIS``.
    key_id : str
        The id of ``key`` in the site's ``custody.keys``.
    key : Ed25519PrivateKey

    Returns
    -------
    bytes
        The signed message, UTF-8.
    """
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if not raw.endswith(b"}") or not _HASH.fullmatch(prev) or not _KEY_ID.fullmatch(key_id):
        raise ValueError("sign() takes a JSON object, a 64-hex-digit prev and a key id")
    signed = raw[:-1] + b',"prev":"' + prev.encode() + b'","key":"' + key_id.encode() + b'"}'
    if len(signed) + SIG_SUFFIX_BYTES - 1 > MAX_MESSAGE_BYTES:
        raise ValueError(f"a signed message would exceed {MAX_MESSAGE_BYTES} bytes, which no verifier accepts")
    sig = base64.b64encode(key.sign(signed))
    return signed[:-1] + b',"sig":"' + sig + b'"}'


def signed_bytes(message: bytes) -> bytes:
    """The bytes the signature covers; ``ValueError`` if the message has no signature suffix."""
    if _suffix(message) is None:
        raise ValueError('does not end with a "sig" member of 88 base64 characters')
    return message[:-SIG_SUFFIX_BYTES] + b"}"


def _suffix(message: bytes) -> re.Match | None:
    # anchored at the fixed-length end: no scan of a long message
    return _SUFFIX.fullmatch(message, max(len(message) - SIG_SUFFIX_BYTES, 0))


def chain_hash(message: bytes) -> str:
    """What the next message of the chain carries as ``prev``: SHA-256 of the signed bytes, hex."""
    return hashlib.sha256(signed_bytes(message)).hexdigest()


@dataclass(frozen=True)
class Verdict:
    """One message checked. ``kind`` and ``reason`` are ``None`` when the message verified."""

    kind: str | None  # malformed, unknown_key, bad_signature, key_not_valid, key_revoked
    reason: str | None
    reading: Reading | None = None  # None when the message did not parse
    key_id: str | None = None
    prev: str | None = None
    hash: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind is None

    @property
    def chain(self) -> tuple[str, str, str] | None:
        r = self.reading
        return None if r is None else (r.site, r.gateway, r.epoch)


def _parse(message: bytes) -> Verdict:
    """Split and parse a signed message without checking its signature: a ``Verdict``
    whose reason says why it is malformed, or of kind ``"unverified"``."""
    if len(message) > MAX_MESSAGE_BYTES:
        return Verdict("malformed", f"malformed: {len(message)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        signed = signed_bytes(message)
    except ValueError as exc:
        return Verdict("malformed", f"malformed: {exc}")
    return _parse_signed(signed)


def _parse_signed(signed: bytes) -> Verdict:
    """``_parse`` of the signed bytes alone."""
    if len(signed) > MAX_MESSAGE_BYTES:
        return Verdict("malformed", f"malformed: {len(signed)} bytes, more than {MAX_MESSAGE_BYTES}")
    tail = _TAIL.fullmatch(signed, max(signed.rfind(b',"prev":"'), 0))
    if tail is None:
        return Verdict("malformed", 'malformed: the signed bytes do not end with "prev" (64 hex) and "key" (a key id)')
    try:
        reading = Reading.from_json(signed)
        members = json.loads(signed, object_pairs_hook=unique_members) if _may_hold_sig(signed) else {}
    except ValueError as exc:
        return Verdict("malformed", f"malformed: {exc}")
    if "sig" in members:
        return Verdict("malformed", 'malformed: a "sig" member inside the signed bytes')
    if reading.epoch is None:
        return Verdict("malformed", "malformed: a signed message must carry an epoch")
    prev, key_id = tail.group(1).decode(), tail.group(2).decode()
    return Verdict("unverified", "unverified", reading, key_id, prev, hashlib.sha256(signed).hexdigest())


def _may_hold_sig(signed: bytes) -> bool:
    """Whether ``json.loads`` of signed bytes that ``Reading.from_json`` read could find a
    ``sig`` member or refuse them: a member's name is ``sig`` only if its text is, or holds an
    escape, and ``json`` refuses only an integer of more digits than Python converts, which a
    text shorter than that limit cannot hold. Saves parsing every message twice."""
    limit = sys.get_int_max_str_digits()
    return b"sig" in signed or b"\\" in signed or (limit != 0 and len(signed) > limit)


def verify(message: bytes, keys: Mapping[str, Sequence[CustodyKey]]) -> Verdict:
    """Check one signed message against the keys of the site it names (``keys`` by site).

    Kinds, in the order checked: ``malformed``, ``unknown_key``, ``bad_signature``,
    ``key_not_valid`` (the message's ``ts`` is outside the key's validity), ``key_revoked``.
    """
    return _checked(_parse(message), keys, message)


def _checked(v: Verdict, keys: Mapping[str, Sequence[CustodyKey]], message: bytes | None,
             checked: Mapping[bytes, bool] | None = None) -> Verdict:
    """The checks of ``verify`` on a parsed message (``_parse``); ``message`` ``None`` for a
    covered one, whose signature is another message's. ``checked``: its Ed25519 check by
    each key of the id it names (by the key's raw bytes), when a worker made it
    (``_signatures``)."""
    if v.reading is None:
        return v
    key = next((k for k in keys.get(v.reading.site, ()) if k.id == v.key_id), None)
    if key is None:
        return Verdict("unknown_key", f"unknown key '{v.key_id}' (not a key of site {v.reading.site})",
                       v.reading, v.key_id)
    if message is not None:
        text = _suffix(message).group(1)
        sig = base64.b64decode(text)
        if base64.b64encode(sig) != text:
            # the last character's 4 unused bits: two texts of one signature would be two messages
            return Verdict("malformed", "malformed: the signature is not in canonical base64", v.reading, v.key_id)
        ok = checked.get(key.raw) if checked else None
        if ok is None:
            try:
                key.ed25519.verify(sig, signed_bytes(message))
                ok = True
            except InvalidSignature:
                ok = False
        if not ok:
            return Verdict("bad_signature", f"bad signature (key '{key.id}')", v.reading, v.key_id)
    ts = v.reading.ts
    if ts < key.valid_from or (key.valid_to is not None and ts >= key.valid_to):
        until = key.valid_to.isoformat() if key.valid_to else "open"
        return Verdict("key_not_valid", f"key '{key.id}' not valid at {ts.isoformat()} "
                                        f"(valid {key.valid_from.isoformat()} .. {until})", v.reading, v.key_id)
    if key.revoked is not None and ts >= key.revoked:
        return Verdict("key_revoked", f"key '{key.id}' revoked at {key.revoked.isoformat()}, "
                                      f"message stamped {ts.isoformat()}", v.reading, v.key_id)
    return Verdict(None, None, v.reading, v.key_id, v.prev, v.hash)


def is_covered(message: bytes) -> bool:
    """Whether ``message`` is the signed bytes of a message alone, without its ``sig`` (a
    covered message: the module doc)."""
    return (_suffix(message) is None
            and _TAIL.fullmatch(message, max(message.rfind(b',"prev":"'), 0)) is not None)


def link(message: bytes) -> tuple[str, str] | None:
    """``(prev, hash)`` of a signed or covered message, read without parsing it (what links
    it to its neighbours); ``None`` for any other."""
    signed = message[:-SIG_SUFFIX_BYTES] + b"}" if _suffix(message) is not None else message
    tail = _TAIL.fullmatch(signed, max(signed.rfind(b',"prev":"'), 0))
    return None if tail is None else (tail.group(1).decode(), hashlib.sha256(signed).hexdigest())


def verify_chained(items: Iterable[_T], keys: Mapping[str, Sequence[CustodyKey]],
                   raw: Callable[[_T], bytes] = bytes, jobs: int = 1) -> Iterator[tuple[_T, Verdict]]:
    """``verify`` of each of a sequence of messages (``raw(item)``), covered ones among them,
    in the order given: a covered message verifies when the messages right after it link
    it to one whose signature verifies (the module doc). A covered message's verdict waits
    for the messages after it, up to its covering one.

    Kinds: those of ``verify``; ``not_covered`` (no signed message follows it linked); a
    covered message whose covering message is refused takes that message's kind, its
    reason naming it.

    With ``jobs`` above 1, at least ``PARALLEL_CHUNKS`` chunks of messages and a system that
    forks, the Ed25519 checks (most of the time) are made ahead by that many worker processes, a chunk
    (``CHUNK``) at a time; all else, and the order, stay in this process, so the verdicts
    are the same whatever ``jobs`` is.
    """
    entries = ((item, raw(item), None, None) for item in items)
    parallel = jobs > 1 and "fork" in multiprocessing.get_all_start_methods()
    return _chained(_signed_ahead(entries, keys, jobs) if parallel else entries, keys)


def _chained(items: Iterable[tuple[_T, bytes, Verdict | None, Mapping[bytes, bool] | None]],
             keys: Mapping[str, Sequence[CustodyKey]]) -> Iterator[tuple[_T, Verdict]]:
    """``verify_chained`` of (item, message, its parse when the caller has it, its signature
    checks when a worker made them)."""
    run: deque[tuple[_T, Verdict, Verdict]] = deque()  # covered messages waiting: item, parsed, own checks
    for item, message, parsed, checked in items:
        signed = _suffix(message) is not None
        covered = not signed and (parsed is not None or is_covered(message))
        p = parsed or (_parse_signed(message) if covered else _parse(message))
        if run and not _follows(run[-1][1], p):
            yield from _uncovered(run, p)
            run.clear()
        if covered and p.reading is not None:
            if len(run) == MAX_COVERED_RUN:  # a bound on what is held: the oldest is not covered
                yield from _uncovered([run.popleft()], None, f"more than {MAX_COVERED_RUN} covered messages in a row")
            run.append((item, p, _checked(p, keys, None)))
            continue
        v = _checked(p, keys, None if covered else message, checked)
        for waiting, parse, own in run:
            yield waiting, own if v.ok or not own.ok else Verdict(
                v.kind, f"covered by seq {v.reading.seq}, refused: {v.reason}", parse.reading, parse.key_id)
        run.clear()
        yield item, v
    if run:
        yield from _uncovered(run, None)


def _signed_ahead(entries: Iterator[tuple], keys: Mapping[str, Sequence[CustodyKey]],
                  jobs: int) -> Iterator[tuple]:
    """``entries`` of ``_chained``, in order, each with its signature checks made by ``jobs``
    worker processes; unchanged when they are fewer than ``PARALLEL_CHUNKS`` chunks."""
    chunks = _chunks(entries)
    head = list(islice(chunks, PARALLEL_CHUNKS))
    if len(head) < PARALLEL_CHUNKS:
        for chunk in head:
            yield from chunk
        return
    by_id: dict[str, list[bytes]] = {}
    for site_keys in keys.values():
        for k in site_keys:
            by_id.setdefault(k.id, []).append(k.raw)
    chunks = chain(head, chunks)
    # fork: a worker needs only this module and the keys, already here (the verifier runs no threads)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
                             initargs=(by_id, os.getpid())) as pool:
        pending: deque = deque()
        while True:
            while len(pending) < 2 * jobs and (chunk := next(chunks, None)):
                pending.append((chunk, pool.submit(_signatures, [message for _, message, _, _ in chunk])))
            if not pending:
                return
            chunk, done = pending.popleft()
            for (item, message, parsed, _), checked in zip(chunk, done.result(), strict=True):
                yield item, message, parsed, checked


def _chunks(entries: Iterable[tuple]) -> Iterator[list[tuple]]:
    """``entries`` in lists of ``CHUNK``, or fewer once their messages reach ``CHUNK_BYTES``."""
    chunk, held = [], 0
    for entry in entries:
        chunk.append(entry)
        held += len(entry[1])
        if len(chunk) >= CHUNK or held >= CHUNK_BYTES:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


#: a worker's keys: the public keys of each key id (``_start_worker``)
_WORKER_KEYS: dict[str, list[tuple[bytes, Ed25519PublicKey]]] = {}


def _start_worker(by_id: dict[str, list[bytes]], parent: int) -> None:
    _WORKER_KEYS.update({key_id: [(raw, Ed25519PublicKey.from_public_bytes(raw)) for raw in raws]
                         for key_id, raws in by_id.items()})
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()


def _exit_without(parent: int) -> None:
    """End this worker once ``parent`` is gone: a parent killed (``kill``, a timeout) leaves
    its workers waiting for work that never comes, for ever."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _signatures(messages: list[bytes]) -> list[dict[bytes, bool] | None]:
    """In a worker: the Ed25519 check of each signed message by each key of the id it names,
    by the key's raw bytes; ``None`` for a message without a signature or key id to check
    (its verdict says why). Which key applies (the site's) and all other checks are the
    caller's (``_checked``)."""
    out: list[dict[bytes, bool] | None] = []
    for message in messages:
        suffix = _suffix(message) if len(message) <= MAX_MESSAGE_BYTES else None
        signed = message[:-SIG_SUFFIX_BYTES] + b"}"
        tail = suffix and _TAIL.fullmatch(signed, max(signed.rfind(b',"prev":"'), 0))
        if not tail:
            out.append(None)
            continue
        sig, checked = base64.b64decode(suffix.group(1)), {}
        for raw, key in _WORKER_KEYS.get(tail.group(2).decode(), ()):
            try:
                key.verify(sig, signed)
                checked[raw] = True
            except InvalidSignature:
                checked[raw] = False
        out.append(checked)
    return out


def _follows(before: Verdict, after: Verdict) -> bool:
    """Whether ``after`` is the message after ``before`` in its chain, carrying its hash,
    under the same key: a signature vouches only for messages that name its key, or a key
    out of its rules (retired, revoked) would vouch for messages stamped in another's time."""
    return (after.reading is not None and after.chain == before.chain
            and after.reading.seq == before.reading.seq + 1 and after.prev == before.hash
            and after.key_id == before.key_id)


def _uncovered(run: Sequence[tuple[_T, Verdict, Verdict]], after: Verdict | None,
               why: str | None = None) -> Iterator[tuple[_T, Verdict]]:
    last = run[-1][1]
    where = f"seq {last.reading.seq} of {'/'.join(last.chain)}"
    other_key = after is not None and after.reading is not None and after.key_id != last.key_id
    reason = (f"not covered: {why}" if why else
              f"not covered: {where} has no signature and nothing after it" if after is None else
              f"not covered: {where} has no signature and the message after it is under key "
              f"'{after.key_id}', not '{last.key_id}'" if other_key else
              f"not covered: {where} has no signature and the message after it is not seq "
              f"{last.reading.seq + 1} of its chain carrying its hash")
    for item, parse, own in run:
        yield item, own if not own.ok else Verdict("not_covered", reason, parse.reading, parse.key_id)


def open_batch(lines: Sequence[bytes], keys: Mapping[str, Sequence[CustodyKey]]) -> list[tuple[bytes, Verdict | None]]:
    """The messages of a batch's lines (``contract/batch.py``): a line whose ``prev`` is left
    out gets it back, byte for byte; with the verdict of each covered line and of each signed
    one that verified (``None``: check the line as a message sent alone).

    ``ValueError`` naming the first line that breaks the batch form, for which the whole
    batch is refused: a ``prev`` left out on a line that does not follow its chain's
    seq - 1, a covered line not followed by its successor, a last line without its
    signature.
    """
    items = []
    before: Verdict | None = None  # the line before, when signed or covered
    for i, line in enumerate(lines, 1):
        signed = _suffix(line) is not None
        body = line[:-SIG_SUFFIX_BYTES] + b"}" if signed else line
        tail = _BATCH_TAIL.fullmatch(body, max(body.rfind(b',"prev":"'), 0))
        if tail is None:  # unsigned, or a signed message too malformed to be part of a chain
            items.append((i, line, None, None))
            before = None
            continue
        elided = tail.group(1) == ELIDED.encode()
        if elided:
            if before is None:
                raise ValueError(f'line {i}: "prev" left out, but '
                                 + ("it is the first line" if i == 1 else f"line {i - 1} is not a signed message"))
            body = body[:tail.start(1)] + before.hash.encode() + body[tail.end(1):]
        p = _parse_signed(body)
        if elided and (p.reading is None or p.chain != before.chain or p.reading.seq != before.reading.seq + 1):
            what = p.reason if p.reading is None else (f"line {i - 1} is not seq {p.reading.seq - 1} "
                                                       f"of {'/'.join(p.chain)}")
            raise ValueError(f'line {i}: "prev" left out, but {what}')
        items.append((i, body[:-1] + line[-SIG_SUFFIX_BYTES:] if signed else body, p, None))
        before = p if p.reading is not None else None
    if all(p is None for _, _, p, _ in items):
        # no line is signed or covered (an unsigned site's backlog): no chain to check, and
        # every line is checked as a message sent alone
        return [(line, None) for line in lines]
    verdicts = {}
    for i, v in _chained(items, keys):
        if v.kind == "not_covered":
            raise ValueError(f"line {i}: {v.reason}")
        verdicts[i] = v
    return [(message, v if (p is not None and (v.ok or not _suffix(message))) else None)
            for (i, message, p, _), v in ((item, verdicts[item[0]]) for item in items)]


def batch_line(message: bytes, before: BatchLine | None) -> BatchLine:
    """How ``message`` is written as a line of a batch (``contract/batch.py``), ``before``
    being the line before it in the batch (``None`` for the first): its ``prev`` left out
    when it is the hash of the message before and both name one key, and its signature left
    out (``end_covered``) when the line after it is linked so in turn."""
    if _suffix(message) is not None:
        signed = message[:-SIG_SUFFIX_BYTES] + b"}"
        tail = _TAIL.fullmatch(signed, max(signed.rfind(b',"prev":"'), 0))
        if tail is not None:
            key_id = tail.group(2).decode()
            linked = before is not None and before.hash == tail.group(1).decode() and before.key_id == key_id
            head = signed[:tail.start(1)] + signed[tail.end(1):-1] if linked else signed[:-1]
            return BatchLine(head, message[-SIG_SUFFIX_BYTES:], hashlib.sha256(signed).hexdigest(), linked, key_id)
    return BatchLine(message, b"", None, False)


@dataclass(frozen=True)
class BatchLine:
    """A message as a batch line: ``head``, then ``end`` (its signature) when it is the last
    line or the next line does not follow it, or ``end_covered`` when it does."""

    head: bytes
    end: bytes
    hash: str | None  # chain_hash, when signed
    linked: bool  # its prev left out
    key_id: str | None = None  # when signed: a line under another key keeps its signature

    @property
    def end_covered(self) -> bytes:
        return b"}" if self.end else b""


@dataclass(frozen=True)
class Break:
    """Something wrong with a chain (site, gateway, epoch)."""

    chain: tuple[str, str, str]
    kind: str  # gap, wrong_prev, reorder, replay, conflict
    first_seq: int
    last_seq: int
    detail: str

    def __str__(self) -> str:
        seqs = f"seq {self.first_seq}" + (f"..{self.last_seq}" if self.last_seq != self.first_seq else "")
        return f"{'/'.join(self.chain)} {seqs}: {self.kind}: {self.detail}"


def chain_breaks(verdicts: Iterable[Verdict]) -> list[Break]:
    """Breaks in the chains of messages in the order they came; only verified messages
    count (a refused one is as good as missing, so it shows as a gap).

    - ``replay``: a seq seen before with the same signed bytes;
    - ``conflict``: a seq seen before with other bytes (a forgery or a forked gateway);
    - ``reorder``: a seq lower than one seen before in its chain;
    - ``gap``: seqs missing between the lowest and highest seen, never arrived;
    - ``wrong_prev``: ``prev`` differs from the hash of the message before it (where that
      one is present), or a seq 1 whose ``prev`` is not ``GENESIS``.

    A chain's first seq above 1 is not a break: a period's messages start mid-chain.
    """
    breaks: list[Break] = []
    seen: dict[tuple, dict[int, tuple[str, str]]] = {}  # chain -> seq -> (hash, prev)
    highest: dict[tuple, int] = {}
    for v in verdicts:
        if not v.ok:
            continue
        chain, seq = v.chain, v.reading.seq
        links = seen.setdefault(chain, {})
        if seq in links:
            same = links[seq][0] == v.hash
            breaks.append(Break(chain, "replay" if same else "conflict", seq, seq,
                                "the same message again" if same else "another message with this seq"))
            continue
        if seq < highest.get(chain, seq):
            breaks.append(Break(chain, "reorder", seq, seq, f"came after seq {highest[chain]}"))
        highest[chain] = max(seq, highest.get(chain, seq))
        links[seq] = (v.hash, v.prev)
    for chain, links in seen.items():
        seqs = sorted(links)
        for a, b in zip(seqs, seqs[1:]):
            if b > a + 1:
                breaks.append(Break(chain, "gap", a + 1, b - 1, f"{b - a - 1} message(s) missing"))
        for seq in seqs:
            before = links.get(seq - 1)
            expected = before[0] if before else GENESIS if seq == 1 else None
            if expected is not None and links[seq][1] != expected:
                what = "GENESIS" if before is None else f"seq {seq - 1}'s hash"
                breaks.append(Break(chain, "wrong_prev", seq, seq, f"prev is not {what}"))
    return breaks


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """The gateway's signing key; ``CustodyError`` naming the file if it is missing,
    readable by others, or not an Ed25519 PEM key."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_bytes() if not mode & 0o077 else b""
    except OSError as exc:
        raise CustodyError(f"{path}: cannot read the private key: {exc.strerror}") from None
    if mode & 0o077:
        raise CustodyError(f"{path}: private key readable by others (mode {mode & 0o777:o}): "
                           "chmod 600 it, or make a new key with jcm keygen if others may have read it")
    try:
        key = serialization.load_pem_private_key(text, password=None)
    except (ValueError, TypeError):
        raise CustodyError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CustodyError(f"{path}: not an Ed25519 key")
    return key


def write_folder(folder: Path, keys: dict[str, Sequence[CustodyKey]], messages: Iterable[bytes],
                 name: str = "messages") -> Path:
    """Write the custody folder of an export: ``keys`` by site, ``messages`` as received."""
    root = folder / "custody"
    (root / "messages").mkdir(parents=True, exist_ok=True)
    write_keys(root, keys)
    # mtime 0: the same messages give the same bytes, so SHA256SUMS of an export is reproducible
    with gzip.GzipFile(root / "messages" / f"{name}.jsonl.gz", "wb", mtime=0) as out:
        for m in messages:
            out.write(m + b"\n")
    return root


def write_keys(root: Path, keys: dict[str, Sequence[CustodyKey]]) -> None:
    """(Re)write the keys of the custody folder ``root``: ``keys.json`` and a PEM file each."""
    (root / "keys").mkdir(exist_ok=True)
    listed = [{"site": site, **k.model_dump(mode="json")} for site, ks in sorted(keys.items()) for k in ks]
    (root / "keys.json").write_text(json.dumps(listed, indent=1) + "\n")
    for site_keys in keys.values():
        for k in site_keys:
            (root / "keys" / f"{k.id}.pem").write_text(k.pem())


@dataclass(frozen=True)
class Line:
    where: str  # file and line number
    message: bytes


def read_folder(folder: Path) -> tuple[dict[str, list[CustodyKey]], Iterator[Line]]:
    """Keys by site and the messages (lazily) of a custody folder; ``CustodyError`` naming
    the file when the keys do not load."""
    root = folder / "custody"
    path = root / "keys.json"
    try:
        keys = _keys(json.loads(path.read_text()))
    except OSError as exc:
        raise CustodyError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise CustodyError(f"{path}: {exc}") from None
    except RecursionError:  # json recurses per bracket
        raise CustodyError(f"{path}: nested too deeply to be a list of keys") from None
    files = sorted((root / "messages").glob("*.jsonl.gz"))
    if not files:
        raise CustodyError(f"{root / 'messages'}: no *.jsonl.gz files of signed messages")
    return keys, _lines(files, folder)


def _keys(listed) -> dict[str, list[CustodyKey]]:
    """keys.json's keys by site, checked as a site file's ``custody.keys`` are."""
    if not isinstance(listed, list) or not all(isinstance(k, dict) for k in listed):
        raise ValueError("not a list of keys")
    by_site: dict[str, list[dict]] = {}
    for i, k in enumerate(listed):
        if not isinstance(k.get("site"), str) or not _SITE.fullmatch(k["site"]):
            raise ValueError(f"key {i + 1}: 'site' missing or not a site id")
        by_site.setdefault(k["site"], []).append({n: v for n, v in k.items() if n != "site"})
    keys = {}
    for site, entries in by_site.items():
        try:
            keys[site] = list(Custody(keys=entries).keys)
        except ValidationError as exc:
            raise ValueError(f"keys of site {site}: " + "; ".join(_problems(exc))) from None
    return keys


def _problems(exc: ValidationError) -> Iterator[str]:
    """``keys[0].fingerprint: what is wrong`` for each problem, on one line."""
    for e in exc.errors():
        error = e.get("ctx", {}).get("error")
        found = error.problems if isinstance(error, KeyProblems) else [((), e["msg"].removeprefix("Value error, "))]
        for loc, message in found:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"] + loc).lstrip(".")
            yield f"{where}: {message}"


def pem_problems(folder: Path, keys: Mapping[str, Sequence[CustodyKey]]) -> list[str]:
    """Each key whose PEM file (what openssl is given) is missing or is not the key in keys.json."""
    problems = []
    for site_keys in keys.values():
        for k in site_keys:
            name = Path("custody", "keys", f"{k.id}.pem")
            try:
                raw = public_key_raw((folder / name).read_text(errors="replace"))
            except OSError as exc:
                problems.append(f"{name}: cannot read: {exc.strerror}")
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
            else:
                if raw != k.raw:
                    problems.append(f"{name}: not the key '{k.id}' of keys.json")
    return problems


def _lines(files: list[Path], folder: Path) -> Iterator[Line]:
    for f in files:
        name = f.relative_to(folder)
        try:
            with gzip.open(f, "rb") as lines:
                n = 0
                while line := lines.readline(MAX_MESSAGE_BYTES + 2):
                    n += 1
                    if not line.endswith(b"\n"):
                        # a bound on each line: an overlong one is read to its end in pieces
                        # and given whole-too-long, so that parse() refuses it
                        while (rest := lines.readline(MAX_MESSAGE_BYTES)) and not rest.endswith(b"\n"):
                            pass
                    yield Line(f"{name}:{n}", line.rstrip(b"\n"))
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise CustodyError(f"{name}: not a readable gzip file: {exc}") from None


def key_files(key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """PEM (PKCS#8) of a private key and PEM of its public key, as ``jcm keygen`` writes them."""
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public
