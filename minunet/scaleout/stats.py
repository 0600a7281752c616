"""Exact percentiles of an image too large for memory, read block by block.

`minunet.predict.normalize` stretches each image by its own 1st and 99.8th percentiles
(`np.percentile`, linear interpolation). For a chunked prediction to equal the in-memory one,
the chunked path must use the same two numbers for the whole image, computed from every pixel,
not from a subsample. Two streaming passes give them exactly, in bounded memory:

    pass 1: the minimum, the maximum and a histogram of BINS bins between them
            (plus a check that every value is finite)
    pass 2: for the few bins that hold a wanted rank, the distinct values in them with their
            counts (np.unique), which pins down the exact k-th smallest value

The k-th order statistics are then interpolated exactly as NumPy's "linear" method does
(`order_statistics_to_percentile`), so the result is bit-identical to `np.percentile` on the
whole image (tested). Memory: the histogram (BINS int64) and the distinct values of a few bins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

BINS = 1 << 16  # a 16-bit image's values each get their own bin when its range spans 65536


def percentile_virtual_index(n: int, q: float) -> float:
    """Where percentile q lies in a sorted array of n values: NumPy's "linear" method (H&F 7)."""
    quantile = np.true_divide(np.float64(q), 100)
    return float((n - 1) * quantile)  # numpy's exact expression: other algebra rounds apart


def order_statistics_to_percentile(below: float, above: float, virtual_index: float,
                                   n: int) -> np.float64:
    """np.percentile's value from the two sorted values around `virtual_index`.

    below = sorted[floor(virtual_index)], above = the next one (NumPy's `_lerp`, which takes
    the form b - (b - a) * (1 - t) when t >= 0.5 for a symmetric rounding error).
    """
    if virtual_index >= n - 1:
        return np.float64(above)
    if virtual_index < 0:
        return np.float64(below)
    a, b = np.float64(below), np.float64(above)
    t = np.float64(virtual_index) - np.floor(np.float64(virtual_index))
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def wanted_ranks(n: int, qs: Iterable[float]) -> list[int]:
    """The 0-based sorted positions whose values the percentiles qs need."""
    ranks: set[int] = set()
    for q in qs:
        v = percentile_virtual_index(n, q)
        lo = min(max(int(np.floor(v)), 0), n - 1)
        ranks.update((lo, min(lo + 1, n - 1), n - 1 if v >= n - 1 else lo))
    return sorted(ranks)


def _bin_of(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Bin index of every value; the same formula in both passes, so they agree exactly."""
    if vmax <= vmin:
        return np.zeros(values.shape, dtype=np.int64)
    scaled = (values - vmin) * (BINS / (vmax - vmin))
    return np.clip(scaled.astype(np.int64), 0, BINS - 1)


def streaming_percentiles(blocks: Callable[[], Iterable[np.ndarray]], qs: Iterable[float],
                          *, who: str = "image") -> tuple[np.float64, ...]:
    """np.percentile(whole image, qs), from `blocks()`: each call yields the image's float64
    blocks (any shapes, together every pixel exactly once). Two passes, bounded memory."""
    qs = list(qs)
    n, vmin, vmax = 0, np.inf, -np.inf
    for block in blocks():                                # pass 1a: count, range, finiteness
        if block.size == 0:
            continue
        if not np.isfinite(block).all():
            bad = int((~np.isfinite(block)).sum())
            raise ValueError(f"{who}: contains NaN or inf values (at least {bad} pixels); fix "
                             "or mask them before predicting")
        n += block.size
        vmin, vmax = min(vmin, float(block.min())), max(vmax, float(block.max()))
    if n == 0:
        raise ValueError(f"{who}: the image is empty")
    counts = np.zeros(BINS, dtype=np.int64)
    for block in blocks():                                # pass 1b: histogram
        counts += np.bincount(_bin_of(block.ravel(), vmin, vmax), minlength=BINS)
    starts = np.concatenate([[0], np.cumsum(counts)])     # rank of each bin's first value
    ranks = wanted_ranks(n, qs)
    bins = {r: int(np.searchsorted(starts, r, side="right") - 1) for r in ranks}
    wanted = np.array(sorted(set(bins.values())))
    found: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {b: [] for b in wanted}
    for block in blocks():                                # pass 2: the values in those bins
        flat = block.ravel()
        which = _bin_of(flat, vmin, vmax)
        for b in wanted:
            vals, cnt = np.unique(flat[which == b], return_counts=True)
            if vals.size:
                found[b].append((vals, cnt))
    value_at: dict[int, float] = {}
    for r, b in bins.items():
        vals = np.concatenate([v for v, _ in found[b]])
        cnts = np.concatenate([c for _, c in found[b]])
        order = np.argsort(vals, kind="stable")
        vals, cnts = vals[order], cnts[order]
        ends = np.cumsum(cnts)                            # sorted ranks within the bin
        value_at[r] = float(vals[np.searchsorted(ends, r - starts[b], side="right")])
    out = []
    for q in qs:
        v = percentile_virtual_index(n, q)
        lo = min(max(int(np.floor(v)), 0), n - 1)
        above = value_at[n - 1] if v >= n - 1 else value_at[min(lo + 1, n - 1)]
        out.append(order_statistics_to_percentile(value_at[lo], above, v, n))
    return tuple(out)


def integer_percentiles(blocks: Callable[[], Iterable[np.ndarray]], qs: Iterable[float],
                        dtype: np.dtype) -> tuple[np.float64, ...]:
    """The same for 8- and 16-bit integer images, in one pass: one bin per possible value."""
    info = np.iinfo(dtype)
    counts = np.zeros(int(info.max) - int(info.min) + 1, dtype=np.int64)
    for block in blocks():
        counts += np.bincount((block.ravel().astype(np.int64) - info.min), minlength=counts.size)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("integer_percentiles: the image is empty")
    ends = np.cumsum(counts)                      # ends[v] = how many values are <= v

    def value(rank: int) -> float:
        return float(np.searchsorted(ends, rank, side="right") + info.min)

    out = []
    for q in qs:
        v = percentile_virtual_index(n, q)
        lo = min(max(int(np.floor(v)), 0), n - 1)
        above = value(n - 1) if v >= n - 1 else value(min(lo + 1, n - 1))
        out.append(order_statistics_to_percentile(value(lo), above, v, n))
    return tuple(out)
