"""The holes a collector suspects as seqs arrive above its highest (``SequenceGaps._suspect_new``,
the shared subscription's case: a hole a seq) are those a look at every hole finds
(``_suspect_all``): above the floor, none inside a recorded gap."""

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from collector.sequence_gaps.epoch import _Epoch
from collector.sequence_gaps.gaps import SequenceGaps
from contract.store import SequenceFinding
from tests.conftest import fuzz_examples

T = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(floor=st.integers(1, 40),
       steps=st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=30), min_size=2, max_size=6),
       gaps=st.lists(st.tuples(st.integers(1, 200), st.integers(0, 8)), max_size=4))
def test_the_holes_suspected_as_seqs_arrive_above_are_those_of_a_look_at_every_hole(floor, steps, gaps):
    track, seq = _Epoch(floor=floor), 0
    for first, length in gaps:  # recorded gaps may overlap nothing stored, one another not
        if all(first > f.last or first + length < f.first for f in track.recorded.values()):
            track.record(SequenceFinding("gap", "s", "g", "e", first, first + length, T, ""))
    for i, chunk in enumerate(steps):  # each chunk: seqs above the highest, then a check
        for step in chunk:
            seq += step
            track.add(seq, T)
        # as ``SequenceGaps._suspect`` does: every hole at first, then only those above the ones looked at
        (SequenceGaps._suspect_all if track.reshaped else SequenceGaps._suspect_new)(track, float(i))
        every = _Epoch(floor=floor, runs=track.runs, recorded=track.recorded,
                       _recorded_spans=track._recorded_spans)
        SequenceGaps._suspect_all(every, float(i))
        assert {f: last for f, (last, _) in track.suspected.items()} == \
               {f: last for f, (last, _) in every.suspected.items()}
