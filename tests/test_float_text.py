"""The text of a value in the raw-readings export and the input hash: ``repr`` to the byte,
however it is computed."""

import math

import numpy as np
import pytest

from contract.float_text import float_texts


def _reference(values) -> list[str]:
    return ["" if math.isnan(v) else repr(v) for v in np.asarray(values, dtype=float).tolist()]


def _edges() -> np.ndarray:
    """Every place where the layout of ``repr`` changes, a few steps either side, both signs."""
    out = [0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308]
    for edge in (1e-5, 1e-4, 1e-3, 1.0, 1e15, 1e16, 1e17, 1e21, 1e22, 2.0 ** 53, 2.0 ** 63):
        for direction in (math.inf, -math.inf):
            x = edge
            for _ in range(20):
                out += [x, -x]
                x = math.nextafter(x, direction)
    return np.array(out)


def test_texts_are_repr_at_every_layout_edge_and_for_random_doubles():
    rng = np.random.default_rng(12)
    samples = [
        _edges(),
        rng.integers(0, 2 ** 64, 100_000, dtype=np.uint64).view(np.float64),  # any bit pattern
        rng.normal(500, 100, 20_000).astype(np.float32).astype(float),  # float32 registers, 17 digits
        np.round(rng.normal(0, 1e4, 20_000), 3),
        np.sign(rng.normal(size=20_000)) * 10 ** rng.uniform(-8, 20, 20_000),
    ]
    for values in samples:
        assert float_texts(values) == _reference(values)


def test_without_orjson_s_agreement_every_value_takes_repr(monkeypatch):
    """Should an orjson release lay floats out differently, the probe at import says so and
    the texts are ``repr``'s own."""
    import contract.float_text as float_text

    monkeypatch.setattr(float_text, "_AGREES", False)
    values = np.concatenate([_edges(), np.random.default_rng(5).normal(0, 1e3, 1000)])
    assert float_texts(values) == _reference(values)


def test_any_array_is_read_as_float64_in_order():
    assert float_texts(np.arange(10.0)[::3]) == ["0.0", "3.0", "6.0", "9.0"]  # not contiguous
    assert float_texts(np.array([1, -2])) == ["1.0", "-2.0"]
    assert float_texts(np.array([], dtype=float)) == []


@pytest.mark.fuzz
def test_texts_are_repr_for_any_floats():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tests.conftest import fuzz_examples

    @settings(max_examples=fuzz_examples(25), deadline=None)
    @given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50))
    def check(values):
        assert float_texts(np.array(values, dtype=float)) == _reference(values)

    check()


def test_texts_of_a_list_of_finite_floats_are_repr():
    """A reading's values (Python floats, in a list or tuple) take the same texts without numpy."""
    from contract.float_text import joined_float_texts

    edges = [v for v in _edges().tolist() if math.isfinite(v)]
    rng = np.random.default_rng(7)
    for values in (edges, [0.0, 1e-5, 2.5], [0.0, -0.0, 5.0], [3e-5], [], rng.normal(0, 1e4, 500).tolist(),
                   [100.00001, 2.5, -1000.000012, 5e-324, -2.2250738585072014e-308, 1e-300, 7.0],
                   (10 ** rng.uniform(-12, 6, 500)).round(5).tolist(),
                   (np.sign(rng.normal(size=500)) * 10 ** rng.uniform(-8, 20, 500)).tolist(),
                   # any bit pattern: an orjson text without a mark of a small value ("e-", "0.0000") is
                   # repr's at every magnitude (the marks, not magnitudes, choose which take repr)
                   [v for v in rng.integers(0, 2 ** 64, 20_000, dtype=np.uint64).view(np.float64).tolist()
                    if math.isfinite(v)]):
        assert joined_float_texts(values) == ",".join(map(repr, values))
        assert joined_float_texts(tuple(values)) == ",".join(map(repr, values))
