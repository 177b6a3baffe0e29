"""Reading millions of rows makes millions of short-lived tuples, each a reason for
Python's cyclic garbage collector to walk the whole heap again: on a month of
readings that was half the time of a read. None of them can form a cycle, so
collection is held off while a read builds its frame, and resumed afterwards."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside the block; nested and concurrent blocks (other
    threads' reads) share the pause, and the last one out restores what was before."""
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()
