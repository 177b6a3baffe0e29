"""Gaps along each gateway's sequence: seqs that never arrive, and new sequence epochs.

Every gateway numbers its messages 1, 2, 3, ... within an epoch (a new or emptied outbox
starts a new one). The collector follows those seqs, records as a gap finding what no
collector stored within the grace period, and reports a new epoch; the store is the source
of truth, so a restarted collector, or a second one on a shared subscription, neither raises
a false gap nor forgets a real one. ``SequenceGaps`` is what the collector uses (``stored``
after each batch is stored, ``save`` before it is acknowledged, ``on_status``, ``check``).

What the bookkeeping costs is bounded, against a broken or hostile gateway too (one with a
valid password can publish any seq and epoch): every valid reading is stored and
acknowledged whatever its seq, and what is not followed is named in a finding. One file per
concept, each saying what it bounds and why; read ``gaps`` first:

- ``gaps``: ``SequenceGaps``: follows each stored seq, suspects the holes, checks them against
  the store once the grace period is over and records them as gap findings; epoch findings.
- ``runs``: ``_Run``, seqs first..last all stored: what an epoch is held as.
- ``epoch``: ``_Epoch``, what a collector knows of one epoch (runs, holes suspected, gaps
  recorded), with the fields every bound below keeps.
- ``marks``: the durable "judged up to" mark of each epoch (``SeqMark``), and reading a
  gateway back from it when a collector meets it (``LOAD_BLOCKS``, ``MARK_EVERY_S``).
- ``own_blocks``: the seqs a collector stored itself, written to the store a block at a
  time; at most ``OWN_BLOCKS`` blocks an epoch held.
- ``far_seqs``: seqs more than ``MAX_AHEAD`` beyond their epoch's bound: held (``FAR_HELD``),
  not followed, named in a ``jump`` finding.
- ``epoch_churn``: at most ``MAX_EPOCHS`` epochs of a gateway followed; readings of more are
  named in a ``churn`` finding.
- ``holes_cap``: at most ``MAX_GAPS`` gaps an epoch recorded one by one, the holes beyond
  named in ``holes`` findings; gap WARNING lines at most ``LOG_LINES`` every ``LOG_EVERY_S``.

The parts of ``SequenceGaps`` and ``_Epoch`` kept in the concept files are mixins: they share
the state that ``SequenceGaps.__init__`` and ``_Epoch``'s fields declare. Every module logs as
``collector.sequence_gaps``.
"""

from collector.sequence_gaps.gaps import SequenceGaps

__all__ = ["SequenceGaps"]
