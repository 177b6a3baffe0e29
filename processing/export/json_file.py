"""The JSON files of an export folder: written as strict JSON (RFC 8259, which has no NaN
nor infinity, so that jq, JavaScript's ``JSON.parse`` and other strict parsers read them),
and read back by a verifier (anyone may have edited them).

A number that is not finite is written as what it stands for: ``null`` for NaN (no value:
no data, or no figure), ``"Infinity"`` and ``"-Infinity"`` for the infinities (a total
beyond any float), the spelling that ``float()`` and JavaScript's ``Number()`` read.
``number`` reads them back, and the ``NaN`` and ``Infinity`` literals of exports written
before them."""

from __future__ import annotations

import json
import math
from pathlib import Path

#: how an infinity is written (a string: strict JSON has no number for it)
INFINITIES = {"Infinity": math.inf, "-Infinity": -math.inf}


def strict(value: object) -> object:
    """``value`` (JSON-able: dicts, lists, strings, numbers, None) with each non-finite float
    as the module doc says."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_json(path: Path, value: object, indent: int, sort_keys: bool = True) -> Path:
    """Write ``value`` to ``path`` as strict JSON (``strict``), UTF-8, one newline at the end."""
    text = json.dumps(strict(value), indent=indent, sort_keys=sort_keys, allow_nan=False)
    path.write_bytes((text + "\n").encode("utf-8"))
    return path


def number(value: object) -> float | None:
    """The number a JSON value of an export stands for: NaN for ``null``, an infinity for its
    string, a number as a float; ``None`` when it is none of those (a mismatch to name)."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        return INFINITIES.get(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer of more digits than a float holds: no figure of ours
            return None
    return None


def read_json(path: Path, name: str) -> object:
    """The parsed contents of ``path``; ``ValueError`` starting with ``name`` when it cannot be
    read or is not JSON (nesting too deep included)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{name}: cannot read: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{name}: not JSON: {exc}") from None
