"""Percentiles and medians of small-integer images by counting: np.percentile's and
np.median's results, to the bit, from one np.bincount instead of partitions of float64
copies.

`normalize` (predict.py) takes a percentile and three medians of a raw image (the
foreground's median, and the median and median absolute deviation of the neighbour
differences). NumPy partitions a float64 copy of the image for each: about 165 ms of a
2048 x 2048 image's 0.42 s of normalisation. For an image of 8- or 16-bit integers every
value is an integer in a short range, so the counts of each value give every order
statistic; the interpolation is then NumPy's own arithmetic on the two neighbouring order
statistics (`_lerp` below repeats numpy's `_lerp` for the default "linear" method).
tests/test_normalize.py checks the results against the float path, bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def value_counts(values: np.ndarray) -> tuple[np.ndarray, int]:
    """(counts, offset) of an integer array (at least one value): counts[v - offset] = how
    many values equal v, offset the smallest value. Compiled: one pass for the range, one to
    count, no widened copy of the image (np.bincount would take an int64 copy)."""
    return _value_counts(np.ascontiguousarray(values).ravel())


@njit(cache=True, nogil=True)
def _value_counts(flat: np.ndarray) -> tuple[np.ndarray, int]:
    lo = hi = np.int64(flat[0])
    for v in flat:
        lo = min(lo, np.int64(v))
        hi = max(hi, np.int64(v))
    counts = np.zeros(hi - lo + 1, np.int64)
    for v in flat:
        counts[np.int64(v) - lo] += 1
    return counts, lo


def difference_counts(image: np.ndarray) -> tuple[np.ndarray, int]:
    """value_counts of the differences between horizontal neighbours of an integer image
    (H, W >= 2): value_counts(np.diff(image.astype(np.int64), axis=1)) without the two
    full-size copies."""
    return _difference_counts(np.ascontiguousarray(image))


@njit(cache=True, nogil=True)
def _difference_counts(image: np.ndarray) -> tuple[np.ndarray, int]:
    H, W = image.shape
    lo = hi = np.int64(image[0, 1]) - np.int64(image[0, 0])
    for i in range(H):
        for j in range(W - 1):
            d = np.int64(image[i, j + 1]) - np.int64(image[i, j])
            lo = min(lo, d)
            hi = max(hi, d)
    counts = np.zeros(hi - lo + 1, np.int64)
    for i in range(H):
        for j in range(W - 1):
            counts[np.int64(image[i, j + 1]) - np.int64(image[i, j]) - lo] += 1
    return counts, lo


def _kth(cumulative: np.ndarray, offset: int, k: int) -> float:
    """The k-th smallest value (0-based) as a float, from the cumulative counts."""
    return float(np.searchsorted(cumulative, k, side="right") + offset)


def median(counts: np.ndarray, offset: int) -> float:
    """np.median of the values counted (at least one): the middle one, or the mean of the
    two middle ones ((a + b) / 2, as np.median's np.mean of the two)."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    if n % 2:
        return _kth(cumulative, offset, n // 2)
    return (_kth(cumulative, offset, n // 2 - 1) + _kth(cumulative, offset, n // 2)) / 2.0


def percentile(counts: np.ndarray, offset: int, q: float) -> float:
    """np.percentile(values, q) (method "linear") of the values counted (at least one)."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    virtual = np.asanyarray((n - 1) * np.true_divide(q, 100))   # numpy's virtual index
    if virtual >= n - 1:
        return _kth(cumulative, offset, n - 1)
    if virtual < 0:
        return _kth(cumulative, offset, 0)
    previous = np.floor(virtual)
    gamma = np.asanyarray(virtual - previous, dtype=virtual.dtype)
    a = np.float64(_kth(cumulative, offset, int(previous)))
    b = np.float64(_kth(cumulative, offset, int(previous) + 1))
    return float(_lerp(a, b, gamma))


def _lerp(a: np.float64, b: np.float64, t: np.ndarray) -> np.float64:
    """numpy's _lerp for one value: a + (b - a) t, or b - (b - a)(1 - t) when t >= 0.5."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def mad(counts: np.ndarray, offset: int, centre: float) -> float:
    """np.median(|values - centre|) of the values counted, centre an integer or a half
    (a median of integers): the counts of 2 |v - centre|, integers, give it exactly."""
    twice = np.abs(2 * (np.arange(counts.size, dtype=np.int64) + offset)
                   - round(2 * centre))
    doubled = np.bincount(twice, weights=counts).astype(np.int64)
    return median(doubled, 0) / 2.0


def small_integers(image: np.ndarray) -> np.ndarray | None:
    """The image as its 2-D array of integers if to_gray would only widen it to float64
    (8- or 16-bit integers, (H, W), (H, W, 1) or (1, H, W)), else None."""
    if image.dtype.kind not in "ui" or image.dtype.itemsize > 2:
        return None
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    return image if image.ndim == 2 and image.size > 0 else None
