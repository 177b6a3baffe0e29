"""The text of a reading's value wherever it is written down or hashed: ``repr`` of the
float, the shortest text that reads back as the same float (an empty field when missing).
Processing writes its exports and input hashes with it, the InfluxDB store its line protocol.

The input hash of every month and the raw-readings export are defined on that text, so it
must stay ``repr`` to the byte. Python's ``repr`` costs ~0.3 - 2 µs a float (more for
values with 17 significant digits, such as float32 registers widened to double): for a
year's raw readings more than reading them. orjson renders a float64 array with the same
shortest round-trip digits and Python's layout in C, ~10 × faster; it lays out only values
below 1e-4 differently (``0.00001`` for ``1e-05``) and writes ``null`` for NaN and
infinities, so those take ``repr`` (or the empty field). Should an orjson release ever
render differently, a probe at import notices it and every value takes ``repr``.
"""

from __future__ import annotations

import numpy as np
import orjson

#: below this magnitude (0 aside) ``repr`` switches to an exponent and orjson does not
SMALL = 1e-4

#: values whose text orjson and ``repr`` could lay out differently: exponent switches,
#: digit-count limits, signed zero, the extremes of float64
_PROBE = [0.0, -0.0, 1.0, -1.5, 0.1, 0.1 + 0.2, 1e-4, 1.0001e-4, 123456.789, 1e15, 9999999999999998.0, 1e16,
          1.2345e16, 2.0 ** 53 + 2, 1e21, 1e22, 1.7976931348623157e308, 3.140000104904175, 1 / 3, 2 / 3e10]


def _orjson_texts(values: np.ndarray) -> list[str]:
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].decode("ascii").split(",")


_AGREES = _orjson_texts(np.array(_PROBE)) == list(map(repr, _PROBE))
#: values below ``SMALL`` whose orjson text must bear a mark of it (``joined_float_texts``)
_SMALL_PROBE = [1e-5, -3.5e-5, 9.999e-5, 1e-7, 1.2345678901234567e-10, 5e-324, -2.2250738585072014e-308]
#: the same of a list of Python floats, as a reading holds its values
_AGREES_LIST = (orjson.dumps(_PROBE)[1:-1].decode("ascii").split(",") == list(map(repr, _PROBE))
                and all("e-" in t or "0.0000" in t
                        for t in orjson.dumps(_SMALL_PROBE)[1:-1].decode("ascii").split(",")))


def float_texts(values: np.ndarray) -> list[str]:
    """``repr`` of each value, ``""`` for NaN.

    Parameters
    ----------
    values : ndarray
        Numbers (any real dtype; read as float64).

    Returns
    -------
    list of str
        One text per value, in order.
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    if not len(values):
        return []
    if not _AGREES:
        texts = list(map(repr, values.tolist()))
        odd = np.isnan(values)
    else:
        texts = _orjson_texts(values)
        magnitude = np.abs(values)
        odd = ~np.isfinite(values) | ((magnitude < SMALL) & (magnitude > 0))
    for i in np.flatnonzero(odd):
        v = values[i]
        texts[i] = "" if np.isnan(v) else repr(float(v))
    return texts


def joined_float_texts(values: list[float] | tuple[float, ...]) -> str:
    """``repr`` of each of a few finite floats (a reading's values, or a batch of readings'),
    joined by commas, as ``float_texts`` renders them but without numpy's fixed cost: 2
    against 3.5 us for 20 values (a float's text holds no comma, so ``split(",")`` gives each).

    orjson lays out a value as ``repr`` does but below ``SMALL``, where its text is
    ``0.0000…`` or has a negative exponent (``e-``): text without either mark is ``repr``'s,
    and only a text with one (a few, as ``100.00001``, by chance) takes ``repr`` again. Two
    searches of the joined text tell that at once (a min of the magnitudes cost 20 times more).

    Parameters
    ----------
    values : list or tuple of float
        Finite floats (orjson writes ``null`` for the others).

    Returns
    -------
    str
        The text of each value, in order, joined by ``,``.
    """
    if not _AGREES_LIST:
        return ",".join(map(repr, values))
    text = orjson.dumps(values)[1:-1].decode("ascii")
    if "e-" in text or "0.0000" in text:
        return ",".join(repr(v) if "e-" in t or "0.0000" in t else t for t, v in zip(text.split(","), values))
    return text
