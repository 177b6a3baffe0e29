"""Topic names: parsing a reading topic gives its site, gateway and device, or refuses it."""

import pytest
from hypothesis import given, settings, strategies as st

from contract import topics
from tests.conftest import fuzz_examples


def by_parts(topic: str):
    """The rule in words: six levels, ``jcm``, ``v1``, site, gateway, device, ``reading``."""
    parts = topic.split("/")
    if len(parts) == 6 and parts[:2] == ["jcm", "v1"] and parts[5] == "reading":
        return tuple(parts[2:5])
    return None


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(2000), deadline=None)
@given(st.lists(st.sampled_from(["jcm", "v1", "/", "reading", "a", "", "jcm/v1/", "/reading", "x/", "é"]),
                max_size=10).map("".join))
def test_a_reading_topic_is_parsed_by_its_levels(topic):
    expected = by_parts(topic)
    if expected is None:
        with pytest.raises(ValueError, match="not a reading topic"):
            topics.parse_reading(topic)
    else:
        assert topics.parse_reading(topic) == expected


def test_the_topics_made_are_parsed_back():
    assert topics.parse_reading(topics.reading("mn-solar", "gw-mn-01", "inv-01")) == ("mn-solar", "gw-mn-01", "inv-01")
    assert topics.parse_batch(topics.batch("mn-solar", "gw-mn-01")) == ("mn-solar", "gw-mn-01")
    for bad in ("jcm/v1/reading", "jcm/v1/s/g/reading", "jcm/v2/s/g/d/reading", "jcm/v1/s/g/d/readings",
                "xjcm/v1/s/g/d/reading", "jcm/v1/s/g/d/e/reading"):
        with pytest.raises(ValueError):
            topics.parse_reading(bad)
