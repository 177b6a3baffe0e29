"""A month's processing makes and drops arrays of its readings' size (~0.4 MB a column),
hundreds of them. glibc's allocator hands arrays that large back to the kernel when they
are freed (``munmap``, or trimming the heap's top), and the next ones fault their pages in
again: on a month of ph-biogas that was ~6,000 page faults, 10 – 15 ms of system time, a
tenth of the month. Kept in the heap instead, they are reused: the process keeps up to
``TOP_PAD`` of freed memory at the heap's top and allocates below ``MMAP_THRESHOLD`` from
the heap (a month's largest arrays, a device's readings, are ~2 MB); larger ones still get
mappings of their own, returned when freed, so that a year's export does not keep its peak
(32 MB each: ~40 MB more peak RSS over a year of ph-biogas and its export; these: ~10 MB).
No other allocator is changed: elsewhere ``keep_freed_memory`` does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: glibc's mallopt parameters (malloc.h)
M_TOP_PAD, M_MMAP_THRESHOLD = -2, -3
#: freed memory kept at the heap's top [bytes]
TOP_PAD = 16 * 2**20
#: the size from which an allocation is a mapping of its own [bytes]
MMAP_THRESHOLD = 4 * 2**20


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc keep freed arrays for reuse (once a process); whether it could."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or not glibc's
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TOP_PAD, TOP_PAD))
