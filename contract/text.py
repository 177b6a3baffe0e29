"""Text from outside the pipeline (topics, payloads, reasons quoting them) made safe to
show and to store.

A crafted message must not forge a log line, drive a terminal with escape sequences or
reorder what a reader sees, and everything kept must encode as UTF-8. ``printable``
replaces each character that could do any of that with a Python-style escape; its
output is printable and encodes, and applying it twice changes nothing more.
"""

from __future__ import annotations

import re

#: C0 and C1 controls and DEL; invisible format characters (zero-width, bidirectional
#: overrides and isolates, byte order mark); line and paragraph separators; surrogates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with every unsafe character written as ``\\xNN`` or ``\\uNNNN``."""
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
