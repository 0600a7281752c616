"""normalize's full-image float passes, compiled, to the bit: scipy's Gaussian filter (mode
"reflect"), NumPy's histogram of equal bins, and the stretch to float32.

`foreground_median` (predict.py) smooths the image (scipy.ndimage.gaussian_filter, sigma 1
px) and takes np.histogram of the result for Otsu's threshold: about 120 and 50 ms of a 2048
x 2048 image. Both are short loops over float64 values whose exact arithmetic is known:

- scipy's correlate1d with a symmetric kernel (NI_Correlate1D) sums, for each output value,
  x[i] w[0], then (x[i - k] + x[i + k]) w[k] for k = r, r - 1, .., 1, in that order, one
  axis after the other (rows first), the lines extended by mirroring (d c b a | a b c d);
- np.histogram with equal bins takes each value's bin as int((x - first) / (last - first)
  * bins), moved down one where x is below that bin's edge and up one where it is at or
  above the next (the last bin closed), with the edges of np.linspace.

Here the same operations run in the same order, vectorised across the other axis, so the
results are the same bits (tests/test_normalize.py compares them with scipy's and NumPy's).
Both work in bands of 64 rows shared between `kernels.threads`' threads (a band's smoothed
rows need only its own and r more input rows on each side; the histogram's counts are added),
and the smoothing reads 8- and 16-bit images as they are, each value widened to float64 (exact)
as it is read: `normalize` needs no float64 copy of such an image.

What made them fast (a 2048 x 2048 uint16 image, 2 threads, Intel Xeon with AVX-512, old
and new interleaved in one process, best of 11; `normalize` 56 -> 18 ms):
- the smoothing adds four taps per pass over a row, the first pass starting from the centre
  (the same sums in the same order: the order is per value, not per pass), mirrors only the
  r values past each end of a row (a modulo per value cost more than the arithmetic) and
  reads the neighbours through slices, whose indices LLVM knows are not negative (`line[r +
  j]`, r a variable, was a gather and a scatter per value); it keeps each column's running
  min and max (an element-wise select, vectorised; a scalar min/max loop cost a third of
  the pass), so smooth.min() and .max() are no extra passes: 24 -> 6 ms with them;
- the histogram computes the edges it compares with as np.linspace does (`_edges`), instead
  of loading them (a gather per value, which LLVM does not emit for this CPU), so each
  value's bin is computed four at a time, then counted: 10.4 -> 3.9 ms;
- the stretch to float32 is one compiled pass on the threads: 8.7 -> 1.8 ms.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's Gaussian kernel for `sigma` (its _gaussian_kernel1d, order 0, radius
    int(truncate sigma + 0.5)): the half w[0..r], w[0] the centre."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    phi = phi / phi.sum()
    return np.ascontiguousarray(phi[radius:])


@njit(cache=True, inline="always")
def _mirror(index: int, n: int) -> int:
    """scipy's "reflect" extension: ... b a | a b c d | d c ... (repeated for short lines)."""
    period = 2 * n
    index %= period
    return index if index < n else period - index - 1


BAND_ROWS = 64          # rows per work item of the smoothing, the histogram and the stretch
SERIAL_PIXELS = 1 << 20  # images smaller than this run in the calling thread


def gaussian_filter(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(image, sigma) for a real image (H, W) whose values are
    taken as float64 (8- and 16-bit integers exactly), weights = gaussian_weights(sigma):
    along axis 0, then axis 1, mode "reflect"; float64 (H, W)."""
    return gaussian_filter_range(image, weights)[0]


def gaussian_filter_range(image: np.ndarray, weights: np.ndarray
                          ) -> tuple[np.ndarray, float, float]:
    """(gaussian_filter(image, weights), its min, its max) in one pass over the image, for a
    finite image. Bands of rows are independent (each output row needs input rows only), so
    they are shared between the pool's threads; each band's extremes are then compared."""
    from .threads import parallel_rows

    image = np.ascontiguousarray(image)
    out = np.empty(image.shape)
    bands = -(-image.shape[0] // BAND_ROWS)
    extremes = np.empty((bands, 2))     # each band's (min, max)
    parallel_rows(lambda first, stop: _gaussian_rows(image, weights, out, first, stop,
                                                     extremes[first // BAND_ROWS]),
                  image.shape[0], BAND_ROWS, serial=image.size < SERIAL_PIXELS)
    return out, float(extremes[:, 0].min()), float(extremes[:, 1].max())


@njit(cache=True, nogil=True)
def _gaussian_rows(image: np.ndarray, weights: np.ndarray, out: np.ndarray, first: int,
                   stop: int, extremes: np.ndarray) -> None:
    """Rows first..stop-1 of the smoothed image into out, their (min, max) into extremes."""
    H, W = image.shape
    r = weights.size - 1
    line = np.empty(W + 2 * r)          # one row smoothed along axis 0, mirrored r past each end
    mid = line[r:r + W]                 # the row itself
    lows = np.empty(W)                  # each column's running min and max over the band
    highs = np.empty(W)
    for j in range(W):
        lows[j], highs[j] = np.inf, -np.inf
    for i in range(first, stop):
        # axis 0: x[i] w[0], then the pairs of rows i -/+ k, four k a pass (k = r, r - 1, ..;
        # the first pass starts from the centre row)
        centre = image[i]
        c = weights[0]
        if r < 4:
            for j in range(W):
                mid[j] = np.float64(centre[j]) * c
        k = r
        while k >= 4:
            u0, d0 = image[_mirror(i - k, H)], image[_mirror(i + k, H)]
            u1, d1 = image[_mirror(i - k + 1, H)], image[_mirror(i + k - 1, H)]
            u2, d2 = image[_mirror(i - k + 2, H)], image[_mirror(i + k - 2, H)]
            u3, d3 = image[_mirror(i - k + 3, H)], image[_mirror(i + k - 3, H)]
            w0, w1, w2, w3 = weights[k], weights[k - 1], weights[k - 2], weights[k - 3]
            start = k == r
            for j in range(W):
                a = np.float64(centre[j]) * c if start else mid[j]
                a += (np.float64(u0[j]) + np.float64(d0[j])) * w0
                a += (np.float64(u1[j]) + np.float64(d1[j])) * w1
                a += (np.float64(u2[j]) + np.float64(d2[j])) * w2
                a += (np.float64(u3[j]) + np.float64(d3[j])) * w3
                mid[j] = a
            k -= 4
        while k >= 1:
            u0, d0 = image[_mirror(i - k, H)], image[_mirror(i + k, H)]
            w0 = weights[k]
            for j in range(W):
                mid[j] += (np.float64(u0[j]) + np.float64(d0[j])) * w0
            k -= 1
        for j in range(r):                       # the row's mirrored ends
            line[j] = mid[_mirror(j - r, W)]
            line[W + r + j] = mid[_mirror(W + j, W)]
        # axis 1: the same sums along the row, its neighbours j -/+ k read from line
        row = out[i]
        if r < 4:
            for j in range(W):
                row[j] = mid[j] * c
        k = r
        while k >= 4:
            l0, r0 = line[r - k:r - k + W], line[r + k:r + k + W]
            l1, r1 = line[r - k + 1:r - k + 1 + W], line[r + k - 1:r + k - 1 + W]
            l2, r2 = line[r - k + 2:r - k + 2 + W], line[r + k - 2:r + k - 2 + W]
            l3, r3 = line[r - k + 3:r - k + 3 + W], line[r + k - 3:r + k - 3 + W]
            w0, w1, w2, w3 = weights[k], weights[k - 1], weights[k - 2], weights[k - 3]
            start = k == r
            for j in range(W):
                a = mid[j] * c if start else row[j]
                a += (l0[j] + r0[j]) * w0
                a += (l1[j] + r1[j]) * w1
                a += (l2[j] + r2[j]) * w2
                a += (l3[j] + r3[j]) * w3
                row[j] = a
            k -= 4
        while k >= 1:
            l0, r0 = line[r - k:r - k + W], line[r + k:r + k + W]
            w0 = weights[k]
            for j in range(W):
                row[j] += (l0[j] + r0[j]) * w0
            k -= 1
        for j in range(W):
            v = row[j]
            lows[j] = v if v < lows[j] else lows[j]
            highs[j] = v if v > highs[j] else highs[j]
    # the band's extremes by hand: lows.min() would have loading this kernel import Numba's
    # array functions (arraymath, 0.16 s of the command's start)
    low, high = lows[0], highs[0]
    for j in range(1, W):
        low = min(low, lows[j])
        high = max(high, highs[j])
    extremes[0], extremes[1] = low, high


def histogram(values: np.ndarray, bins: int, first: float | None = None,
              last: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """np.histogram(values, bins) for a finite float64 array (H, W) whose values are not all
    equal; first, last: its min and max if already known; bands of rows counted on the
    pool's threads (one row of counts per thread), then added."""
    from .threads import get_num_threads, parallel_for

    if first is None or last is None:
        first, last = float(values.min()), float(values.max())
    edges = np.linspace(first, last, bins + 1, endpoint=True)
    if not np.array_equal(edges[:-1], _edges_of(bins, first, last - first)):
        # the kernel's edges are np.linspace's arithmetic (_edges); should NumPy ever change
        # it, its own histogram
        return np.histogram(values, bins, (first, last))
    values = np.ascontiguousarray(values).reshape(values.shape[0], -1)
    counts = np.zeros((get_num_threads(), bins), np.int64)     # one row a thread
    rows = values.shape[0]

    def band(item: int, slot: int) -> None:
        a = item * BAND_ROWS
        _histogram(values[a:a + BAND_ROWS].ravel(), first, last - first, bins, counts[slot])

    parallel_for(band, -(-rows // BAND_ROWS), serial=values.size < SERIAL_PIXELS, blas=False)
    return counts.sum(axis=0), edges


HISTOGRAM_CHUNK = 512   # values whose bins are computed (vectorised) before they are counted


def _edges_of(bins: int, first: float, span: float) -> np.ndarray:
    """_edges(k, ...) for k = 0 .. bins - 1, in NumPy (the same float64 operations; not the
    compiled _edges on an array, which would be one more kernel to load at every start)."""
    k = np.arange(bins)
    step = span / bins
    return k * step + first if step != 0 else k / bins * span + first


@njit(cache=True, inline="always")
def _edges(k: int, first: float, span: float, bins: int) -> float:
    """np.linspace(first, first + span, bins + 1)[k] for k < bins: k step + first, step =
    span / bins; where that step underflows to 0, k / bins span + first (its other branch)."""
    step = span / bins
    return k * step + first if step != 0 else k / bins * span + first


@njit(cache=True, nogil=True)
def _histogram(values: np.ndarray, first: float, span: float, bins: int,
               counts: np.ndarray) -> None:
    n = values.size
    index = np.empty(HISTOGRAM_CHUNK, np.uint64)   # unsigned: no test for negative indices
    for start in range(0, n, HISTOGRAM_CHUNK):
        chunk = values[start:start + HISTOGRAM_CHUNK]
        for j in range(chunk.size):
            x = chunk[j]
            b = min(int((x - first) / span * bins), bins - 1)   # the last bin is closed
            if x < _edges(b, first, span, bins):
                b -= 1
            elif x >= _edges(b + 1, first, span, bins) and b != bins - 1:
                b += 1
            index[j] = b
        for j in range(chunk.size):
            counts[index[j]] += 1


def stretch(gray: np.ndarray, lo: float, scale: float) -> np.ndarray:
    """((gray - lo) / scale).astype(np.float32) for an image (H, W) of float64 or 8- and
    16-bit integers (what `normalize` stretches), lo and scale float64: computed in float64
    (integers widened exactly) and rounded once to float32, as NumPy does; no float64
    temporaries; bands of rows on the pool's threads."""
    from .threads import parallel_rows

    gray = np.asarray(gray)
    if not (gray.dtype == np.float64 or (gray.dtype.kind in "ui" and gray.dtype.itemsize <= 2)):
        # NumPy would compute float32 - a Python float in float32: other bits
        raise TypeError(f"stretch: expected float64 or 8-/16-bit integers, got {gray.dtype}; "
                        "convert with gray.astype(np.float64)")
    gray = np.ascontiguousarray(gray)
    out = np.empty(gray.shape, np.float32)
    lo, scale = float(lo), float(scale)
    parallel_rows(lambda first, stop: _stretch_rows(gray, lo, scale, out, first, stop),
                  gray.shape[0], BAND_ROWS, serial=gray.size < SERIAL_PIXELS)
    return out


@njit(cache=True, nogil=True)
def _stretch_rows(gray: np.ndarray, lo: float, scale: float, out: np.ndarray, first: int,
                  stop: int) -> None:
    for i in range(first, stop):
        source, row = gray[i], out[i]
        for j in range(source.size):
            row[j] = np.float32((np.float64(source[j]) - lo) / scale)
