"""Reading a JSON file of an export folder (a verifier's input: anyone may have edited it)."""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: Path, name: str) -> object:
    """The parsed contents of ``path``; ``ValueError`` starting with ``name`` when it cannot be
    read or is not JSON (nesting too deep included)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{name}: cannot read: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{name}: not JSON: {exc}") from None
