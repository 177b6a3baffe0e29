"""A site's chain-of-custody settings: its gateway's signing key and the public keys
that verify it.

The edge computer's site file names the private key file; the server's site file lists
the public keys, each with the period in which it signs. ``contract.custody`` defines
what is signed and how it is checked.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from functools import cached_property
from typing import Annotated

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field, field_validator, model_validator

from contract.config.problems import Loc, raise_problems
from contract.config.profile import Strict

#: a key id: lower-case letters, digits, ``.``, ``_`` and ``-``, as it appears in messages
KEY_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"
KeyId = Annotated[str, Field(pattern=KEY_ID_PATTERN)]
#: a public key in a site file: PEM (SubjectPublicKeyInfo) or the 32 raw bytes in base64
MAX_PUBLIC_KEY_TEXT = 1024


def public_key_raw(text: str) -> bytes:
    """The 32 raw bytes of an Ed25519 public key given as PEM or as base64 of the raw
    bytes; ``ValueError`` naming what is wrong."""
    if len(text) > MAX_PUBLIC_KEY_TEXT:
        raise ValueError(f"a public key of {len(text)} characters: an Ed25519 key is at most a few lines")
    if text.lstrip().startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
            raise ValueError("not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"a {type(key).__name__.removeprefix('_')} PEM key, not Ed25519")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("neither PEM nor base64") from None
    if len(raw) != 32:
        raise ValueError(f"base64 of {len(raw)} bytes: an Ed25519 public key is 32 raw bytes")
    return raw


def fingerprint(raw: bytes) -> str:
    """SHA-256 of the raw public key, lower-case hex (``sha256sum`` of the 32 bytes)."""
    return hashlib.sha256(raw).hexdigest()


def _midnight(v):
    """A date (or date-only text) is its 00:00 UTC."""
    if isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v.strip()):
        v = dt.date.fromisoformat(v.strip())
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return dt.datetime(v.year, v.month, v.day, tzinfo=dt.UTC)
    return v


class CustodyKey(Strict):
    """One public key of a gateway and when it signs: from ``valid_from`` up to, not
    including, ``valid_to``; a key ``revoked`` at a time signs nothing stamped from then on."""

    id: KeyId
    public_key: str
    #: SHA-256 of the raw public key (hex): a check that the key was copied whole
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: a date means 00:00 UTC; a time must say its zone
    valid_from: dt.datetime
    valid_to: dt.datetime | None = None
    revoked: dt.datetime | None = None

    @field_validator("valid_from", "valid_to", "revoked", mode="before")
    @classmethod
    def _dates(cls, v):
        return _midnight(v)

    @field_validator("valid_from", "valid_to", "revoked")
    @classmethod
    def _utc(cls, v: dt.datetime | None) -> dt.datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError(f"{v.isoformat()} has no time zone: add Z (UTC) or an offset")
        return None if v is None else v.astimezone(dt.UTC)

    @field_validator("public_key")
    @classmethod
    def _parsable(cls, v: str) -> str:
        public_key_raw(v)
        return v

    @model_validator(mode="after")
    def _coherent(self) -> CustodyKey:
        problems: list[tuple[Loc, str]] = []
        actual = fingerprint(self.raw)
        if actual != self.fingerprint:
            problems.append((("fingerprint",), f"{self.fingerprint} is not the public key's fingerprint ({actual}): "
                                               "the key or the fingerprint was copied wrongly"))
        if self.valid_to is not None and self.valid_to <= self.valid_from:
            problems.append((("valid_to",), f"{self.valid_to.isoformat()} is not after valid_from"))
        if self.revoked is not None and self.revoked < self.valid_from:
            problems.append((("revoked",), f"{self.revoked.isoformat()} is before valid_from: the key never signed"))
        raise_problems(problems)
        return self

    @cached_property
    def raw(self) -> bytes:
        return public_key_raw(self.public_key)

    @cached_property
    def ed25519(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)

    @property
    def ends(self) -> dt.datetime | None:
        """When the key stops signing: its ``valid_to`` or revocation, whichever is first."""
        ends = [t for t in (self.valid_to, self.revoked) if t is not None]
        return min(ends) if ends else None

    def pem(self) -> str:
        return self.ed25519.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


class Custody(Strict):
    #: the gateway's private key (edge computer only): PEM PKCS#8, mode 0600
    private_key_file: str | None = None
    #: the id the gateway signs as (the ``id`` of this key in the server's ``keys``);
    #: given with ``private_key_file``
    key_id: KeyId | None = None
    #: refuse readings of this site that are not signed by one of ``keys``
    require_signatures: bool = False
    keys: list[CustodyKey] = Field(default_factory=list)

    @model_validator(mode="after")
    def _coherent(self) -> Custody:
        problems: list[tuple[Loc, str]] = []
        if (self.private_key_file is None) != (self.key_id is None):
            problems.append((("key_id",) if self.key_id is None else ("private_key_file",),
                             "private_key_file and key_id go together: the gateway signs with the file's key "
                             "as key_id"))
        if self.key_id is not None and self.keys and self.key_id not in {k.id for k in self.keys}:
            problems.append((("key_id",), f"'{self.key_id}' is not one of the ids in keys: the collector "
                                          "would refuse everything signed as it"))
        if self.require_signatures and not self.keys:
            problems.append((("require_signatures",), "signatures are required but no keys are listed"))
        ids: dict[str, int] = {}
        prints: dict[str, int] = {}
        for i, k in enumerate(self.keys):
            if k.id in ids:
                problems.append((("keys", i, "id"), f"key id '{k.id}' repeated (first at keys[{ids[k.id]}])"))
            if k.fingerprint in prints:
                problems.append((("keys", i, "public_key"), f"the same key as keys[{prints[k.fingerprint]}]"))
            ids.setdefault(k.id, i)
            prints.setdefault(k.fingerprint, i)
        # one gateway signs with one key at a time: two keys valid at once would let a
        # retired key go on signing for the period of its successor
        order = sorted(range(len(self.keys)), key=lambda i: self.keys[i].valid_from)
        for a, b in zip(order, order[1:]):
            ends = self.keys[a].ends
            if ends is None or ends > self.keys[b].valid_from:
                problems.append((("keys", b, "valid_from"),
                                 f"key '{self.keys[b].id}' starts while key '{self.keys[a].id}' is still valid: "
                                 f"end that one (valid_to) at {self.keys[b].valid_from.isoformat()} or earlier"))
        raise_problems(problems)
        return self
