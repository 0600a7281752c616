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

The counts of a large 8- or 16-bit image are taken in one pass, into a count per possible
value (2**16 int64 a thread), on the pool's threads, instead of a pass for the range and
one to count; the foreground's values are counted straight from the image and the smoothed
copy (`value_counts_above`), without the mask and the copy it selects. On a 2048 x 2048
uint16 image (2 threads, Intel Xeon): value_counts 7.2 -> 1.9 ms, the foreground's counts
5.7 -> 2.6 ms, difference_counts (in noise_sigma) 4.6 -> 2.1 ms.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

SERIAL_PIXELS = 1 << 20  # arrays smaller than this are counted in the calling thread
PART_VALUES = 1 << 17    # values per work item of the counting (64 rows of a 2048-px image)


def value_counts(values: np.ndarray) -> tuple[np.ndarray, int]:
    """(counts, offset) of an integer array (at least one value): counts[v - offset] = how
    many values equal v, offset the smallest value; no widened copy of the image (np.bincount
    would take an int64 copy). 8- and 16-bit values of a large array are counted in one pass
    into a count per possible value (`_counted`), parts of the array on the pool's threads;
    others in two (the range, then the counts)."""
    flat = np.ascontiguousarray(values).ravel()
    if flat.dtype.itemsize > 2:
        return _value_counts(flat)
    # small arrays too (in the calling thread): the same kernel as a large image's, one
    # kernel fewer to load at the command's start (its blank-image check is small)
    parts = -(-flat.size // PART_VALUES)

    def count(part: int, counts: np.ndarray) -> None:
        start = part * PART_VALUES
        _count(flat[start:start + PART_VALUES], _lowest(flat.dtype), counts)

    return _trim(_counted(count, parts, flat.dtype, 1, flat.size), _lowest(flat.dtype))


def value_counts_above(values: np.ndarray, key: np.ndarray, threshold: float
                       ) -> tuple[np.ndarray, int]:
    """value_counts(values[key > threshold]) of 8- or 16-bit integers values (H, W), key a
    float64 (H, W): one pass, without the mask and the copy of the values it selects (the
    comparison in float64, as NumPy's with a float64 threshold). counts is empty (size 0)
    where no key is above."""
    values, key = np.ascontiguousarray(values), np.ascontiguousarray(key, np.float64)
    if values.dtype.itemsize > 2 or values.shape != key.shape or values.ndim != 2:
        raise ValueError("value_counts_above: expected 8- or 16-bit integers (H, W) and a key "
                         f"of the same shape, got {values.dtype} {values.shape} and "
                         f"{key.shape}")
    rows, threshold = values.shape[0], float(threshold)
    band = max(1, PART_VALUES // max(1, values.shape[1]))      # rows per work item

    def count(part: int, counts: np.ndarray) -> None:
        a = part * band
        _count_above(values[a:a + band], key[a:a + band], threshold, _lowest(values.dtype),
                     counts)

    counts = _counted(count, -(-rows // band), values.dtype, 1, values.size)
    return _trim(counts, _lowest(values.dtype))


def _lowest(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).min)


def _counted(count: Callable[[int, np.ndarray], None], parts: int, dtype: np.dtype,
             spread: int, size: int) -> np.ndarray:
    """The counts of `parts` work items, count(part, counts) adding each part's into its
    thread's row of counts (integers, so the sum is exact in any order), then added: one
    count per possible value of dtype (times `spread`: 2 for differences), at most 2**17 int64
    a thread (1 MiB; only the rows of values met are ever touched)."""
    from .threads import get_num_threads, parallel_for

    counts = np.zeros((get_num_threads(), spread * (1 << 8 * dtype.itemsize)), np.int64)
    parallel_for(lambda part, slot: count(part, counts[slot]), parts,
                 serial=size < SERIAL_PIXELS, blas=False)
    return counts.sum(axis=0)


def _trim(counts: np.ndarray, offset: int) -> tuple[np.ndarray, int]:
    """(counts, offset) from the lowest value counted to the highest (none: size 0)."""
    present = np.flatnonzero(counts)
    if present.size == 0:
        return counts[:0], offset
    return counts[present[0]:present[-1] + 1], offset + int(present[0])


# The counting kernels index counts with unsigned integers: Numba then omits its test for
# negative indices (wrap-around), a quarter of the time of a count (2048^2 uint16 image).


@njit(cache=True, nogil=True)
def _count(flat: np.ndarray, offset: int, counts: np.ndarray) -> None:
    for v in flat:
        counts[np.uint64(np.int64(v) - offset)] += 1


@njit(cache=True, nogil=True)
def _count_above(values: np.ndarray, key: np.ndarray, threshold: float, offset: int,
                 counts: np.ndarray) -> None:
    H, W = values.shape
    for i in range(H):
        for j in range(W):
            if key[i, j] > threshold:
                counts[np.uint64(np.int64(values[i, j]) - offset)] += 1


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
    full-size copies; large 8- and 16-bit images in one pass, bands of rows on the pool's
    threads, as value_counts."""
    image = np.ascontiguousarray(image)
    if image.dtype.itemsize > 2:
        return _difference_counts(image)
    rows = image.shape[0]
    band = max(1, PART_VALUES // image.shape[1])              # rows per work item
    span = 1 << 8 * image.dtype.itemsize                      # differences: -(span-1)..span-1

    def count(part: int, counts: np.ndarray) -> None:
        a = part * band
        _count_differences(image[a:a + band], 1 - span, counts)

    return _trim(_counted(count, -(-rows // band), image.dtype, 2, image.size), 1 - span)


@njit(cache=True, nogil=True)
def _count_differences(image: np.ndarray, offset: int, counts: np.ndarray) -> None:
    H, W = image.shape
    for i in range(H):
        for j in range(W - 1):
            counts[np.uint64(np.int64(image[i, j + 1]) - np.int64(image[i, j]) - offset)] += 1


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
