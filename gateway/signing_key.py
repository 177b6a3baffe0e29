"""The gateway's signing key, loaded once at start from the site file's ``custody``."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.config.custody import Custody
from contract.custody import CustodyError, load_private_key


@dataclass(frozen=True)
class SigningKey:
    id: str
    key: Ed25519PrivateKey


def signing_key(custody: Custody) -> SigningKey | None:
    """The key the gateway signs with, or ``None`` when the site file names none;
    ``CustodyError`` naming the file if it cannot be used, or if it is not the public key
    the site file lists under its id (every reading it signed would be refused)."""
    if custody.private_key_file is None:
        return None
    key = load_private_key(custody.private_key_file)
    listed = next((k for k in custody.keys if k.id == custody.key_id), None)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if listed is not None and listed.raw != raw:
        raise CustodyError(f"{custody.private_key_file}: not the private key of custody.keys '{custody.key_id}' "
                           "(its public key differs)")
    return SigningKey(custody.key_id, key)
