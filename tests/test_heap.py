"""processing.heap: the arrays a month makes and drops are reused, not faulted in again."""

import subprocess
import sys

import pytest

from processing.heap import keep_freed_memory

MONTHS = """
import resource
import numpy as np
from processing.heap import keep_freed_memory
keep_freed_memory()

def month():  # a month's columns (~0.4 MB each): many alive at once, then all dropped
    columns = [np.arange(45_000 + i, dtype=float) for i in range(30)]
    return sum(float(c.sum()) for c in columns)

month()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    month()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not keep_freed_memory(), reason="not glibc's allocator")
def test_the_columns_of_later_months_reuse_the_memory_of_earlier_ones():
    """Without it glibc gave the freed columns back to the kernel: ~26,000 page faults here."""
    faults = int(subprocess.run([sys.executable, "-c", MONTHS], capture_output=True, text=True, check=True,
                                timeout=60).stdout)
    assert faults < 1000
