"""The embedded store's row per message: a reading's values packed, and back.

A message's numbers (floats, integers, booleans; null as NaN) are one float64 array
in the order of its *layout*: the names of its number channels, then the names of its
text channels (serial numbers, model names), whose texts are a JSON list beside the
array. Layouts are few (one a device, or a handful where its channels change) and kept
once each in a table, so a row holds no channel name. Qualities, on the few channels
that have one, are a JSON object {channel: quality}.

Two messages of a device at the same instant make one row, channel by channel: the
later message's channels replace the earlier's, the earlier's other channels stay
(``merged``), as they would in a row per value. The row's gateway and seq are then the
later message's.
"""

from __future__ import annotations

import json
from array import array

from contract.message import Reading

#: (number channels, text channels), each in the message's order
Layout = tuple[tuple[str, ...], tuple[str, ...]]
#: a row's channels decoded: channel -> (value: float, NaN for null, or text; quality or None)
Channels = dict[str, tuple[float | str, str | None]]

NAN = float("nan")


def layout_text(layout: Layout) -> str:
    return json.dumps([list(layout[0]), list(layout[1])], ensure_ascii=False)


def layout_of_text(text: str) -> Layout:
    numbers, texts = json.loads(text)
    return tuple(numbers), tuple(texts)


def packed(r: Reading) -> tuple[Layout, bytes, str | None, str | None]:
    """A reading's (layout, numbers as float64 bytes, texts as JSON or None, qualities as JSON
    or None). Raises TypeError or OverflowError for a value a 64-bit float cannot hold."""
    values, flags = r.values, r.quality
    try:  # floats, integers and booleans: the usual message
        numbers = array("d", values.values())
    except TypeError:  # a null or a text
        return repacked({c: (NAN if v is None else v, flags[c].value if c in flags else None)
                         for c, v in values.items()})
    quality = json.dumps({c: q.value for c, q in flags.items()}, ensure_ascii=False) if flags else None
    return (tuple(values), ()), numbers.tobytes(), None, quality


class DamagedRow(Exception):
    """A stored row that does not fit its layout: a damaged file, or one written by other means."""


def unpacked(layout: Layout, numbers: bytes, texts: str | None, quality: str | None) -> Channels:
    """A row's channels, numbers first. Raises ``DamagedRow`` if the row does not fit its layout
    (decoded anyway, it would lose channels or give them others' values)."""
    try:
        flags = json.loads(quality) if quality else {}
        words = json.loads(texts) if texts else []
    except (TypeError, ValueError) as exc:
        raise DamagedRow(f"its texts or qualities are not JSON ({exc})") from None
    if not isinstance(numbers, bytes) or len(numbers) != 8 * len(layout[0]):
        held = f"{len(numbers)} bytes" if isinstance(numbers, bytes) else "a value not a blob"
        raise DamagedRow(f"it holds {held} as its numbers, where its layout has {len(layout[0])} of 8 bytes")
    if not isinstance(words, list) or len(words) != len(layout[1]) or not isinstance(flags, dict):
        raise DamagedRow(f"its texts are not the {len(layout[1])} its layout has, or its qualities not an object")
    out: Channels = {c: (v, flags.get(c)) for c, v in zip(layout[0], array("d", numbers))}
    out.update((c, (v, flags.get(c))) for c, v in zip(layout[1], words))
    return out


def repacked(channels: Channels) -> tuple[Layout, bytes, str | None, str | None]:
    """``unpacked``'s inverse: (layout, numbers, texts, qualities) of decoded channels."""
    named = {c: v for c, (v, _) in channels.items() if not isinstance(v, str)}
    words = {c: v for c, (v, _) in channels.items() if isinstance(v, str)}
    flags = {c: q for c, (_, q) in channels.items() if q is not None}
    return ((tuple(named), tuple(words)), array("d", named.values()).tobytes(),
            json.dumps(list(words.values()), ensure_ascii=False) if words else None,
            json.dumps(flags, ensure_ascii=False) if flags else None)


def merged(earlier: Channels, later: Channels) -> Channels:
    """One instant's channels from two messages: the later's, then the earlier's others."""
    return {**later, **{c: v for c, v in earlier.items() if c not in later}}
