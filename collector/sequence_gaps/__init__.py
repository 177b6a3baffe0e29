"""Gaps along each gateway's sequence (see ``gaps``)."""

from collector.sequence_gaps.gaps import SequenceGaps

__all__ = ["SequenceGaps"]
