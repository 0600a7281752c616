"""Exact streaming percentiles: what chunked prediction normalises with (no extra needed)."""

import numpy as np
import pytest

from minunet.scaleout.stats import integer_percentiles, streaming_percentiles

QS = [1.0, 99.8, 0.0, 100.0, 50.0, 37.3]


def _draw(kind, n, rng):
    if kind == "ints":
        return rng.integers(0, 4000, n).astype(np.float64)
    if kind == "few_values":
        return rng.integers(0, 3, n).astype(np.float64)
    if kind == "heavy_tail":
        return np.exp(rng.normal(0, 6, n))
    return rng.random(n)  # "uniform", "one"


def _pieces(a, rng):
    return np.split(a, np.sort(rng.integers(0, a.size, 4)))


@pytest.mark.parametrize("kind", ["ints", "uniform", "few_values", "heavy_tail", "one"])
def test_streaming_percentiles_equal_numpy_bit_for_bit(kind):
    rng = np.random.default_rng(len(kind))
    for _ in range(20):
        n = 1 if kind == "one" else int(rng.integers(2, 4000))
        a = _draw(kind, n, rng)
        parts = _pieces(a, rng)
        got = streaming_percentiles(lambda parts=parts: iter(parts), QS)
        assert np.array_equal(np.array(got), np.percentile(a, QS))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_integer_percentiles_equal_numpy_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    for _ in range(20):
        top = min(int(info.max), int(info.min) + int(rng.integers(1, 70000)))
        a = rng.integers(info.min, top, int(rng.integers(1, 5000)), endpoint=True).astype(dtype)
        parts = _pieces(a, rng)
        got = integer_percentiles(lambda parts=parts: iter(parts), QS, np.dtype(dtype))
        assert np.array_equal(np.array(got), np.percentile(a.astype(np.float64), QS))


def test_streaming_percentiles_refuse_nan():
    with pytest.raises(ValueError, match="NaN or inf"):
        streaming_percentiles(lambda: iter([np.array([1.0, np.nan])]), [1.0])
