"""Numba kernel for the weight map: distances to the nearest and second-nearest cell.

`nearest_two_sq(labels, boxes, reach)` computes, for every pixel, the squared Euclidean distance
to the nearest and the second-nearest instance, each instance's distance transform done on its
bounding box grown by `reach` (outside it the distance exceeds `reach` and is left at +inf).
The distance transform is exact: a scan per column (1-D distance to the nearest cell pixel),
then Felzenszwalb and Huttenlocher's lower envelope of parabolas per row.

The plain reference is `targets.nearest_two_distances_reference` (one scipy distance transform
of the whole image per instance, then a sort), which the tests compare against.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FAR = 1e30      # "no cell pixel in this column": larger than any squared distance in an image


@njit(cache=True)
def nearest_two_sq(labels: np.ndarray, boxes: np.ndarray, reach: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """labels (H, W) int; boxes (K, 4) int rows [y0, y1, x0, x1) of ids 1..K (y0 = -1: absent).

    Returns d1sq, d2sq (H, W) float64: squared distances to the nearest and second-nearest cell.
    """
    H, W = labels.shape
    d1sq = np.full((H, W), np.inf)
    d2sq = np.full((H, W), np.inf)
    side = max(H, W)
    col = np.empty((H, W))                    # squared 1-D distances down each column
    f = np.empty(side)
    out = np.empty(side)
    v = np.empty(side, np.int64)              # parabola vertices of the lower envelope
    z = np.empty(side + 1)                    # boundaries between parabolas
    for k in range(boxes.shape[0]):
        if boxes[k, 0] < 0:
            continue
        y0, y1 = max(boxes[k, 0] - reach, 0), min(boxes[k, 1] + reach, H)
        x0, x1 = max(boxes[k, 2] - reach, 0), min(boxes[k, 3] + reach, W)
        cell = k + 1
        # pass 1: per column, distance to the nearest pixel of `cell` above or below
        for x in range(x0, x1):
            last = -1
            for y in range(y0, y1):
                if labels[y, x] == cell:
                    last = y
                col[y, x] = FAR if last < 0 else float(y - last) ** 2
            last = -1
            for y in range(y1 - 1, y0 - 1, -1):
                if labels[y, x] == cell:
                    last = y
                if last >= 0:
                    below = float(last - y) ** 2
                    if below < col[y, x]:
                        col[y, x] = below
        # pass 2: per row, lower envelope of parabolas col[y, q] + (x - q)^2
        n = x1 - x0
        for y in range(y0, y1):
            for i in range(n):
                f[i] = col[y, x0 + i]
            _envelope(f, n, out, v, z)
            for i in range(n):
                d = out[i]
                x = x0 + i
                if d < d1sq[y, x]:
                    d2sq[y, x] = d1sq[y, x]
                    d1sq[y, x] = d
                elif d < d2sq[y, x]:
                    d2sq[y, x] = d
    return d1sq, d2sq


@njit(cache=True)
def _envelope(f: np.ndarray, n: int, out: np.ndarray, v: np.ndarray, z: np.ndarray) -> None:
    """out[i] = min_q f[q] + (i - q)^2 for i, q in 0..n-1 (Felzenszwalb & Huttenlocher 2012)."""
    k = 0
    v[0] = 0
    z[0] = -np.inf
    z[1] = np.inf
    for q in range(1, n):
        s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * (q - v[k]))
        while s <= z[k]:
            k -= 1
            s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * (q - v[k]))
        k += 1
        v[k] = q
        z[k] = s
        z[k + 1] = np.inf
    k = 0
    for i in range(n):
        while z[k + 1] < i:
            k += 1
        out[i] = (i - v[k]) ** 2 + f[v[k]]
