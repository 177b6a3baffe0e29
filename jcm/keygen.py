"""``jcm keygen``: a gateway's Ed25519 signing key and the site-file lines that use it."""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.config.custody import fingerprint
from contract.custody import CustodyError, key_files
from contract.message import ID_PATTERN


def keygen(site: str, out: Path, now: dt.datetime | None = None) -> str:
    """Write ``<out>/<site>.key`` (0600) and ``<out>/<site>.pub``; return the site-file lines.

    Never overwrites: an existing key may be the one the site's readings are signed with."""
    if not re.fullmatch(ID_PATTERN, site):
        raise CustodyError(f"--site '{site}' is not a site id ({ID_PATTERN})")
    private, public = out / f"{site}.key", out / f"{site}.pub"
    for path in (private, public):
        if path.exists() or path.is_symlink():
            note = ""
            if path == private and path.stat().st_mode & 0o077:
                note = (f"; it is readable by others (mode {path.stat().st_mode & 0o777:o}): treat it as disclosed, "
                        "move it aside and make a new key, then revoke the old one in the server's site file")
            raise CustodyError(f"{path} exists: not overwritten (move it aside to make a new key){note}")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private_pem, public_pem = key_files(key)
    # O_EXCL: a file made between the check above and here is not overwritten either
    made: list[Path] = []
    try:
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        made.append(private)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, private_pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        with open(public, "xb") as f:
            made.append(public)
            f.write(public_pem)
    except OSError as exc:
        # a half-written pair would block the next attempt and sign nothing; O_EXCL and
        # "x": only files made here are removed
        for path in made:
            path.unlink(missing_ok=True)
        raise CustodyError(f"{out}: cannot write the key files: {exc.strerror or exc}") from None
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    print_ = fingerprint(raw)
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    key_id = f"{site}-{now:%Y%m%d}-{print_[:8]}"
    return "\n".join([
        f"# the edge computer's site file ({site}.yaml):",
        "custody:",
        f"  private_key_file: {private.resolve()}",
        f"  key_id: {key_id}",
        "",
        f"# the server's site file ({site}.yaml); when this key replaces one, set that key's",
        "# valid_to to this valid_from:",
        "custody:",
        "  keys:",
        f"    - id: {key_id}",
        f"      public_key: {base64.b64encode(raw).decode()}",
        f"      fingerprint: {print_}",
        f"      valid_from: {now.isoformat().replace('+00:00', 'Z')}",
    ])
