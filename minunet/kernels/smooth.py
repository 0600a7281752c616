"""normalize's two other full-image passes, compiled, to the bit: scipy's Gaussian filter
(mode "reflect") and NumPy's histogram of equal bins.

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


@njit(cache=True)
def gaussian_filter(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(image, sigma) for float64 image (H, W), weights =
    gaussian_weights(sigma): along axis 0, then axis 1, mode "reflect"."""
    H, W = image.shape
    r = weights.size - 1
    w0 = weights[0]
    rows = np.empty((H, W))
    for i in range(H):                           # axis 0: whole rows at a time
        acc = rows[i]
        centre = image[i]
        for j in range(W):
            acc[j] = centre[j] * w0
        for k in range(r, 0, -1):
            up = image[_mirror(i - k, H)]
            down = image[_mirror(i + k, H)]
            wk = weights[k]
            for j in range(W):
                acc[j] += (up[j] + down[j]) * wk
    line = np.empty(W + 2 * r)
    for i in range(H):                           # axis 1: each row, mirrored at its ends,
        acc = rows[i]                            # copied out, then overwritten in place
        for j in range(W + 2 * r):
            line[j] = acc[_mirror(j - r, W)]
        for j in range(W):
            acc[j] = line[j + r] * w0
        for k in range(r, 0, -1):
            wk = weights[k]
            for j in range(W):
                acc[j] += (line[j + r - k] + line[j + r + k]) * wk
    return rows


def histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """np.histogram(values, bins) for a float64 array whose values are not all equal."""
    first, last = float(values.min()), float(values.max())
    edges = np.linspace(first, last, bins + 1, endpoint=True)
    return _histogram(values.ravel(), edges, first, last - first), edges


@njit(cache=True)
def _histogram(values: np.ndarray, edges: np.ndarray, first: float, span: float) -> np.ndarray:
    bins = edges.size - 1
    counts = np.zeros(bins, np.int64)
    for x in values:
        index = int((x - first) / span * bins)
        if index == bins:
            index -= 1
        if x < edges[index]:
            index -= 1
        if x >= edges[index + 1] and index != bins - 1:
            index += 1
        counts[index] += 1
    return counts
